"""``docs/configuration.md``, generated from ``Settings`` so that it lists every setting with
its real default and bounds (a test fails while the file is stale). Regenerate it with::

    python -m unidb.service.config_docs
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from unidb.service.config import KvEngine, Settings

HEADER = """# Configuration

Every setting is read once at start from the environment, as `UNIDB_` and the setting's name
in capitals (`hybrid_candidates` is `UNIDB_HYBRID_CANDIDATES`). Lists and mappings take JSON
(`UNIDB_ALLOWED_HOSTS='["db.example.com"]'`). A value out of bounds stops the service at
start with a line naming the setting. The flags of `unidb serve` (`--host`, `--port`,
`--workers`, `--data-dir`, `--log-level`, `--log-format`) win over the environment.

`unidb doctor` checks what the settings point at: the data directory, Postgres and
pgvector, the engines and outbound URLs.

This page is generated from the code: `python -m unidb.service.config_docs`.

| variable | type | default | bounds | what it does |
| --- | --- | --- | --- | --- |
"""

_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"),
           ("max_length", "length ≤"))  # fmt: skip


def _type_name(annotation: Any) -> str:
    """A type as a reader writes it: ``list[str]``, ``int or None``, ``debug | info``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(str(arg) for arg in args)
    if origin in (Union, UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is not None:
        inner = ", ".join(_type_name(arg) for arg in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _type(field: FieldInfo) -> str:
    return _type_name(field.annotation)


def _default(name: str, field: FieldInfo) -> str:
    if field.default_factory is not None:
        if name == "data_dir":
            return "the user data directory (`~/.local/share/unidb` on Linux)"
        if name == "workers":
            return "the cores this process may use"
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"{value:_}"
    if value in ([], {}):
        return "empty"
    return str(value)


def _bounds(field: FieldInfo) -> str:
    found = []
    for constraint in field.metadata:
        for attribute, symbol in _BOUNDS:
            limit = getattr(constraint, attribute, None)
            if limit is not None:
                found.append(f"{symbol} {limit}")
    return ", ".join(found)


def _cell(text: str) -> str:
    return re.sub(r"(?<!\\)\|", r"\\|", text).replace("\n", " ")


ENGINE_HEADER = """
## Each `UNIDB_KV_ENGINES` entry

A JSON list of objects, e.g.
`UNIDB_KV_ENGINES='[{"name": "vllm0", "events": "tcp://vllm:5557", "url": "http://vllm:8000"}]'`.

| key | type | default | bounds | what it does |
| --- | --- | --- | --- | --- |
"""


def _rows(fields: dict[str, FieldInfo], label: Callable[[str], str]) -> str:
    rows = []
    for name, field in fields.items():
        cells = [label(name), _type(field), _default(name, field), _bounds(field),
                 field.description or ""]  # fmt: skip
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |\n")
    return "".join(rows)


def render() -> str:
    return (
        HEADER
        + _rows(Settings.model_fields, lambda name: f"`UNIDB_{name.upper()}`")
        + ENGINE_HEADER
        + _rows(KvEngine.model_fields, lambda name: f"`{name}`")
    )


def target() -> Path:
    return Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def main() -> int:
    target().write_text(render(), encoding="utf-8")
    print(f"wrote {target()}: {len(Settings.model_fields)} settings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
