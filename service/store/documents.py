"""Documents: validated in bulk, then written with their chunks and outbox rows.

Every batch is loaded with binary COPY into temporary tables, then into the real ones by
INSERT: row-level security binds the service on documents, chunks and changes (migration
0009), and Postgres refuses COPY FROM into a table whose policy binds the writer. A batch of
ids that are all new is inserted as it is; any other is merged in one statement, leaving
documents whose content is unchanged untouched (same version, no outbox row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from unidb.errors import InvalidInput, NotFound, PayloadTooLarge
from unidb.indexing.outbox import RECORD_CHANGES
from unidb.indexing.pg import Connection
from unidb.models import Document, StoredDocument, UpsertResult
from unidb.service.store.catalog import CollectionRow
from unidb.service.store.copy_payload import chunks_payload, documents_payload
from unidb.service.store.json_values import NUL_MESSAGE, encode_json
from unidb.vector_encoding import unpack as unpack_vector

_STAGE = """
CREATE TEMP TABLE IF NOT EXISTS unidb_stage (
    ord integer, id text, text text, metadata text, content_hash bytea, embedding vector
) ON COMMIT DELETE ROWS
"""

# the columns the binary payloads carry, with the real tables' types; rows a savepoint
# rolled back go with it, and the rest are truncated before the next batch
_NEW_DOCUMENTS = """
CREATE TEMP TABLE IF NOT EXISTS unidb_new_documents ON COMMIT DELETE ROWS AS
SELECT collection_id, key, id, text, metadata, content_hash FROM unidb.documents WITH NO DATA
"""
_NEW_CHUNKS = """
CREATE TEMP TABLE IF NOT EXISTS unidb_new_chunks ON COMMIT DELETE ROWS AS
SELECT document_key, chunk_no, collection_id, start_char, end_char, embedding FROM unidb.chunks
WITH NO DATA
"""
_INSERT_NEW = f"""
WITH written AS (
    INSERT INTO unidb.documents (collection_id, key, id, text, metadata, content_hash)
    SELECT collection_id, key, id, text, metadata, content_hash FROM unidb_new_documents
), chunked AS (
    INSERT INTO unidb.chunks
        (document_key, chunk_no, collection_id, start_char, end_char, embedding)
    SELECT document_key, chunk_no, collection_id, start_char, end_char, embedding
    FROM unidb_new_chunks
)
{RECORD_CHANGES}
SELECT collection_id, key, 'upsert', 1 FROM unidb_new_documents
"""  # noqa: S608 (constants only)

# a batch's new documents are numbered (block << 20) + position; see migration 0001
KEY_BLOCK_BITS = 20
MAX_BATCH = 1 << KEY_BLOCK_BITS

# Changed or new documents get a bumped version, their chunks replaced and an outbox row,
# all in the caller's transaction. Identical re-upserts fail the WHERE and touch nothing.
# ``chunks``: the SELECT of the rows to upsert into unidb.chunks, from ``written w``.
_MERGE_TEMPLATE = """
WITH written AS (
    INSERT INTO unidb.documents AS d (collection_id, key, id, text, metadata, content_hash)
    SELECT %(collection)s, (%(block)s::bigint << 20) + s.ord, s.id, s.text, s.metadata::jsonb,
           s.content_hash
    FROM unidb_stage s
    ON CONFLICT (collection_id, id) DO UPDATE
        SET text = excluded.text, metadata = excluded.metadata,
            content_hash = excluded.content_hash, version = d.version + 1, updated_at = now()
        WHERE d.content_hash IS DISTINCT FROM excluded.content_hash
    RETURNING d.id, d.key, d.version
), chunked AS (
    INSERT INTO unidb.chunks AS c
        (document_key, chunk_no, collection_id, start_char, end_char, embedding)
    {chunks}
    ON CONFLICT (collection_id, document_key, chunk_no) DO UPDATE
        SET start_char = excluded.start_char, end_char = excluded.end_char,
            embedding = excluded.embedding
)
{record_changes}
SELECT %(collection)s, w.key, 'upsert', w.version FROM written w
"""
# one chunk per document: the whole text
_MERGE = _MERGE_TEMPLATE.format(
    chunks="SELECT w.key, 0, %(collection)s, 0, length(s.text), s.embedding"
    " FROM unidb_stage s JOIN written w ON w.id = s.id",
    record_changes=RECORD_CHANGES,
)

# A chunked collection's changed documents: their staged chunks upserted in the same
# statement as the documents; then, in a statement of its own, their chunks past the new
# count deleted. Its own statement reads a snapshot taken once this transaction holds the
# documents' rows, so it sees the chunks of a writer that committed before it.
_STAGE_CHUNKS = """
CREATE TEMP TABLE IF NOT EXISTS unidb_stage_chunks (
    ord integer, chunk_no integer, start_char integer, end_char integer, embedding vector
) ON COMMIT DELETE ROWS
"""
_MERGE_CHUNKED = _MERGE_TEMPLATE.format(
    chunks="SELECT w.key, sc.chunk_no, %(collection)s, sc.start_char, sc.end_char, sc.embedding"
    " FROM written w JOIN unidb_stage s ON s.id = w.id"
    " JOIN unidb_stage_chunks sc ON sc.ord = s.ord",
    record_changes=RECORD_CHANGES,
)
_TRIM_CHUNKS = """
WITH counted AS (SELECT ord, count(*) AS n FROM unidb_stage_chunks GROUP BY ord)
DELETE FROM unidb.chunks c
USING unidb_stage s JOIN counted ON counted.ord = s.ord
    JOIN unidb.documents d ON d.collection_id = %(collection)s AND d.id = s.id
