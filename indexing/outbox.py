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


def changed_collections(
    conn: Connection, *, since: int, upto: int, among: list[int] | None = None
) -> set[int]:
    """The collections (of ``among``, when given) with changes from transactions in
    ``[since, upto)``."""
    statement = (
        "SELECT DISTINCT collection_id FROM unidb.changes"
        " WHERE xid >= %s::text::xid8 AND xid < %s::text::xid8"
    )
    params: list[object] = [since, upto]
    if among is not None:
        statement += " AND collection_id = ANY(%s)"
        params.append(among)
    return {row[0] for row in conn.execute(statement, params).fetchall()}


def lag(conn: Connection, collection_id: int, *, since: int, upto: int | None = None) -> int:
    """How many changes an index with watermark ``since`` does not hold yet (counting no
    further than ``upto``, when given)."""
    row = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM unidb.changes"
        " WHERE collection_id = %s AND xid >= %s::text::xid8 LIMIT %s) behind",
        (collection_id, since, upto),
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


class Horizon:
    """How far the outbox has been pruned, as this process last read it: a follower whose
    watermark is below it has lost changes and rebuilds from the tables instead."""

    def __init__(self) -> None:
        self._value: int | None = None

    def read(self, conn: Connection, *, wait_for_prune: bool = True) -> int:
        """The horizon now (and remember it). It waits for a prune under way, so that a
        follower that has just reported (and committed) reads the horizon its report holds
        back. A transaction that holds its follower row's lock must not wait (the prune
        waits for that row): ``wait_for_prune=False``, safe there because no prune can
        pass the row while it is held."""
        row = conn.execute(
            "SELECT horizon FROM unidb.outbox_horizon FOR SHARE"
            if wait_for_prune
            else "SELECT horizon FROM unidb.outbox_horizon"
        ).fetchone()
        # a read that began before a prune may end after a newer value was remembered
        self._value = max(int(row[0]) if row else 0, self._value or 0)
        return self._value

    def remember(self, horizon: int) -> None:
        """The horizon is at least ``horizon`` (this process pruned to it, or a query read
        it); it only ever moves up."""
        self._value = max(horizon, self._value or 0)

    def known(self, conn: Connection) -> int:
        """The horizon as last read, reading it if it never was."""
        return self._value if self._value is not None else self.read(conn)

    @property
    def value(self) -> int | None:
        """The horizon as last read; None before the first read."""
        return self._value


# read with a query's outbox read: an index below it has lost changes and must not answer
HORIZON_STATEMENT = ("SELECT horizon FROM unidb.outbox_horizon WHERE only_row = %s", (True,))


def forget_follower(conn: Connection, name: str) -> None:
    """A follower that stops following (a process closing) holds nothing back any more."""
    conn.execute("DELETE FROM unidb.outbox_followers WHERE name = %s", (name,))


def report_follower(conn: Connection, name: str, watermark: int) -> None:
    """Record that follower ``name`` holds everything below ``watermark`` (and is alive)."""
    conn.execute(
        "INSERT INTO unidb.outbox_followers (name, watermark, seen_at) VALUES (%s, %s, now())"
        " ON CONFLICT (name) DO UPDATE SET watermark = EXCLUDED.watermark, seen_at = now()",
        (name, watermark),
    )


@dataclass(frozen=True, slots=True)
class Pruned:
    horizon: int
    deleted: int
    stale: list[str]  # followers silent past the stale limit, not waited on


def prune(conn: Connection, *, stale_after_s: float, batch: int) -> Pruned:
    """Delete the outbox rows every live follower has passed, and the rows of collections
    that no longer exist (their ``drop`` records go with the horizon, once every follower
    has read them). One transaction; the horizon row is locked so prunes do not overlap."""
    (horizon,) = conn.execute("SELECT horizon FROM unidb.outbox_horizon FOR UPDATE").fetchone() or (
        0,
    )
    followers = conn.execute(
        "SELECT name, watermark, seen_at < now() - make_interval(secs => %s)"
        " FROM unidb.outbox_followers FOR SHARE",
        (stale_after_s,),
    ).fetchall()
    stale = sorted(name for name, _, silent in followers if silent)
    live = [int(watermark) for _, watermark, silent in followers if not silent]
    # never past the safe watermark (a transaction above it may still commit), nor past a
    # snapshot still open: an index build reading as of it catches up from there
    target = min([*live, safe_watermark(conn), *open_snapshots(conn)])
    deleted = 0
    if target > horizon:
        while True:
            # each batch picked once, by the index, whatever the planner thinks of the table
            # (a subquery it re-runs per row made a prune quadratic at a million rows)
            cursor = conn.execute(
                "WITH batch AS MATERIALIZED (SELECT seq FROM unidb.changes"
                " WHERE xid < %s::text::xid8 LIMIT %s)"
                " DELETE FROM unidb.changes c USING batch WHERE c.seq = batch.seq",
                (target, batch),
            )
            deleted += cursor.rowcount
            if cursor.rowcount < batch:
                break
        conn.execute("UPDATE unidb.outbox_horizon SET horizon = %s, pruned_at = now()", (target,))
        horizon = target
    # the collections the outbox holds rows of, one index probe each (not a scan of every
    # row), less those that still exist
    dropped = [
        row[0]
        for row in conn.execute(
            "WITH RECURSIVE ids AS ("
            " (SELECT collection_id FROM unidb.changes ORDER BY collection_id LIMIT 1)"
            " UNION ALL SELECT (SELECT c.collection_id FROM unidb.changes c"
            "   WHERE c.collection_id > ids.collection_id ORDER BY c.collection_id LIMIT 1)"
            " FROM ids WHERE ids.collection_id IS NOT NULL)"
            " SELECT collection_id FROM ids WHERE collection_id IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM unidb.collections k WHERE k.id = ids.collection_id)"
        ).fetchall()
    ]
    if dropped:
        cursor = conn.execute(
            "WITH batch AS MATERIALIZED (SELECT seq FROM unidb.changes"
            " WHERE collection_id = ANY(%s) AND op <> 'drop' LIMIT %s)"
            " DELETE FROM unidb.changes c USING batch WHERE c.seq = batch.seq",
            (dropped, batch),
        )
        deleted += cursor.rowcount
    # a follower silent ten times the limit is gone for good: its row goes too
    conn.execute(
        "DELETE FROM unidb.outbox_followers WHERE seen_at < now() - make_interval(secs => %s)",
        (10 * stale_after_s,),
    )
    return Pruned(int(horizon), deleted, stale)


def open_snapshots(conn: Connection) -> list[int]:
    """The oldest snapshot xmin of each backend on this database that holds one, as 64-bit
    transaction ids (``backend_xmin`` is 32-bit, at most 2^32 behind the safe watermark)."""
    rows = conn.execute(
        "WITH now AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS safe)"
        " SELECT now.safe - ((now.safe - a.backend_xmin::text::bigint) % 4294967296"
        "   + 4294967296) % 4294967296"
        " FROM pg_stat_activity a, now"
        " WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid()"
        "   AND a.datname = current_database()"
    ).fetchall()
    return [int(row[0]) for row in rows]
