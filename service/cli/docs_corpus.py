"""The corpus ``unidb quickstart`` loads when given no BEIR folder: unidb's own documentation
(the README and ``docs/``), split into passages at its headings, shipped inside the package.

Regenerate it after editing the docs (a test fails while it is stale)::

    python -m unidb.service.cli.docs_corpus
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

CORPUS_NAME = "unidb-docs.jsonl"
# about 256 MiniLM word pieces: what the model reads of a passage
MAX_PASSAGE_CHARS = 1000
_HEADING = re.compile(r"^(#{1,3})\s+(.*\S)\s*$")
# the generated settings reference is one table: every row alike, nothing to ask about
_SKIPPED = {"configuration.md"}


def bundled_corpus() -> Path:
    """The packaged corpus file (inside the installed package, or the checkout)."""
    return Path(str(files("unidb").joinpath("samples", CORPUS_NAME)))


def checkout_root() -> Path:
    return Path(__file__).resolve().parents[2]


def source_pages(root: Path) -> list[Path]:
    return [root / "README.md"] + sorted(
        page for page in (root / "docs").glob("*.md") if page.name not in _SKIPPED
    )


def _blocks(lines: list[str]) -> Iterator[str]:
    """Paragraphs and whole code blocks, in order (a fence is never split)."""
    block: list[str] = []
    fenced = False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and not line.strip():
            if block:
                yield "\n".join(block)
            block = []
            continue
        block.append(line)
    if block:
        yield "\n".join(block)


def _sections(text: str) -> Iterator[tuple[list[str], list[str]]]:
    """(heading path, body lines) per section, headings of levels 1 to 3."""
    path: list[str] = []
    body: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else _HEADING.match(line)
        if heading is None:
            body.append(line)
            continue
        yield list(path), body
        level = len(heading.group(1))
        path = path[: level - 1] + [heading.group(2)]
        body = []
    yield list(path), body


def _passages(blocks: list[str]) -> Iterator[str]:
    """Blocks packed into passages of at most MAX_PASSAGE_CHARS (a longer block alone)."""
    packed: list[str] = []
    size = 0
    for block in blocks:
        if packed and size + len(block) > MAX_PASSAGE_CHARS:
            yield "\n\n".join(packed)
            packed, size = [], 0
        packed.append(block)
        size += len(block) + 2
    if packed:
        yield "\n\n".join(packed)


def passages(root: Path) -> list[dict[str, Any]]:
    """Every passage of the documentation under ``root``, as BEIR corpus records."""
    records: list[dict[str, Any]] = []
    for page in source_pages(root):
        relative = page.relative_to(root).as_posix()
        stem = page.stem.lower()
        number = 0
        for path, body in _sections(page.read_text(encoding="utf-8")):
            blocks = [b for b in _blocks(body) if b.strip()]
            for text in _passages(blocks):
                number += 1
                records.append(
                    {
                        "_id": f"{stem}-{number:03d}",
                        "title": " › ".join(path) or page.name,
                        "text": text,
                        "metadata": {"page": relative},
                    }
                )
    return records


def render(root: Path) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in passages(root))


def main() -> int:
    root = checkout_root()
    target = root / "sdk" / "samples" / CORPUS_NAME
    target.parent.mkdir(exist_ok=True)
    target.write_text(render(root), encoding="utf-8")
    print(f"wrote {target.relative_to(root)}: {len(passages(root))} passages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
