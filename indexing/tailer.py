"""Keeping a BM25 index level with Postgres: build it from the table, then follow the outbox."""

from __future__ import annotations

from unidb.indexing.bm25 import Bm25Index, document_body
from unidb.indexing.outbox import Horizon, read_changes, safe_watermark
from unidb.indexing.pg import Connection

_FETCH = 2000


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
        with conn.cursor(name="unidb_bm25_rebuild") as cursor:
            cursor.itersize = _FETCH
            cursor.execute(
                "SELECT key, text, metadata FROM unidb.documents WHERE collection_id = %s",
                (collection_id,),
            )
            while rows := cursor.fetchmany(_FETCH):
                index.apply(
                    [(key, document_body(text, metadata)) for key, text, metadata in rows],
                    [],
                    watermark=index.watermark,
                )
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
            "SELECT key, text, metadata FROM unidb.documents"
            " WHERE collection_id = %s AND key = ANY(%s)",
            (collection_id, list(touched)),
        ).fetchall()
        upserts = [(key, document_body(text, metadata)) for key, text, metadata in rows]
        deletes = touched - {key for key, _ in upserts}
        index.apply(upserts, deletes, watermark=upto)
    return len(changes)
