"""Writes the synchronous client from the asyncio one, so the two cannot drift.

As psycopg's ``tools/async_to_sync.py`` does: each ``_async_*.py`` source becomes its
``_sync_*.py`` by dropping ``async``/``await``, renaming the asyncio names to their
synchronous twins (``RENAMES``) and the ``_async_*`` modules to ``_sync_*`` (the compat
module's twin is written by hand), dropping lines marked ``# async only``, then sorting the
imports and formatting with ruff. ``python sdk/_async_to_sync.py`` rewrites the files
(a script, not ``-m unidb...``: importing the package would import the stale ones);
``--check`` exits 1 if any is stale, as tests/test_client_parity.py checks.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

SOURCES = ("_async_backend.py", "_async_transaction.py", "_async_tool_calls.py", "_async_client.py")

# asyncio name -> synchronous name, ours and httpx's
RENAMES = {
    "AsyncClient": "Client",
    "AsyncBackend": "Backend",
    "_AsyncHttpBackend": "_HttpBackend",
    "AsyncTransaction": "Transaction",
    "AsyncBaseTransport": "BaseTransport",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "aclose": "close",
}

_NAMES = re.compile(r"\b(" + "|".join(map(re.escape, RENAMES)) + r")\b")
_LEFT_OVER = re.compile(r"\b(async|await|asyncio)\b|Async|# async only")


def target(source: str) -> str:
    return source.replace("_async_", "_sync_", 1)


def rename(text: str) -> str:
    """``text`` with every asyncio name in ``RENAMES`` and every ``_async_*`` module renamed."""
    text = _NAMES.sub(lambda m: RENAMES[m.group(1)], text)
    return re.sub(r"\b_async_(\w+)", r"_sync_\1", text)


def sync_text(text: str) -> str:
    """Code (or a docstring's example) without ``async``/``await``, its names renamed."""
    text = re.sub(r"\basync (def|with|for)\b", r"\1", text)
    return rename(re.sub(r"\bawait\s+", "", text))


def to_sync(source: str, name: str) -> str:
    """The synchronous module generated from the asyncio ``source`` (file ``name``)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    docstring = ast.get_docstring(tree, clean=False) is not None
    body = lines[tree.body[0].end_lineno or 0 :] if docstring else lines
    text = sync_text("".join(line for line in body if not line.rstrip().endswith("# async only")))
    header = (
        f'"""Generated from ``{name}`` by ``python sdk/_async_to_sync.py``: edit that file,\n'
        'not this one, then regenerate."""\n'
    )
    out = _formatted(header + text, target(name))
    left = _LEFT_OVER.search(out)
    if left:
        raise ValueError(f"{name}: {left.group(0)!r} has no synchronous twin")
    return out


def _formatted(text: str, name: str) -> str:
    """``text`` with its imports sorted again (the renames move them), then formatted."""
    for command in (["check", "--select", "I", "--fix", "--quiet"], ["format"]):
        text = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--stdin-filename", str(HERE / name), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE.parent,
        ).stdout
    return text


def generated() -> dict[Path, str]:
    """Each generated file with the text it should hold."""
    return {HERE / target(name): to_sync((HERE / name).read_text(), name) for name in SOURCES}


def _holds(path: Path, text: str) -> bool:
    return path.exists() and path.read_text() == text


def main(argv: list[str]) -> int:
    stale = [path for path, text in generated().items() if not _holds(path, text)]
    if "--check" in argv:
        for path in stale:
            print(f"{path.name} is stale: run python sdk/_async_to_sync.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
