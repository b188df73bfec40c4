"""Build jobs: the job row of an index build, its progress and heartbeat, and the runner
that runs this process's builds one at a time and takes over silent processes' jobs."""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from psycopg_pool import ConnectionPool, PoolClosed

from unidb.errors import InvalidInput, NotFound
from unidb.indexing import outbox, snapshots
from unidb.indexing.faiss_index import BuildRefused, Plan, plan
from unidb.indexing.pg import Connection
from unidb.indexing.vectors import count_vectors
from unidb.models import IndexBuildRequest, Job
from unidb.service.search.ann_indexes import AnnIndexes, BuildTask, Cancelled
from unidb.service.store import catalog, jobs

log = logging.getLogger("unidb.ann")


HEARTBEAT_S = 5.0
INDEX_BUILD = "index_build"


def create_build_job(
    conn: Connection,
    row: catalog.CollectionRow,
    request: IndexBuildRequest,
    chosen: Plan,
    *,
    owner: str,
    **extra: Any,
) -> Job:
    """The job row of a build of ``row`` as ``request`` asked and ``chosen`` plans it."""
    return jobs.create(
        conn,
        collection_id=row.id,
        collection=row.name,
        kind=INDEX_BUILD,
        params={**request.model_dump(mode="json"), "planned": chosen.kind,
                "planned_device": chosen.device, "note": chosen.note, **extra},
        owner=owner,
    )  # fmt: skip


BUILD_LOCK = 0x756E6964
REBUILD_LOCK = BUILD_LOCK + 1  # held while deciding whether to queue a rebuild
LOCK_POLL_S = 0.5


def plan_build(conn: Connection, row: catalog.CollectionRow, request: IndexBuildRequest) -> Plan:
    """What this process would build for the request now; raises `BuildRefused`."""
    count = count_vectors(conn, row.id)
    return plan(request.kind, request.device, count, request.params.model_dump())


