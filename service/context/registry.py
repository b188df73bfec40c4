"""The prefix registry and context sessions, in Postgres.

Every context built is registered as a prefix: the sequence of (document, version) it laid
out after the fixed head. Together they form a trie of chunk sequences already sent to
engines; `order="reuse"` follows its longest path made only of chunks in a new result set.
A prefix whose member document changes is stale: `invalidate` drops it, following the
outbox like any other derived index. A tenant keeps at most a set number of prefixes: a
new one past it drops that tenant's least recently used (sent) ones. Library code: every
function takes the caller's connection and never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unidb.indexing.outbox import Horizon, read_all_changes, report_follower, safe_watermark
from unidb.indexing.pg import Connection
from unidb.models import Prefix, PrefixChunk

FOLLOWER = "prefixes"
# how many recent prefixes of one shape the reuse walk considers
_CANDIDATES = 500


@dataclass(frozen=True, slots=True)
class Sent:
    """A registered prefix, as the reuse walk reads it."""

    members: list[tuple[int, int]]  # (document key, version), in prompt order
    block_hashes: list[bytes]
    hits: int


@dataclass(frozen=True, slots=True)
class Registered:
    prefix_key: str
    document_keys: list[int]
    document_ids: list[str]
    versions: list[int]
    token_ids: list[int]
    block_hashes: list[bytes]
    cache_salt: str | None


def candidates(
    conn: Connection, *, collection_id: int, shape: str, first_keys: Sequence[int]
) -> list[Sent]:
    """Recently used prefixes of ``shape`` that start with one of ``first_keys``."""
    if not first_keys:
        return []
    rows = conn.execute(
        "SELECT document_keys, versions, block_hashes, hits FROM unidb.prefixes"
        " WHERE collection_id = %s AND shape = %s AND document_keys[1] = ANY(%s)"
        " ORDER BY last_used_at DESC LIMIT %s",
        (collection_id, shape, list(first_keys), _CANDIDATES),
    ).fetchall()
    return [
        Sent(list(zip(keys, versions, strict=True)), [bytes(h) for h in hashes], hits)
        for keys, versions, hashes, hits in rows
    ]


def register(
    conn: Connection,
    *,
    prefix_key: str,
    tenant: str,
    collection_id: int,
    shape: str,
    members: Sequence[tuple[int, str, int]],
    token_ids: Sequence[int],
    block_hashes: Sequence[bytes],
    cache_salt: str | None,
    max_per_tenant: int,
) -> int:
    """Record that this prefix was sent; returns its hit count (0 the first time). A new
    prefix makes room for itself: the tenant's least recently used past ``max_per_tenant``
    are dropped."""
    row = conn.execute(
        "INSERT INTO unidb.prefixes (prefix_key, tenant, collection_id, shape, document_keys,"
        " document_ids, versions, token_ids, block_hashes, cache_salt)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (prefix_key) DO UPDATE"
        " SET hits = unidb.prefixes.hits + 1, last_used_at = now()"
        " RETURNING hits",
        (
            prefix_key,
            tenant,
            collection_id,
            shape,
            [key for key, _, _ in members],
            [doc_id for _, doc_id, _ in members],
            [version for _, _, version in members],
            list(token_ids),
            list(block_hashes),
            cache_salt,
        ),
    ).fetchone()
    assert row is not None
    hits = int(row[0])
    if hits == 0:
        # requests in flight at once may each keep the newest rows they see: the cap can be
        # passed by as many, until the next new prefix trims it
        conn.execute(
            "DELETE FROM unidb.prefixes WHERE prefix_key IN ("
            " SELECT prefix_key FROM unidb.prefixes WHERE tenant = %s AND prefix_key <> %s"
            " ORDER BY last_used_at DESC, prefix_key DESC OFFSET %s)",
            (tenant, prefix_key, max_per_tenant - 1),
        )
    return hits


def get(conn: Connection, prefix_key: str) -> Registered | None:
    row = conn.execute(
        "SELECT prefix_key, document_keys, document_ids, versions, token_ids, block_hashes,"
        " cache_salt FROM unidb.prefixes WHERE prefix_key = %s",
        (prefix_key,),
    ).fetchone()
    if row is None:
        return None
    key, keys, ids, versions, tokens, hashes, salt = row
    return Registered(key, keys, ids, versions, tokens, [bytes(h) for h in hashes], salt)


def list_prefixes(
    conn: Connection, *, collection_id: int | None = None, limit: int = 100
) -> list[Prefix]:
    """Registered prefixes, most hit first."""
    rows = conn.execute(
        "SELECT p.prefix_key, c.name, p.document_ids, p.versions,"
        " cardinality(p.token_ids), cardinality(p.block_hashes), p.hits, p.created_at,"
        " p.last_used_at"
        " FROM unidb.prefixes p JOIN unidb.collections c ON c.id = p.collection_id"
        " WHERE %s::int IS NULL OR p.collection_id = %s"
        " ORDER BY p.hits DESC, p.last_used_at DESC, p.prefix_key LIMIT %s",
        (collection_id, collection_id, limit),
    ).fetchall()
    return [
        Prefix(
            prefix_key=key,
            collection=name,
            chunks=[PrefixChunk(id=i, version=v) for i, v in zip(ids, versions, strict=True)],
            token_count=tokens,
            blocks=blocks,
            hits=hits,
            created_at=created,
            last_used_at=used,
        )
        for key, name, ids, versions, tokens, blocks, hits, created, used in rows
    ]


def invalidate(conn: Connection) -> int:
    """Drop prefixes (and sessions) that changes committed since the last pass made stale.

    Reads the outbox from this follower's watermark up to the safe watermark and moves the
    watermark in the same transaction, so concurrent processes neither skip nor repeat a
    change. Returns the prefixes dropped."""
    conn.execute(
        "INSERT INTO unidb.outbox_followers (name) VALUES (%s) ON CONFLICT DO NOTHING",
        (FOLLOWER,),
    )
    row = conn.execute(
        "SELECT watermark FROM unidb.outbox_followers WHERE name = %s FOR UPDATE", (FOLLOWER,)
    ).fetchone()
    assert row is not None
    since, upto = int(row[0]), safe_watermark(conn)
    if since < Horizon().read(conn, wait_for_prune=False):
        # silent so long that the outbox was pruned past it: the changes that would say
        # which prefixes went stale are gone, so every prefix goes
        dropped = conn.execute("DELETE FROM unidb.prefixes").rowcount
        report_follower(conn, FOLLOWER, upto)
        return dropped
    if upto <= since:
        report_follower(conn, FOLLOWER, since)  # alive, with nothing new
        return 0
    changed: dict[int, set[int]] = {}
    dropped_collections: set[int] = set()
    for change in read_all_changes(conn, since=since, upto=upto):
        if change.op == "drop":
            dropped_collections.add(change.collection_id)
        elif change.document_key is not None:
            changed.setdefault(change.collection_id, set()).add(change.document_key)
    dropped = 0
    for collection_id in dropped_collections:
        cursor = conn.execute(
            "DELETE FROM unidb.prefixes WHERE collection_id = %s", (collection_id,)
        )
        dropped += cursor.rowcount
        conn.execute(
            "DELETE FROM unidb.context_sessions WHERE collection_id = %s", (collection_id,)
        )
    for collection_id, keys in changed.items():
        if collection_id in dropped_collections:
            continue
        # a change may predate the prefix: only a member whose version moved (or that is
        # gone) makes it stale
        cursor = conn.execute(
            "DELETE FROM unidb.prefixes p"
            " WHERE p.collection_id = %s AND p.document_keys && %s::bigint[]"
            " AND EXISTS (SELECT 1 FROM unnest(p.document_keys, p.versions) AS m(key, version)"
            "   LEFT JOIN unidb.documents d ON d.key = m.key"
            "   WHERE d.version IS DISTINCT FROM m.version)",
            (collection_id, sorted(keys)),
        )
        dropped += cursor.rowcount
    report_follower(conn, FOLLOWER, upto)
    return dropped


@dataclass(frozen=True, slots=True)
class Session:
    document_keys: list[int]
    turn: int


def load_session(
    conn: Connection, *, tenant: str, session: str, collection_id: int, shape: str
) -> Session | None:
    """The session's chunks so far, locked until commit; None when it is new, or was made
    for another collection or prompt shape (it then starts again)."""
    row = conn.execute(
        "SELECT collection_id, shape, document_keys, turn FROM unidb.context_sessions"
        " WHERE tenant = %s AND session = %s FOR UPDATE",
        (tenant, session),
    ).fetchone()
    if row is None:
        return None
    found_collection, found_shape, keys, turn = row
    if found_collection != collection_id or found_shape != shape:
        return Session([], turn)
    return Session(list(keys), turn)


def save_session(
    conn: Connection,
    *,
    tenant: str,
    session: str,
    collection_id: int,
    shape: str,
    document_keys: Sequence[int],
    max_per_tenant: int,
) -> int:
    """Store the session's chunks after this turn; returns the turn number (1 first). A new
    session makes room for itself: the tenant's least recently used past ``max_per_tenant``
    are dropped (a dropped session that comes back starts again at turn 1)."""
    row = conn.execute(
        "INSERT INTO unidb.context_sessions (tenant, session, collection_id, shape,"
        " document_keys, turn) VALUES (%s, %s, %s, %s, %s, 1)"
        " ON CONFLICT (tenant, session) DO UPDATE SET collection_id = excluded.collection_id,"
        " shape = excluded.shape, document_keys = excluded.document_keys,"
        " turn = unidb.context_sessions.turn + 1, updated_at = now()"
        " RETURNING turn",
        (tenant, session, collection_id, shape, list(document_keys)),
    ).fetchone()
    assert row is not None
    turn = int(row[0])
    if turn == 1:
        conn.execute(
            "DELETE FROM unidb.context_sessions WHERE (tenant, session) IN ("
            " SELECT tenant, session FROM unidb.context_sessions"
            " WHERE tenant = %s AND session <> %s"
            " ORDER BY updated_at DESC, session DESC OFFSET %s)",
            (tenant, session, max_per_tenant - 1),
        )
    return turn