WHERE c.collection_id = %(collection)s AND c.document_key = d.key AND c.chunk_no >= counted.n
"""


@dataclass(frozen=True, slots=True)
class Chunks:
    """A document's chunks in a chunked collection: spans of its text and their vectors."""

    spans: list[tuple[int, int]]
    vectors: np.ndarray  # (len(spans), dim) float32


@dataclass(frozen=True, slots=True)
class Limits:
    max_batch_documents: int
    max_text_chars: int


@dataclass(slots=True)
class Batch:
    """A validated batch, one entry per distinct id (a later duplicate wins)."""

    ids: list[str]
    texts: list[str]
    encoded_ids: list[bytes]  # UTF-8, as COPY sends them
    encoded_texts: list[bytes]
    metadata_json: list[bytes]
    content_hashes: list[bytes]
    vectors: np.ndarray  # (n, dim) float32; rows without an embedding are zero
    has_vector: np.ndarray  # (n,) bool
    chunks: list[Chunks] | None = None  # per document, in a chunked collection


def content_hash(text: bytes, metadata: bytes, vector: bytes | None = None) -> bytes:
    """What decides whether an upsert changes a document: its text, metadata and (where
    the caller gives it) embedding. A chunked collection's are derived: never part of it."""
    # NUL cannot occur in text or JSON, so it separates the parts unambiguously
    content = text + b"\x00" + metadata
    if vector is not None:
        content += b"\x00" + vector
    return blake2b(content, digest_size=16).digest()


def latest_per_id(documents: Sequence[Document]) -> list[int]:
    """The positions of ``documents`` that count: the last of each id, in order."""
    last: dict[str, int] = {}
    for i, doc in enumerate(documents):
        last[doc.id] = i
    return sorted(last.values())


