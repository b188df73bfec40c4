"""The `unidb.changes` outbox: how changes are written, and read up to the safe watermark.

Writers record a change in the statement that makes it: each data-modifying statement in
``service/store`` ends in ``RECORD_CHANGES``, so a row and its outbox entry commit together.

Sequence numbers are not commit order: a transaction that took its seq early can commit
late. So readers never go by seq alone. The watermark is ``pg_snapshot_xmin`` of a fresh
snapshot: every transaction with a smaller id has finished, so every change written below
it is visible now and none can still appear. A reader that has applied everything below
``upto`` reads ``upto <= xid < xmin`` next; changes at or above ``xmin`` wait their turn.
"""

from __future__ import annotations

from dataclasses import dataclass

from unidb.indexing.pg import Connection


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    xid: int
    document_key: int | None
    op: str  # upsert | delete | drop
    version: int | None


# the outbox's columns, written by ``SELECT collection_id, document_key, op, version ...``
RECORD_CHANGES = "INSERT INTO unidb.changes (collection_id, document_key, op, version)"


def record_drop(conn: Connection, collection_id: int) -> None:
    """Note that a collection was dropped: its followers let go of their indexes."""
    conn.execute(f"{RECORD_CHANGES} VALUES (%s, NULL, 'drop', NULL)", (collection_id,))


def safe_watermark(conn: Connection) -> int:
    """Every transaction below this id has committed or aborted."""
    row = conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


def read_changes(conn: Connection, collection_id: int, *, since: int, upto: int) -> list[Change]:
    """Changes of one collection from transactions in ``[since, upto)``, in seq order."""
    rows = conn.execute(
        "SELECT seq, xid::text::bigint, document_key, op, version FROM unidb.changes"
        " WHERE collection_id = %s AND xid >= %s::text::xid8 AND xid < %s::text::xid8"
        " ORDER BY seq",
        (collection_id, since, upto),
    ).fetchall()
    return [Change(*row) for row in rows]


def changed_since(collection_id: int, since: int) -> tuple[str, tuple[int, int]]:
    """The statement reading (xid, document key) of the changes this transaction can see
    from transactions at or past ``since``: what an index with that watermark lacks."""
    return (
        "SELECT xid::text::bigint, document_key FROM unidb.changes"
        " WHERE collection_id = %s AND xid >= %s::text::xid8 AND document_key IS NOT NULL",
        (collection_id, since),
    )


def lag(conn: Connection, collection_id: int, *, since: int) -> int:
    """How many changes an index with watermark ``since`` does not hold yet."""
    row = conn.execute(
        "SELECT count(*) FROM unidb.changes WHERE collection_id = %s AND xid >= %s::text::xid8",
        (collection_id, since),
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True)
class CollectionChange:
    collection_id: int
    document_key: int | None
    op: str


def read_all_changes(conn: Connection, *, since: int, upto: int) -> list[CollectionChange]:
    """Changes of every collection from transactions in ``[since, upto)``, in seq order."""
    rows = conn.execute(
        "SELECT collection_id, document_key, op FROM unidb.changes"
        " WHERE xid >= %s::text::xid8 AND xid < %s::text::xid8 ORDER BY seq",
        (since, upto),
    ).fetchall()
    return [CollectionChange(*row) for row in rows]
