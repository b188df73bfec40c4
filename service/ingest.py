"""Bulk ingest of JSONL files: BEIR corpus lines or unidb document lines, in batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import ValidationError
from tqdm import tqdm

from unidb import Backend
from unidb.errors import InvalidInput, NotFound
from unidb.indexing.embedders import Embedder
from unidb.models import CollectionCreate, Document


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


def _batches(stream: IO[bytes], size: int, progress: tqdm[Any]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for number, line in enumerate(stream, start=1):
        progress.update(len(line))
        if not line.strip():
            continue
        batch.append(parse_line(line, number))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def embedding_text(document: Document) -> str:
    title = document.metadata.get("title")
    return f"{title} {document.text}" if isinstance(title, str) and title else document.text


def ingest_file(
    backend: Backend,
    path: Path,
    *,
    collection: str,
    batch_size: int,
    embedder: Embedder | None = None,
    dim: int | None = None,
    limit: int | None = None,
    show_progress: bool = True,
) -> IngestReport:
    """Load ``path`` into ``collection`` (created when missing), one transaction per batch.

    Re-running the same file changes nothing: ids are upserted, identical content is skipped.
    """
    _ensure_collection(backend, collection, dim or (embedder.dim if embedder else None), path)
    report = IngestReport()
    with (
        path.open("rb") as stream,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"ingest {path.name}",
            disable=not show_progress,
        ) as progress,
    ):
        for batch in _batches(stream, batch_size, progress):
            if limit is not None:
                batch = batch[: max(0, limit - report.lines)]
                if not batch:
                    break
            if embedder is not None:
                missing = [d for d in batch if d.embedding is None]
                if missing:
                    vectors = embedder.embed_documents([embedding_text(d) for d in missing])
                    for document, vector in zip(missing, vectors, strict=True):
                        document.embedding = vector.tolist()
            result = backend.upsert_documents(collection, batch)
            report.lines += len(batch)
            report.written += result.written
            report.unchanged += result.unchanged
            progress.set_postfix(written=report.written, unchanged=report.unchanged)
    return report


def _ensure_collection(backend: Backend, name: str, dim: int | None, path: Path) -> None:
    try:
        backend.get_collection(name)
        return
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
    backend.create_collection(CollectionCreate(name=name, dim=dim))


def _first_embedding_dim(path: Path) -> int | None:
    with path.open("rb") as stream:
        for line in stream:
            if line.strip():
                record = orjson.loads(line)
                embedding = record.get("embedding") if isinstance(record, dict) else None
                return len(embedding) if isinstance(embedding, list) else None
    return None