def prepare(
    collection: CollectionRow,
    documents: Sequence[Document],
    limits: Limits,
    chunks: Sequence[Chunks] | None = None,
) -> Batch:
    """Check every document; raises InvalidInput/PayloadTooLarge naming the first bad field.

    ``chunks``, one per document, in a chunked collection (where no document may carry an
    embedding: the collection embeds each chunk)."""
    if len(documents) > min(limits.max_batch_documents, MAX_BATCH):
        raise PayloadTooLarge(
            f"a batch holds at most {limits.max_batch_documents} documents, got {len(documents)}",
            field="documents",
        )
    order = latest_per_id(documents)
    n = len(order)
    if collection.chunked:
        for i in order:
            if documents[i].embedding is not None:
                raise InvalidInput(
                    f"collection {collection.name!r} chunks its documents and embeds each "
                    "chunk itself: send documents without an embedding",
                    field=f"documents[{i}].embedding",
                )
        if chunks is None or len(chunks) != len(documents):
            raise ValueError("a chunked collection's documents come with their chunks")

    vectors = np.zeros((n, collection.dim), dtype=np.float32)
    has_vector = np.zeros(n, dtype=bool)
    with_vector = [(row, i) for row, i in enumerate(order) if documents[i].embedding is not None]
    if with_vector:
        rows = [row for row, _ in with_vector]
        vectors[rows] = _checked_vectors(collection, documents, [i for _, i in with_vector])
        has_vector[rows] = True

    metadata_json: list[bytes] = []
    hashes: list[bytes] = []
    encoded_ids: list[bytes] = []
    encoded_texts: list[bytes] = []
    vector_bytes = memoryview(vectors.tobytes())
    stride = 4 * collection.dim
    for row, i in enumerate(order):
        doc = documents[i]
        where = f"documents[{i}]"
        if "\x00" in doc.id:
            raise InvalidInput(NUL_MESSAGE, field=f"{where}.id")
        if "\x00" in doc.text:
            raise InvalidInput(NUL_MESSAGE, field=f"{where}.text")
        if len(doc.text) > limits.max_text_chars:
            raise PayloadTooLarge(
                f"text is {len(doc.text)} characters, over the limit of {limits.max_text_chars}",
                field=f"{where}.text",
            )
        metadata = _metadata_json(doc.metadata, f"{where}.metadata")
        text = doc.text.encode()
        vector = bytes(vector_bytes[row * stride : (row + 1) * stride]) if has_vector[row] else None
        metadata_json.append(metadata)
        hashes.append(content_hash(text, metadata, vector))
        encoded_ids.append(doc.id.encode())
        encoded_texts.append(text)
    return Batch(
        ids=[documents[i].id for i in order],
        texts=[documents[i].text for i in order],
        encoded_ids=encoded_ids,
        encoded_texts=encoded_texts,
        metadata_json=metadata_json,
        content_hashes=hashes,
        vectors=vectors,
        has_vector=has_vector,
        chunks=[chunks[i] for i in order] if collection.chunked and chunks is not None else None,
    )


def _metadata_json(metadata: dict[str, Any], field: str) -> bytes:
    return encode_json(metadata, field=field, sort_keys=True)


