"""Jobs in `unidb.jobs`: queued, running (with a heartbeat), done, failed or cancelled.

Each job has an owner, the service process that beats its heartbeat. When the owner goes
silent, another process claims the job (`claim_orphans`) and runs it again.

Library code: every function takes the caller's connection and never commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from unidb.errors import Conflict, NotFound
from unidb.indexing.pg import Connection
from unidb.models import Job

_COLUMNS = (
    "id, collection, kind, status, progress, error, params, stats, created_at, started_at,"
    " finished_at, owner"
)

_FIELDS = [column.strip() for column in _COLUMNS.split(",")]


def _job(row: tuple[Any, ...]) -> Job:
    return Job.model_validate(dict(zip(_FIELDS, row, strict=True)))


def create(
    conn: Connection,
    *,
    collection_id: int,
    collection: str,
    kind: str,
    params: dict[str, Any],
    owner: str,
) -> Job:
    row = conn.execute(
        f"INSERT INTO unidb.jobs (collection_id, collection, kind, params, heartbeat_at, owner)"  # noqa: S608
        f" VALUES (%s, %s, %s, %s, now(), %s) RETURNING {_COLUMNS}",
        (collection_id, collection, kind, Jsonb(params), owner),
    ).fetchone()
    assert row is not None
    return _job(row)


def get(conn: Connection, job_id: int) -> Job:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM unidb.jobs WHERE id = %s",  # noqa: S608
        (job_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no job {job_id}", field="id")
    return _job(row)


def start(conn: Connection, job_id: int, owner: str) -> bool:
    """queued → running; False when it was cancelled (or taken over) meanwhile."""
    cursor = conn.execute(
        "UPDATE unidb.jobs SET status = 'running', started_at = coalesce(started_at, now()),"
        " heartbeat_at = now() WHERE id = %s AND status = 'queued' AND owner = %s",
        (job_id, owner),
    )
    return cursor.rowcount == 1


def report(conn: Connection, job_id: int, progress: float, owner: str) -> bool:
    """Record progress (and that the process lives); True when the job should stop: a
    cancel was asked for, or another process took it over."""
    row = conn.execute(
        "UPDATE unidb.jobs SET progress = %s, heartbeat_at = now() WHERE id = %s AND owner = %s"
        " RETURNING cancel_requested",
        (min(max(progress, 0.0), 1.0), job_id, owner),
    ).fetchone()
    return row is None or bool(row[0])


def beat(conn: Connection, job_ids: list[int], owner: str) -> None:
    conn.execute(
        "UPDATE unidb.jobs SET heartbeat_at = now() WHERE id = ANY(%s) AND owner = %s",
        (job_ids, owner),
    )


def finish(
    conn: Connection,
    job_id: int,
    status: str,
    *,
    owner: str,
    error: str | None = None,
    stats: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "UPDATE unidb.jobs SET status = %s, error = %s, stats = stats || %s,"
        " progress = CASE WHEN %s = 'done' THEN 1 ELSE progress END,"
        " finished_at = now(), heartbeat_at = now() WHERE id = %s AND owner = %s",
        (status, error, Jsonb(stats or {}), status, job_id, owner),
    )


# a queued job ends at once; a running one sees cancel_requested at its next step
_CANCEL = (
    "UPDATE unidb.jobs SET cancel_requested = true,"
    " status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,"
    " finished_at = CASE WHEN status = 'queued' THEN now() ELSE finished_at END"
)


def cancel(conn: Connection, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one stops at its next step."""
    job = get(conn, job_id)
    if job.status in ("done", "failed", "cancelled"):
        raise Conflict(f"job {job_id} already ended ({job.status})", field="id")
    conn.execute(
        _CANCEL + " WHERE id = %s",
        (job_id,),
    )
    return get(conn, job_id)


def cancel_for_collection(conn: Connection, collection_id: int) -> None:
    """Stop every job of a collection that is being dropped."""
    conn.execute(
        _CANCEL + " WHERE collection_id = %s AND status IN ('queued', 'running')",
        (collection_id,),
    )


@dataclass(frozen=True, slots=True)
class Orphan:
    id: int
    collection_id: int
    params: dict[str, Any]
    previous_owner: str | None


def claim_orphans(
    conn: Connection, *, kind: str, owner: str, silent_for_s: float, limit: int = 8
) -> list[Orphan]:
    """Take over ``kind`` jobs whose owner has not beaten their heartbeat for
    ``silent_for_s``: they become this owner's, queued again at progress 0.

    Rows another process is claiming at the same moment are skipped, not waited for, so
    two live processes never claim one job. A job whose cancel was asked for, or whose
    collection is gone, is cancelled instead."""
    conn.execute(
        "UPDATE unidb.jobs SET status = 'cancelled', cancel_requested = true,"
        " finished_at = now() WHERE status IN ('queued', 'running')"
        " AND heartbeat_at < now() - make_interval(secs => %s) AND (cancel_requested"
        " OR NOT EXISTS (SELECT 1 FROM unidb.collections c WHERE c.id = collection_id))",
        (silent_for_s,),
    )
    rows = conn.execute(
        "WITH silent AS (SELECT id, owner FROM unidb.jobs WHERE kind = %s"
        "  AND status IN ('queued', 'running')"
        "  AND heartbeat_at < now() - make_interval(secs => %s)"
        "  ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
        " UPDATE unidb.jobs j SET owner = %s, status = 'queued', progress = 0,"
        "  heartbeat_at = now(), stats = j.stats || jsonb_build_object('takeovers',"
        "   coalesce((j.stats ->> 'takeovers')::int, 0) + 1)"
        " FROM silent WHERE j.id = silent.id"
        " RETURNING j.id, j.collection_id, j.params, silent.owner",
        (kind, silent_for_s, limit, owner),
    ).fetchall()
    return [Orphan(*row) for row in rows]