def process_name() -> str:
    """This process among all service processes on one Postgres: host, pid, and a nonce
    (containers all run as pid 1)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class JobRunner:
    """Runs this process's build jobs one at a time, beating their heartbeats, and takes
    over the jobs of service processes that went silent."""

    def __init__(
        self,
        pool: ConnectionPool[Connection],
        indexes: AnnIndexes,
        *,
        orphan_after_s: float,
        take_over: bool = True,
        rebuild_after: Callable[[int], int] | None = None,
    ) -> None:
        self.pool = pool
        self.indexes = indexes
        self.orphan_after_s = orphan_after_s
        self.take_over = take_over
        # changes since a snapshot's watermark, given its vector count, past which it is
        # rebuilt (None: never); a serving process checks at each heartbeat
        self.rebuild_after = rebuild_after
        self.owner = process_name()
        self._tasks: queue.Queue[BuildTask | None] = queue.Queue()
        self._mine: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="unidb-jobs", daemon=True)
        self._beater = threading.Thread(target=self._beat, name="unidb-job-beat", daemon=True)

    def start(self) -> None:
        self._worker.start()
        self._beater.start()

    def plan_build(
        self, conn: Connection, collection: str, request: IndexBuildRequest
    ) -> tuple[Job, BuildTask]:
        """The job row of a FAISS build of ``collection`` (written in ``conn``'s transaction)
        and the task to ``submit`` once that commits."""
        row = catalog.get(conn, collection)
        try:
            chosen = plan_build(conn, row, request)
        except BuildRefused as exc:
            raise InvalidInput(str(exc), field=exc.field) from exc
        job = create_build_job(conn, row, request, chosen, owner=self.owner)
        return job, BuildTask(job.id, row, chosen)

    def submit(self, task: BuildTask) -> None:
        with self._lock:
            self._mine.add(task.job_id)
        self._tasks.put(task)

    def idle(self) -> bool:
        with self._lock:
            return not self._mine

    def _beat(self) -> None:
        # the first sweep at once: a restarted process resumes its predecessor's jobs
        interval = 0.0
        while not self._stop.wait(interval):
            interval = min(HEARTBEAT_S, self.orphan_after_s / 3)
            with self._lock:
                mine = list(self._mine)
            try:
                if mine:
                    with self.pool.connection() as conn:
                        jobs.beat(conn, mine, self.owner)
                if self.take_over:
                    self.take_over_orphans()
                    self.rebuild_behind()
            except PoolClosed:
                return  # an engine never closed, its pool finalized at exit: nothing to beat
            except Exception:
                log.exception("job heartbeat failed; retrying")

    def take_over_orphans(self) -> list[int]:
        """Claim the build jobs of processes that stopped beating and queue them here."""
        with self.pool.connection() as conn:
            orphans = jobs.claim_orphans(
                conn, kind=INDEX_BUILD, owner=self.owner, silent_for_s=self.orphan_after_s
            )
        for orphan in orphans:
            log.warning(
                "taking over job %d (collection %d) from %s, which stopped beating",
                orphan.id,
                orphan.collection_id,
                orphan.previous_owner,
            )
            with self._lock:
                self._mine.add(orphan.id)
            try:
                task = self._task_for(orphan)
            except BuildRefused as exc:
                self._finish(orphan.id, "failed", error=f"taken over, then refused here: {exc}")
                continue
            except Exception as exc:
                log.exception("could not take over job %d", orphan.id)
                self._finish(orphan.id, "failed", error=f"{type(exc).__name__}: {exc}")
                continue
            self._tasks.put(task)
        return [orphan.id for orphan in orphans]

    def rebuild_behind(self) -> list[int]:
        """Queue a build of each snapshot in this data directory that has fallen
        ``rebuild_after`` changes behind the outbox, as its last build was asked for, unless
        a build of that collection is queued or running already (here or elsewhere). So a
        query's delta from Postgres stays bounded, and the snapshot releases the outbox it
        holds. Returns the jobs queued."""
        if self.rebuild_after is None:
            return []
        queued = []
        for collection_id in self.indexes.collections():
            manifest = snapshots.read_manifest(self.indexes.path(collection_id))
            if manifest is None:
                continue
            bound = self.rebuild_after(manifest.count)
            try:
                with self.pool.connection() as conn:
                    # below the pruned horizon it is not served at all: rebuild it whatever
                    # its lag says (the rows it lacks are gone)
                    pruned = manifest.watermark < self.indexes.horizon.known(conn)
                    stopped = self.indexes.waits_for_rebuild(collection_id)
                    behind = outbox.lag(conn, collection_id, since=manifest.watermark, upto=bound)
                    if behind < bound and not pruned and not stopped:
                        continue
                    task = self._rebuild_task(conn, collection_id, manifest)
            except Exception:  # one collection's trouble does not stop the others' rebuilds
                log.exception(
                    "collection %d: could not queue its snapshot's rebuild", collection_id
                )
                continue
            if task is not None:
                log.info(
                    "collection %d: its FAISS snapshot is %d changes behind; rebuilding it "
                    "(job %d)", collection_id, behind, task.job_id,
                )  # fmt: skip
                self.submit(task)
                queued.append(task.job_id)
        return queued

    def build_first(self, collection_id: int) -> int | None:
        """Queue a FAISS build of a collection that has no snapshot in this data directory,
        with the default plan, unless one is queued or running (here or elsewhere) or an
        automatic one failed or was cancelled before (a build asked for is still run);
        returns the job queued. Called once a collection grows past
        UNIDB_ANN_AUTO_BUILD_ROWS."""
        if self._stop.is_set() or snapshots.read_manifest(self.indexes.path(collection_id)):
            return None
        with self.pool.connection() as conn:
            tried = conn.execute(
                "SELECT 1 FROM unidb.jobs WHERE collection_id = %s AND kind = %s"
                " AND (params->>'auto')::boolean AND status IN ('failed', 'cancelled')",
                (collection_id, INDEX_BUILD),
            ).fetchone()
            if tried is not None:  # it failed or was cancelled: not again by itself
                return None
            task = self._rebuild_task(conn, collection_id, None)
        if task is None:
            return None
        log.info("collection %d: building its first FAISS snapshot (job %d)",
                 collection_id, task.job_id)  # fmt: skip
        self.submit(task)
        return task.job_id

    def _rebuild_task(
        self, conn: Connection, collection_id: int, manifest: snapshots.Manifest | None
    ) -> BuildTask | None:
        """The job (committed with ``conn``) and task of a rebuild (of the first build, with
        no manifest), or None if the collection is gone or a build of it is queued or
        running."""
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (REBUILD_LOCK, collection_id))
        found = conn.execute(
            "SELECT tenant, EXISTS (SELECT 1 FROM unidb.jobs j WHERE j.collection_id = c.id"
            "   AND j.kind = %s AND j.status IN ('queued', 'running'))"
            " FROM unidb.collections c WHERE c.id = %s",
            (INDEX_BUILD, collection_id),
        ).fetchone()
        if found is None or found[1]:
            return None
        # the job is the collection's tenant's, as if it had asked for it
        conn.execute("SELECT set_config('unidb.tenant', %s, true)", (found[0],))
        asked: dict[str, Any] = {"kind": manifest.kind} if manifest is not None else {}
        if manifest is not None and manifest.job_id is not None:
            try:
                previous = jobs.get(conn, manifest.job_id).params
            except NotFound:
                previous = {}
            asked.update({k: v for k, v in previous.items() if k in IndexBuildRequest.model_fields})
        row = catalog.get_by_id(conn, collection_id)
        request = IndexBuildRequest.model_validate(asked)
        try:
            chosen = plan_build(conn, row, request)
        except BuildRefused as exc:
            log.warning("collection %d: its snapshot cannot be rebuilt here: %s", row.id, exc)
            return None
        job = create_build_job(
            conn, row, request, chosen, owner=self.owner, rebuild=manifest is not None, auto=True
        )
        with self._lock:
            self._mine.add(job.id)
        return BuildTask(job.id, row, chosen)

    def _task_for(self, orphan: jobs.Orphan) -> BuildTask:
        request = IndexBuildRequest.model_validate(
            {k: v for k, v in orphan.params.items() if k in IndexBuildRequest.model_fields}
        )
        with self.pool.connection() as conn:
            row = catalog.get_by_id(conn, orphan.collection_id)
            return BuildTask(orphan.id, row, plan_build(conn, row, request))

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                self._run(task)
            finally:
                with self._lock:
                    self._mine.discard(task.job_id)

    @contextmanager
    def sole_builder(self, job_id: int, collection_id: int) -> Iterator[None]:
        """Hold the collection's build lock: one process at a time builds a collection's
        index. It is a session advisory lock, so a builder that dies (its connection
        closes) frees it; while another holds it this job waits, beating its heartbeat."""
        key = (BUILD_LOCK, collection_id)
        with self.pool.connection() as conn:
            waited = False
            while True:
                row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", key).fetchone()
                conn.commit()
                if row is not None and row[0]:
                    break
                if not waited:
                    log.info("job %d waits for another build of collection %d",
                             job_id, collection_id)  # fmt: skip
                    waited = True
                with self.pool.connection() as beat:
                    if jobs.report(beat, job_id, 0.0, self.owner):
                        raise Cancelled
                if self._stop.wait(LOCK_POLL_S):
                    raise Cancelled
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", key)
                conn.commit()

    def _run(self, task: BuildTask) -> None:
        self.run(
            task.job_id,
            task.collection.id,
            lambda: self.indexes.build(self.pool, task, self.owner),
        )

    def run(self, job_id: int, collection_id: int, build: Callable[[], dict[str, Any]]) -> None:
        """Run a queued build job of this process's in this thread: start it, hold the
        collection's build lock while ``build`` runs, and record how it ended (``build``
        returns the job's stats, raises `Cancelled` when told to stop)."""
        try:
            with self.pool.connection() as conn:
                if not jobs.start(conn, job_id, self.owner):
                    return  # cancelled while queued, or no longer this process's
            with self.sole_builder(job_id, collection_id):
                stats = build()
            status, error = "done", None
        except Cancelled:
            stats, status, error = {}, "cancelled", None
        except Exception as exc:
            log.exception("index build job %d failed", job_id)
            stats, status, error = {}, "failed", f"{type(exc).__name__}: {exc}"
        self._finish(job_id, status, error=error, stats=stats)

    def _finish(
        self,
        job_id: int,
        status: str,
        *,
        error: str | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        try:
            with self.pool.connection() as conn:
                jobs.finish(conn, job_id, status, owner=self.owner, error=error, stats=stats)
        except Exception:
            log.exception("could not record the end of job %d", job_id)
        with self._lock:
            self._mine.discard(job_id)

    def close(self) -> None:
        """Stop: builds in flight are cancelled at their next step, queued ones never start."""
        self._stop.set()
        with self._lock:
            mine = list(self._mine)
        if mine:
            try:
                with self.pool.connection() as conn:
                    conn.execute(
                        "UPDATE unidb.jobs SET cancel_requested = true"
                        " WHERE id = ANY(%s) AND owner = %s",
                        (mine, self.owner),
                    )
                    conn.execute(
                        "UPDATE unidb.jobs SET status = 'cancelled', finished_at = now()"
                        " WHERE id = ANY(%s) AND status = 'queued' AND owner = %s",
                        (mine, self.owner),
                    )
            except Exception:
                log.exception("could not cancel this process's jobs on shutdown")
        self._tasks.put(None)
        for thread in (self._worker, self._beater):
            if thread.is_alive():  # never started: nothing to wait for
                thread.join()