def _checked_vectors(
    collection: CollectionRow, documents: Sequence[Document], positions: list[int]
) -> np.ndarray:
    """The embeddings at ``positions`` as one float32 matrix, checked in bulk."""
    embeddings = [_unpacked(documents[i].embedding, f"documents[{i}].embedding") for i in positions]
    for i, embedding in zip(positions, embeddings, strict=True):
        if len(embedding) != collection.dim:
            raise InvalidInput(
                f"expected {collection.dim} dimensions for collection {collection.name!r}, "
                f"got {len(embedding)}",
                field=f"documents[{i}].embedding",
            )
    try:
        raw = np.asarray(embeddings)
    except (ValueError, TypeError):
        raw = np.asarray([], dtype=object)
    if raw.ndim != 2 or raw.dtype.kind not in "fiu":
        # find the offending document for the message
        for i, embedding in zip(positions, embeddings, strict=True):
            check_vector(collection, embedding, f"documents[{i}].embedding")
    with np.errstate(over="ignore"):
        # a double beyond float32's range becomes inf here and is refused below
        matrix = raw.astype(np.float32, copy=False)
    bad = ~np.isfinite(matrix).all(axis=1)
    if collection.metric == "cosine":
        bad |= ~matrix.any(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        check_vector(collection, matrix[first], f"documents[{positions[first]}].embedding")
    return matrix


def _unpacked(embedding: Any, field: str) -> Any:
    """A base64 embedding (little-endian float32) as an array; anything else as it is."""
    if not isinstance(embedding, str):
        return embedding
    return np.frombuffer(unpack_vector(embedding, field), dtype="<f4")


def check_vector(collection: CollectionRow, values: Any, field: str) -> np.ndarray:
    """One vector as float32, or InvalidInput saying what is wrong with it."""
    try:
        raw = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("must be a flat list of numbers", field=field) from exc
    if raw.ndim != 1 or raw.dtype.kind not in "fiu":
        raise InvalidInput("must be a flat list of numbers", field=field)
    if raw.shape[0] != collection.dim:
        raise InvalidInput(
            f"expected {collection.dim} dimensions for collection {collection.name!r}, "
            f"got {raw.shape[0]}",
            field=field,
        )
    with np.errstate(over="ignore"):
        vector = raw.astype(np.float32, copy=False)
    finite = np.isfinite(vector)
    if not finite.all():
        position = int(np.flatnonzero(~finite)[0])
        raise InvalidInput(
            "must hold finite 32-bit floats (no NaN or infinity)", field=f"{field}[{position}]"
        )
    if collection.metric == "cosine" and not vector.any():
        raise InvalidInput("a zero vector has no cosine distance", field=field)
    return vector


def upsert(
    conn: Connection,
    collection: CollectionRow,
    documents: Sequence[Document],
    limits: Limits,
    chunks: Sequence[Chunks] | None = None,
) -> UpsertResult:
    """Write ``documents`` in the caller's transaction; validation fails before any write.
    ``chunks``: one per document, in a chunked collection."""
    batch = prepare(collection, documents, limits, chunks)
    block_row = conn.execute("SELECT nextval('unidb.document_key_blocks')").fetchone()
    assert block_row is not None
    block = int(block_row[0])
    try:
        # optimistic: a first load has only new ids and needs no merge
        with conn.transaction():
            _copy_new(conn, collection, batch, block)
        return UpsertResult(written=len(batch.ids), unchanged=0)
    except psycopg.errors.UniqueViolation:
        pass  # some ids exist already: merge instead
    return _merge(conn, collection, batch, block)


def _copy_new(conn: Connection, collection: CollectionRow, batch: Batch, block: int) -> None:
    """Bulk-load ids that are all new: COPY to the session's staging tables, one INSERT on."""
    n = len(batch.ids)
    keys = (np.int64(block) << KEY_BLOCK_BITS) + np.arange(n, dtype=np.int64)
    if batch.chunks is None:
        # one chunk per document: the whole text
        chunk_keys = keys
        chunk_nos = np.zeros(n, dtype=np.int32)
        starts = np.zeros(n, dtype=np.int32)
        ends = np.fromiter((len(t) for t in batch.texts), dtype=np.int32, count=n)
        vectors, has_vector = batch.vectors, batch.has_vector
    else:
        counts = np.fromiter((len(c.spans) for c in batch.chunks), dtype=np.int64, count=n)
        chunk_keys = np.repeat(keys, counts)
        chunk_nos = np.concatenate([np.arange(c, dtype=np.int32) for c in counts])
        spans = np.asarray([span for c in batch.chunks for span in c.spans], dtype=np.int32)
        starts, ends = spans[:, 0], spans[:, 1]
        vectors = np.concatenate([c.vectors for c in batch.chunks]).astype(np.float32)
        has_vector = np.ones(len(chunk_keys), dtype=bool)
    conn.execute(_NEW_DOCUMENTS)
    conn.execute(_NEW_CHUNKS)
    # an earlier batch of this transaction left its rows
    conn.execute("TRUNCATE unidb_new_documents, unidb_new_chunks")
    with conn.cursor() as cur:
        with cur.copy(
            "COPY unidb_new_documents (collection_id, key, id, text, metadata, content_hash)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.write(
                documents_payload(
                    collection.id,
                    keys.tolist(),
                    batch.encoded_ids,
                    batch.encoded_texts,
                    batch.metadata_json,
                    batch.content_hashes,
                )
            )
        with cur.copy(
            "COPY unidb_new_chunks"
            " (document_key, chunk_no, collection_id, start_char, end_char, embedding)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.write(
                chunks_payload(
                    collection.id, chunk_keys, chunk_nos, starts, ends, vectors, has_vector
                )
            )
        cur.execute(_INSERT_NEW)


def _merge(conn: Connection, collection: CollectionRow, batch: Batch, block: int) -> UpsertResult:
    """Stage the batch, then upsert what changed in one statement."""
    conn.execute(_STAGE)
    # an earlier batch of this transaction left its rows (they go only at commit)
    conn.execute("TRUNCATE unidb_stage")
    # the staged batch is sorted and joined in memory, not spilled to disk
    conn.execute("SELECT set_config('work_mem', '64MB', true)")
    with conn.cursor() as cur:
        with cur.copy(
            "COPY unidb_stage (ord, id, text, metadata, content_hash, embedding)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "text", "text", "text", "bytea", "vector"])
            for row in range(len(batch.ids)):
                copy.write_row(
                    (
                        row,
                        batch.ids[row],
                        batch.texts[row],
                        batch.metadata_json[row].decode(),
                        batch.content_hashes[row],
                        batch.vectors[row] if batch.has_vector[row] else None,
                    )
                )
        if batch.chunks is not None:
            _stage_chunks(conn, cur, batch.chunks)
        merge = _MERGE if batch.chunks is None else _MERGE_CHUNKED
        cur.execute(merge, {"collection": collection.id, "block": block})
        written = cur.rowcount
        if batch.chunks is not None:
            cur.execute(_TRIM_CHUNKS, {"collection": collection.id})
    return UpsertResult(written=written, unchanged=len(batch.ids) - written)


def _stage_chunks(conn: Connection, cur: psycopg.Cursor[Any], chunks: list[Chunks]) -> None:
    conn.execute(_STAGE_CHUNKS)
    conn.execute("TRUNCATE unidb_stage_chunks")
    with cur.copy(
        "COPY unidb_stage_chunks (ord, chunk_no, start_char, end_char, embedding)"
        " FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["int4", "int4", "int4", "int4", "vector"])
        for ord_, document_chunks in enumerate(chunks):
            for chunk_no, (start, end) in enumerate(document_chunks.spans):
                copy.write_row((ord_, chunk_no, start, end, document_chunks.vectors[chunk_no]))


def _float_list(vector: Any) -> list[float]:
    """A pgvector value as floats: pgvector-python loads a `Vector` (0.4 on) or a numpy
    array (before), and users' other packages decide which is installed."""
    to_list = getattr(vector, "to_list", None)
    return list(to_list()) if to_list is not None else np.asarray(vector, dtype=float).tolist()


def get(conn: Connection, collection: CollectionRow, document_id: str) -> StoredDocument:
    row = conn.execute(
        "SELECT d.id, d.text, d.metadata, c.embedding, d.version, d.created_at, d.updated_at"
        " FROM unidb.documents d"
        " LEFT JOIN unidb.chunks c"
        "   ON c.collection_id = d.collection_id AND c.document_key = d.key AND c.chunk_no = 0"
        " WHERE d.collection_id = %s AND d.id = %s",
        (collection.id, document_id),
    ).fetchone()
    if row is None:
        raise NotFound(
            f"document {document_id!r} is not in collection {collection.name!r}", field="id"
        )
    doc_id, text, metadata, embedding, version, created_at, updated_at = row
    if collection.chunked:
        embedding = None  # each chunk has its own; the document has none
    return StoredDocument(
        id=doc_id,
        text=text,
        metadata=metadata,
        embedding=_float_list(embedding) if embedding is not None else None,
        version=version,
        created_at=created_at,
        updated_at=updated_at,
    )


def delete_where(
    conn: Connection,
    collection: CollectionRow,
    where: sql.Composable,
    params: list[Any],
) -> int:
    """Delete the collection's documents matching ``where`` (on ``d``), their chunks, and
    note each in the outbox; returns how many."""
    statement = sql.SQL(
        """
        WITH gone AS (
            DELETE FROM unidb.documents d WHERE d.collection_id = {collection} AND {where}
            RETURNING d.key, d.version
        ), gone_chunks AS (
            DELETE FROM unidb.chunks c USING gone
            WHERE c.collection_id = {collection} AND c.document_key = gone.key
        )
        {record_changes}
        SELECT {collection}, key, 'delete', version FROM gone
        """
    ).format(
        collection=sql.Literal(collection.id),
        where=where,
        record_changes=sql.SQL(RECORD_CHANGES),
    )
    return conn.execute(statement, params).rowcount


def delete(conn: Connection, collection: CollectionRow, document_id: str) -> bool:
    return delete_where(conn, collection, sql.SQL("d.id = %s"), [document_id]) == 1
