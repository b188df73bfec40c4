"""The import graph: no cycles among module-level imports, and each layer imports only the
layers below it (DESIGN.md's table): schema → store → indexes and search → the service's
subsystems → api and cli; the SDK never imports the server at import time."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from ..conftest import REPO

FOLDERS = {
    "sdk": "unidb",
    "schema": "unidb.schema",
    "indexing": "unidb.indexing",
    "service": "unidb.service",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if folder == "schema" and "versions" in parts:
                continue  # migrations are loaded by Alembic, not imported
            found[".".join([package, *parts])] = path
    return found


def _top_level_imports(tree: ast.Module) -> Iterator[ast.stmt]:
    """Statements run at import time: not inside functions, nor under TYPE_CHECKING."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.ClassDef):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])


def graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in _top_level_imports(ast.parse(path.read_text())):
            targets = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [f"{node.module}.{alias.name}" for alias in node.names] + [node.module or ""]
            )
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("unidb"):
                    edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    edges = graph()
    assert len(edges) > 80 and "unidb.service.search.planner" in edges["unidb.service.engine"]
    assert _cycles(edges) == []


# what each layer may import of ours; the SDK's models and errors are shared by all
SHARED = ("unidb.models", "unidb.errors", "unidb.tools", "unidb.vector_encoding")
LAYERS = {
    "unidb.schema": ("unidb.schema",),
    "unidb.indexing": ("unidb.indexing", "unidb.schema", *SHARED),
    "unidb.service.store": ("unidb.service.store", "unidb.service.auth.tenancy", "unidb.indexing", *SHARED),
    "unidb.service.search": (
        "unidb.service.search", "unidb.service.store", "unidb.service.db", "unidb.service.config",
        "unidb.service.collection_embedders", "unidb.service.metrics", "unidb.service.outbound",
        "unidb.service.query_stages",
        "unidb.service.auth.tenancy", "unidb.indexing", *SHARED,
    ),
}  # fmt: skip
SERVER = ("unidb.service", "unidb.indexing", "unidb.schema")


def test_layers_import_only_what_is_below_them() -> None:
    wrong = []
    for module, targets in graph().items():
        for prefix, allowed in LAYERS.items():
            if module == prefix or module.startswith(prefix + "."):
                wrong += [
                    (module, t)
                    for t in targets
                    if not any(t == a or t.startswith(a + ".") for a in allowed)
                ]
        sdk = module == "unidb" or (module.startswith("unidb.") and not module.startswith(SERVER))
        if sdk:
            wrong += [(module, t) for t in targets if t.startswith(SERVER)]
    assert wrong == []
