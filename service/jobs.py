"""Jobs in `unidb.jobs`: queued, running (with a heartbeat), done, failed or cancelled.

Library code: every function takes the caller's connection and never commits.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from unidb.errors import Conflict, NotFound
from unidb.models import Job

Connection = psycopg.Connection[Any]

_COLUMNS = (
    "id, collection, kind, status, progress, error, params, stats, created_at, started_at,"
    " finished_at"
)

_FIELDS = [column.strip() for column in _COLUMNS.split(",")]


def _job(row: tuple[Any, ...]) -> Job:
    return Job.model_validate(dict(zip(_FIELDS, row, strict=True)))


def create(
    conn: Connection, *, collection_id: int, collection: str, kind: str, params: dict[str, Any]
) -> Job:
    row = conn.execute(
        f"INSERT INTO unidb.jobs (collection_id, collection, kind, params, heartbeat_at)"  # noqa: S608
        f" VALUES (%s, %s, %s, %s, now()) RETURNING {_COLUMNS}",
        (collection_id, collection, kind, Jsonb(params)),
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


def start(conn: Connection, job_id: int) -> bool:
    """queued → running; False when it was cancelled meanwhile."""
    cursor = conn.execute(
        "UPDATE unidb.jobs SET status = 'running', started_at = now(), heartbeat_at = now()"
        " WHERE id = %s AND status = 'queued'",
        (job_id,),
    )
    return cursor.rowcount == 1


def report(conn: Connection, job_id: int, progress: float) -> bool:
    """Record progress (and that the process lives); True when a cancel was asked for."""
    row = conn.execute(
        "UPDATE unidb.jobs SET progress = %s, heartbeat_at = now() WHERE id = %s"
        " RETURNING cancel_requested",
        (min(max(progress, 0.0), 1.0), job_id),
    ).fetchone()
    return bool(row and row[0])


def finish(
    conn: Connection,
    job_id: int,
    status: str,
    *,
    error: str | None = None,
    stats: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "UPDATE unidb.jobs SET status = %s, error = %s, stats = stats || %s,"
        " progress = CASE WHEN %s = 'done' THEN 1 ELSE progress END,"
        " finished_at = now(), heartbeat_at = now() WHERE id = %s",
        (status, error, Jsonb(stats or {}), status, job_id),
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


def fail_orphans(conn: Connection, *, silent_for_s: float) -> int:
    """Fail jobs whose process stopped beating: none stays "running" forever."""
    cursor = conn.execute(
        "UPDATE unidb.jobs SET status = 'failed', finished_at = now(),"
        " error = 'the process running this job stopped before it finished'"
        " WHERE status IN ('queued', 'running')"
        " AND heartbeat_at < now() - make_interval(secs => %s)",
        (silent_for_s,),
    )
    return cursor.rowcount
