"""Bulk ingest of JSONL files: BEIR corpus lines or unidb document lines, in batches."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError
from tqdm import tqdm

from unidb import Backend, Client
from unidb.errors import InvalidInput, NotFound, UnidbError
from unidb.indexing.bm25 import document_body
from unidb.indexing.embedders import Embedder
from unidb.models import Collection, CollectionCreate, Document, UpsertResult


@dataclass
class IngestReport:
    lines: int = 0
    written: int = 0
    unchanged: int = 0


def parse_line(line: bytes, number: int) -> Document:
    """One JSONL line as a Document: ``{"_id","title","text"}`` (BEIR) or ``{"id","text",...}``."""
    where = f"line {number}"
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{where}: not JSON ({exc})", field=where) from exc
    if not isinstance(record, dict):
        raise InvalidInput(f"{where}: expected a JSON object", field=where)
    try:
        if "_id" in record:
            metadata: dict[str, Any] = dict(record.get("metadata") or {})
            if record.get("title"):
                metadata["title"] = record["title"]
            return Document(id=str(record["_id"]), text=record.get("text", ""), metadata=metadata)
        return Document.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        raise InvalidInput(f"{where}: {location}: {first['msg']}", field=where) from exc


EmbedGroups = Callable[[Iterator[list[Document]]], Iterator[list[Document]]]
"""Fills in the embeddings of documents that carry none, group by group, in order."""


def _groups(
    stream: IO[bytes],
    progress: tqdm[Any],
    line_numbers: list[int],
    *,
    limit: int | None,
    size: int,
) -> Iterator[list[Document]]:
    """Parsed documents in file order, in groups of ``size``."""
    pending: list[Document] = []
    for number, line in enumerate(stream, start=1):
        # with a limit the bar counts documents written (``on_batch``), otherwise bytes read
        if limit is None:
            progress.update(len(line))
        if not line.strip():
            continue
        if limit is not None and len(line_numbers) >= limit:
            break
        line_numbers.append(number)
        pending.append(parse_line(line, number))
        if len(pending) >= size:
            yield pending
            pending = []
    if pending:
        yield pending


def texts_to_embed(group: list[Document]) -> list[str]:
    """What the embedder reads for each document without an embedding, in group order."""
    return [document_body(d.text, d.metadata) for d in group if d.embedding is None]


def fill_embeddings(group: list[Document], vectors: Iterable[Any]) -> list[Document]:
    for document, vector in zip((d for d in group if d.embedding is None), vectors, strict=True):
        document.embedding = vector
    return group


def embed_in_process(embedder: Embedder) -> EmbedGroups:
    def embed(groups: Iterator[list[Document]]) -> Iterator[list[Document]]:
        for group in groups:
            texts = texts_to_embed(group)
            yield fill_embeddings(group, embedder.embed_documents(texts) if texts else [])

    return embed


def ingest_file(
    backend: Backend,
    path: Path,
    *,
    collection: str,
    batch_size: int,
    embedder: Embedder | None = None,
    embed_groups: EmbedGroups | None = None,
    dim: int | None = None,
    limit: int | None = None,
    show_progress: bool = True,
) -> IngestReport:
    """Load ``path`` into ``collection`` (created when missing), one transaction per batch.

    Texts without an embedding are embedded by ``embedder`` in this process, or by
    ``embed_groups`` (on Ray workers, say), which must give the groups back in order.
    Re-running the same file changes nothing: ids are upserted, identical content is skipped.
    A bad document stops the load with an error naming its line; batches before it stay.
    """
    target = _ensure_collection(
        backend, collection, dim or (embedder.dim if embedder else None), path
    )
    if target.chunker is not None and target.chunker.kind != "none":
        # the collection splits each document and embeds each chunk itself
        embedder = embed_groups = None
    if embed_groups is None and embedder is not None:
        embed_groups = embed_in_process(embedder)
    report = IngestReport()
    line_numbers: list[int] = []

    def on_batch(size: int, result: UpsertResult) -> None:
        report.lines += size
        if limit is not None:
            progress.update(size)
        report.written += result.written
        report.unchanged += result.unchanged
        progress.set_postfix(written=report.written, unchanged=report.unchanged)

    with (
        path.open("rb") as stream,
        tqdm(
            total=path.stat().st_size if limit is None else limit,
            unit="B" if limit is None else "doc",
            unit_scale=limit is None,
            desc=f"ingest {path.name}",
            disable=not show_progress,
        ) as progress,
    ):
        groups = _groups(stream, progress, line_numbers, limit=limit, size=min(batch_size, 256))
        if embed_groups is not None:
            groups = embed_groups(groups)
        documents = (document for group in groups for document in group)
        try:
            Client(backend=backend).ingest(
                collection, documents, batch_size=batch_size, on_batch=on_batch
            )
        except UnidbError as exc:
            raise _at_line(exc, line_numbers) from exc
    return report


_POSITION = re.compile(r"^documents\[(\d+)\]\.?")


def _at_line(error: UnidbError, line_numbers: list[int]) -> UnidbError:
    match = _POSITION.match(error.field or "")
    if match is None or int(match.group(1)) >= len(line_numbers):
        return error
    line = line_numbers[int(match.group(1))]
    detail = error.field[match.end() :] if error.field else ""
    message = f"line {line}: {detail + ': ' if detail else ''}{error.message}"
    return type(error)(message, field=f"line {line}")


def _ensure_collection(backend: Backend, name: str, dim: int | None, path: Path) -> Collection:
    try:
        return backend.get_collection(name)
    except NotFound:
        pass
    if dim is None:
        dim = _first_embedding_dim(path)
    if dim is None:
        raise InvalidInput(
            f"collection {name!r} does not exist and {path.name} has no embeddings: "
            "pass --dim, or --embed minilm to embed the texts",
            field="dim",
        )
    return backend.create_collection(CollectionCreate(name=name, dim=dim))


def _first_embedding_dim(path: Path) -> int | None:
    with path.open("rb") as stream:
        for line in stream:
            if line.strip():
                record = orjson.loads(line)
                embedding = record.get("embedding") if isinstance(record, dict) else None
                return len(embedding) if isinstance(embedding, list) else None
    return None
