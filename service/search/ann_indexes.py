"""FAISS ANN indexes of this process: built (as jobs), served from atomic snapshots.

A build reads the collection's vectors in one REPEATABLE READ snapshot (binary COPY, one
chunk in memory at a time); that snapshot's xmin is the index's watermark. Writes that land
during or after the build are not lost: queries merge every document changed past the
watermark straight from Postgres and mask its stale index entry, until the next build.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from unidb.indexing import outbox, snapshots
from unidb.indexing.faiss_index import Builder, Plan
from unidb.indexing.pg import Connection
from unidb.indexing.vectors import count_vectors, stream_vectors
from unidb.models import AnnStatus
from unidb.service.store import catalog, jobs

log = logging.getLogger("unidb.ann")


_CHUNK_ROWS = 10_000


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class Served:
    index: Any
    manifest: snapshots.Manifest


@dataclass(frozen=True)
class BuildTask:
    job_id: int
    collection: catalog.CollectionRow
    plan: Plan


def progress_reporter(
    pool: ConnectionPool[Connection], job_id: int, owner: str
) -> Callable[[float], None]:
    """Records a job's progress (and heartbeat); raises `Cancelled` when it should stop."""

    def report(progress: float) -> None:
        # its own short transaction, committed at once, beside a build's long read
        with pool.connection() as conn:
            if jobs.report(conn, job_id, progress, owner):
                raise Cancelled

    return report


