"""Documents: validated, staged with binary COPY, and upserted with their chunks and outbox rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

import numpy as np
import orjson
import psycopg

from unidb.errors import InvalidInput, NotFound, PayloadTooLarge
from unidb.models import Document, StoredDocument, UpsertResult

from .collections import CollectionRow

Connection = psycopg.Connection[Any]

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS unidb_stage (
    id text, text text, metadata text, content_hash bytea, embedding vector
) ON COMMIT DELETE ROWS
"""

# One statement per batch: documents whose content changed (or are new) are written with a
# bumped version, their single chunk replaced, and one outbox row each, all in the caller's
# transaction. Identical re-upserts match the WHERE and touch nothing.
_UPSERT = """
WITH written AS (
    INSERT INTO unidb.documents AS d (collection_id, id, text, metadata, content_hash)
    SELECT %(collection)s, s.id, s.text, s.metadata::jsonb, s.content_hash FROM unidb_stage s
    ON CONFLICT (collection_id, id) DO UPDATE
        SET text = excluded.text, metadata = excluded.metadata,
            content_hash = excluded.content_hash, version = d.version + 1, updated_at = now()
        WHERE d.content_hash IS DISTINCT FROM excluded.content_hash
    RETURNING d.id, d.version
), chunked AS (
    INSERT INTO unidb.chunks AS c (collection_id, document_id, chunk_no, start_char, end_char, embedding)
    SELECT %(collection)s, s.id, 0, 0, length(s.text), s.embedding
    FROM unidb_stage s JOIN written w ON w.id = s.id
    ON CONFLICT (collection_id, document_id, chunk_no) DO UPDATE
        SET start_char = excluded.start_char, end_char = excluded.end_char,
            embedding = excluded.embedding
)
INSERT INTO unidb.changes (collection_id, document_id, op, version)
SELECT %(collection)s, w.id, 'upsert', w.version FROM written w
"""


@dataclass(frozen=True, slots=True)
class Limits:
    max_batch_documents: int
    max_text_chars: int


def _validated_rows(
    collection: CollectionRow, documents: Sequence[Document], limits: Limits
) -> list[tuple[str, str, str, bytes, np.ndarray | None]]:
    if len(documents) > limits.max_batch_documents:
        raise PayloadTooLarge(
            f"a batch holds at most {limits.max_batch_documents} documents, got {len(documents)}",
            field="documents",
        )
    by_id: dict[str, tuple[str, str, str, bytes, np.ndarray | None]] = {}
    for i, doc in enumerate(documents):
        if len(doc.text) > limits.max_text_chars:
            raise PayloadTooLarge(
                f"text is {len(doc.text)} characters, over the limit of {limits.max_text_chars}",
                field=f"documents[{i}].text",
            )
        metadata = orjson.dumps(doc.metadata, option=orjson.OPT_SORT_KEYS)
        digest = blake2b(doc.text.encode(), digest_size=16)
        digest.update(b"\x00")
        digest.update(metadata)
        vector: np.ndarray | None = None
        if doc.embedding is not None:
            vector = _checked_vector(collection, doc.embedding, f"documents[{i}].embedding")
            digest.update(b"\x00")
            digest.update(vector.tobytes())
        # a later duplicate of an id in the same batch wins, as if sent in order
        by_id[doc.id] = (doc.id, doc.text, metadata.decode(), digest.digest(), vector)
    return list(by_id.values())


def _checked_vector(collection: CollectionRow, values: Sequence[float], field: str) -> np.ndarray:
    if len(values) != collection.dim:
        raise InvalidInput(
            f"expected {collection.dim} dimensions for collection {collection.name!r}, got {len(values)}",
            field=field,
        )
    with np.errstate(over="ignore"):
        # a double beyond float32's range becomes inf here and is refused below
        vector = np.asarray(values, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise InvalidInput("must hold finite 32-bit floats (no NaN or infinity)", field=field)
    if collection.metric == "cosine" and not vector.any():
        raise InvalidInput("a zero vector has no cosine distance", field=field)
    return vector


def checked_query_vector(collection: CollectionRow, values: Sequence[float]) -> np.ndarray:
    return _checked_vector(collection, values, "vector")


def upsert(
    conn: Connection, collection: CollectionRow, documents: Sequence[Document], limits: Limits
) -> UpsertResult:
    """Write ``documents`` in the caller's transaction; validation fails before any write."""
    rows = _validated_rows(collection, documents, limits)
    conn.execute(_STAGE)
    with conn.cursor() as cur:
        with cur.copy(
            "COPY unidb_stage (id, text, metadata, content_hash, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "text", "text", "bytea", "vector"])
            for row in rows:
                copy.write_row(row)
        cur.execute(_UPSERT, {"collection": collection.id})
        written = cur.rowcount
    return UpsertResult(written=written, unchanged=len(rows) - written)


def get(conn: Connection, collection: CollectionRow, document_id: str) -> StoredDocument:
    row = conn.execute(
        "SELECT d.id, d.text, d.metadata, c.embedding, d.version, d.created_at, d.updated_at"
        " FROM unidb.documents d LEFT JOIN unidb.chunks c"
        "   ON c.collection_id = d.collection_id AND c.document_id = d.id AND c.chunk_no = 0"
        " WHERE d.collection_id = %s AND d.id = %s",
        (collection.id, document_id),
    ).fetchone()
    if row is None:
        raise NotFound(
            f"document {document_id!r} is not in collection {collection.name!r}", field="id"
        )
    doc_id, text, metadata, embedding, version, created_at, updated_at = row
    return StoredDocument(
        id=doc_id,
        text=text,
        metadata=metadata,
        embedding=embedding.to_list() if embedding is not None else None,
        version=version,
        created_at=created_at,
        updated_at=updated_at,
    )


def delete(conn: Connection, collection: CollectionRow, document_id: str) -> bool:
    row = conn.execute(
        "DELETE FROM unidb.documents WHERE collection_id = %s AND id = %s RETURNING version",
        (collection.id, document_id),
    ).fetchone()
    if row is None:
        return False
    conn.execute(
        "INSERT INTO unidb.changes (collection_id, document_id, op, version)"
        " VALUES (%s, %s, 'delete', %s)",
        (collection.id, document_id, row[0]),
    )
    return True
