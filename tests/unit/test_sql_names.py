"""The SQL the service writes by hand names only tables and columns that schema/tables.py
(the schema Alembic migrates) defines, so a renamed table or column fails here, not in use."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from unidb.schema import tables

ROOT = Path(__file__).resolve().parents[2]
# a table read or written: FROM / JOIN / INTO / UPDATE / TABLE unidb.<name>
TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+unidb\.(\w+)(?:\s*\(([^)]*)\))?", re.I)
# what migrations define beside tables: set-returning functions queried FROM
FUNCTIONS = {"document_key_blocks", "search_bm25", "search_vector", "search_hybrid"}


def _sql_texts() -> list[tuple[str, str]]:
    found = []
    for folder in ("service", "indexing"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.append((str(path.relative_to(ROOT)), node.value))
    return found


def test_hand_written_sql_names_tables_and_columns_the_schema_defines() -> None:
    known = {table.name: set(table.columns.keys()) for table in tables.metadata.tables.values()}
    unknown = []
    seen = set()
    for where, text in _sql_texts():
        for match in TABLE.finditer(text):
            name, columns = match.group(1), match.group(2)
            seen.add(name)
            if name in FUNCTIONS:
                continue
            if name not in known:
                unknown.append(f"{where}: table unidb.{name}")
                continue
            for column in (columns or "").split(","):
                column = column.strip()
                if column and column not in known[name]:
                    unknown.append(f"{where}: column unidb.{name}.{column}")
    assert unknown == []
    assert {"documents", "chunks", "changes", "collections", "state", "jobs"} <= seen