class AnnIndexes:
    """Loaded snapshots by collection, reloaded when a new one is swapped in."""

    def __init__(self, root: Path, horizon: outbox.Horizon | None = None) -> None:
        self.root = root
        self.horizon = horizon or outbox.Horizon()
        self._served: dict[int, Served] = {}
        self._seen: dict[int, tuple[int, int, int]] = {}  # the manifest's inode, mtime, size
        self._pruned_past: set[int] = set()  # warned of once
        self._lock = threading.Lock()

    def path(self, collection_id: int) -> Path:
        return self.root / f"c{collection_id}" / "ann"

    def get(self, collection_id: int) -> Served | None:
        """The collection's snapshot, loaded once; a query pays one ``stat`` of its manifest
        (a new snapshot replaces the manifest file, so it has a new inode and mtime). None
        when there is none, or when the outbox is pruned past its watermark: the changes it
        lacks are gone, so pgvector answers until a build replaces it."""
        try:
            stamp = os.stat(self.path(collection_id) / snapshots.MANIFEST)
        except FileNotFoundError:
            return None
        seen = (stamp.st_ino, stamp.st_mtime_ns, stamp.st_size)
        with self._lock:
            served = self._served.get(collection_id)
            if served is not None and self._seen.get(collection_id) == seen:
                return self._unless_pruned(collection_id, served)
        manifest = snapshots.read_manifest(self.path(collection_id))
        if manifest is None:
            return None
        if served is None or served.manifest != manifest:
            served = Served(snapshots.load(self.path(collection_id), manifest), manifest)
        with self._lock:
            self._served[collection_id] = served
            self._seen[collection_id] = seen
        return self._unless_pruned(collection_id, served)

    def _unless_pruned(self, collection_id: int, served: Served) -> Served | None:
        pruned = self.horizon.value
        if pruned is None or served.manifest.watermark >= pruned:
            return served
        if collection_id not in self._pruned_past:
            self._pruned_past.add(collection_id)
            log.warning(
                "collection %d: its FAISS snapshot holds changes below %d and the outbox is "
                "pruned below %d; not served until a build replaces it",
                collection_id,
                served.manifest.watermark,
                pruned,
            )
        return None

    def collections(self) -> list[int]:
        """The collections with a snapshot in this data directory."""
        found = []
        for manifest in self.root.glob(f"c*/ann/{snapshots.MANIFEST}"):
            name = manifest.parent.parent.name
            if name[1:].isdigit():
                found.append(int(name[1:]))
        return sorted(found)

    def floor(self, collection_ids: set[int]) -> int | None:
        """The lowest watermark among these collections' snapshots on disk: what they need
        the outbox to keep. None when there is none."""
        marks = []
        pruned = self.horizon.value or 0
        for collection_id in collection_ids:
            manifest = snapshots.read_manifest(self.path(collection_id))
            # one below the horizon is not served and waits for its rebuild: holding the
            # outbox for it would stop retention for every collection
            if manifest is not None and manifest.watermark >= pruned:
                marks.append(manifest.watermark)
        return min(marks) if marks else None

    def status(self, conn: Connection, collection_id: int) -> AnnStatus | None:
        manifest = snapshots.read_manifest(self.path(collection_id))
        if manifest is None:
            return None
        return AnnStatus.model_validate(
            {
                "kind": manifest.kind,
                "device": manifest.device,
                "vectors": manifest.count,
                "watermark": manifest.watermark,
                "lag": outbox.lag(conn, collection_id, since=manifest.watermark),
                "built_at": datetime.fromtimestamp(manifest.built_at, UTC),
                "job_id": manifest.job_id,
            }
        )

    def drop(self, collection_id: int) -> None:
        with self._lock:
            self._served.pop(collection_id, None)
            self._seen.pop(collection_id, None)

    def build(
        self, pool: ConnectionPool[Connection], task: BuildTask, owner: str
    ) -> dict[str, Any]:
        """Build and swap in a snapshot; returns the job's stats. Raises `Cancelled`."""
        row, plan = task.collection, task.plan
        began = time.monotonic()
        root = self.path(row.id)
        if root.exists():
            snapshots.clean_partial(root)

        report = progress_reporter(pool, task.job_id, owner)
        with pool.connection() as reader:
            reader.commit()
            with reader.transaction():
                reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                watermark = outbox.safe_watermark(reader)
                total = count_vectors(reader, row.id)
                builder = Builder(row.dim, row.metric, plan, total)
                done = 0
                for keys, vectors in stream_vectors(
                    reader, row.id, row.dim, chunk_rows=_CHUNK_ROWS
                ):
                    builder.add(keys, vectors)
                    done += len(keys)
                    report(0.95 * done / max(total, 1))
                # the snapshot stays open until the manifest is on disk: until then it is
                # what keeps the outbox from being pruned past the watermark
                index = builder.finish()
                report(0.97)
                return self.swap_in(
                    pool,
                    row,
                    index,
                    plan,
                    job_id=task.job_id,
                    watermark=watermark,
                    search=builder.search_params,
                    seconds=time.monotonic() - began,
                )

    def swap_in(
        self,
        pool: ConnectionPool[Connection],
        row: catalog.CollectionRow,
        index: Any,
        plan: Plan,
        *,
        job_id: int,
        watermark: int,
        search: dict[str, Any],
        seconds: float,
    ) -> dict[str, Any]:
        """Make a finished index the collection's snapshot; returns the job's stats.
        Raises `Cancelled` when the collection was dropped meanwhile."""
        root = self.path(row.id)
        manifest = snapshots.Manifest(
            file=f"index-{job_id}.faiss",
            watermark=watermark,
            count=int(index.ntotal),
            kind=plan.kind,
            device=plan.device,
            metric=row.metric,
            dim=row.dim,
            built_at=time.time(),
            job_id=job_id,
            search=search,
        )
        snapshots.write(root, index, manifest)
        with pool.connection() as conn:
            dropped = (
                conn.execute("SELECT 1 FROM unidb.collections WHERE id = %s", (row.id,)).fetchone()
                is None
            )
        if dropped:  # ids are never reused: nothing else can own this folder
            shutil.rmtree(root, ignore_errors=True)
            raise Cancelled
        log.info(
            "collection %s: %s index of %d vectors built on %s in %.1f s",
            row.name,
            plan.kind,
            index.ntotal,
            plan.device,
            seconds,
        )
        return {
            "vectors": int(index.ntotal),
            "kind": plan.kind,
            "device": plan.device,
            "note": plan.note,
            "seconds": round(seconds, 3),
            "vectors_per_s": round(index.ntotal / seconds) if seconds > 0 else None,
            "watermark": watermark,
            "params": plan.params,
            "threads": os.cpu_count(),
        }


# advisory lock key space for collection builds: (BUILD_LOCK, collection id)
