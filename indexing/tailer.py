"""Keeping a BM25 index level with Postgres: build it from the table, then follow the outbox."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from unidb.indexing.bm25 import Bm25Index, document_body
from unidb.indexing.outbox import Horizon, read_changes, safe_watermark
from unidb.indexing.pg import Connection

_FETCH = 2000

# a document with its chunks' spans, for collections that split documents
CHUNKED_ROWS = (
    "SELECT d.key, d.text, d.metadata, s.starts, s.ends FROM unidb.documents d, LATERAL"
    " (SELECT array_agg(c.start_char ORDER BY c.chunk_no) AS starts,"
    "  array_agg(c.end_char ORDER BY c.chunk_no) AS ends FROM unidb.chunks c"
    "  WHERE c.collection_id = d.collection_id AND c.document_key = d.key) s"
)


def chunk_bodies(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[int, str]]:
    """(key, body) per chunk of rows read by ``CHUNKED_ROWS``; a row read without spans (or
    with none) is one body, the whole document."""
    for key, text, metadata, *spans in rows:
        starts, ends = spans if spans else ([], [])
        if not starts:
            yield key, document_body(text, metadata)
            continue
        for start, end in zip(starts, ends, strict=True):
            yield key, document_body(text[start:end], metadata)


def _is_chunked(conn: Connection, collection_id: int) -> bool:
    row = conn.execute(
        "SELECT coalesce(chunker->>'kind', 'none') <> 'none' FROM unidb.collections WHERE id = %s",
        (collection_id,),
    ).fetchone()
    return bool(row and row[0])


def rebuild(conn: Connection, collection_id: int, index: Bm25Index) -> int:
    """Fill an empty index from `unidb.documents`; returns the documents indexed.

    Runs in one REPEATABLE READ transaction (``conn`` must have none open): every
    transaction below that snapshot's xmin is in it, so xmin is the index's watermark;
    later changes that the snapshot also saw are applied again by `catch_up`, harmlessly.
    """
    count = 0
    with index.writing(), conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        watermark = safe_watermark(conn)
        statement = (
            CHUNKED_ROWS + " WHERE d.collection_id = %s"
            if _is_chunked(conn, collection_id)
            else "SELECT key, text, metadata FROM unidb.documents WHERE collection_id = %s"
        )
        with conn.cursor(name="unidb_bm25_rebuild") as cursor:
            cursor.itersize = _FETCH
            cursor.execute(statement, (collection_id,))
            while rows := cursor.fetchmany(_FETCH):
                index.apply(list(chunk_bodies(rows)), [], watermark=index.watermark)
                count += len(rows)
        index.apply([], [], watermark=watermark)
    return count


class BelowHorizon(Exception):
    """The outbox is pruned past the index's watermark: it must be rebuilt, not caught up."""


def catch_up(
    conn: Connection, collection_id: int, index: Bm25Index, horizon: Horizon | None = None
) -> int:
    """Apply the outbox from the index's watermark to the safe watermark; returns changes read.

    When none of them is this collection's, the watermark moves in memory only: no commit,
    no file written. With ``horizon``, the pruned horizon is read after the changes: if a
    prune passed the watermark before they were read, BelowHorizon, and nothing moves."""
    upto = safe_watermark(conn)
    if upto <= index.watermark:
        return 0
    changes = read_changes(conn, collection_id, since=index.watermark, upto=upto)
    if horizon is not None and index.watermark < horizon.read(conn, wait_for_prune=False):
        raise BelowHorizon
    if not changes:
        index.advance(upto)
        return 0
    touched = {c.document_key for c in changes if c.document_key is not None}
    # the writer before the rows: of two processes taking turns at this index, the one that
    # reads later commits later, so no key goes back to an older row
    with index.writing():
        # the document's current row decides: a key without one was deleted
        rows = conn.execute(
            CHUNKED_ROWS + " WHERE d.collection_id = %s AND d.key = ANY(%s)",
            (collection_id, list(touched)),
        ).fetchall()
        upserts = list(chunk_bodies(rows))
        deletes = touched - {key for key, _ in upserts}
        index.apply(upserts, deletes, watermark=upto)
    return len(changes)
