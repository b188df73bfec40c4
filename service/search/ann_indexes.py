"""FAISS ANN indexes of this process: built (as jobs), served from atomic snapshots that a
follower keeps current.

A build reads the collection's vectors in one REPEATABLE READ snapshot (binary COPY, one
chunk in memory at a time); that snapshot's xmin is the index's watermark. Writes that land
during or after the build are not lost: the follower applies the outbox to each served
snapshot's live segment every pass (`unidb.indexing.live_segment`), and a query merges from
Postgres only what committed after that pass. When a build swaps in a newer snapshot, the
follower brings it level (the live segment's entries the new snapshot lacks carry over)
before it serves, so queries never pause and never see an older state.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from psycopg_pool import ConnectionPool, PoolClosed

from unidb.indexing import outbox, snapshots
from unidb.indexing.faiss_index import Builder, Plan, prepare
from unidb.indexing.live_segment import Live
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
    live: Live

    @property
    def watermark(self) -> int:
        """Every change below this is in the snapshot or its live segment."""
        return self.live.watermark


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


class TooManyChanges(Exception):
    """More changed documents than a live segment may hold."""


class AnnIndexes:
    """Loaded snapshots by collection, each with its live segment; a newer snapshot is
    loaded when a build swaps one in."""

    def __init__(
        self, root: Path, horizon: outbox.Horizon | None = None, *, max_live: int = 50_000
    ) -> None:
        self.root = root
        self.horizon = horizon or outbox.Horizon()
        # the least a live segment may hold (`live_bound`): past its bound the segment stops,
        # queries fall back to pgvector as for any delta past UNIDB_ANN_MAX_DELTA, and a
        # rebuild takes over
        self.max_live = max_live
        self._too_many: set[int] = set()  # warned of once
        self._served: dict[int, Served] = {}
        self._seen: dict[int, tuple[int, int, int]] = {}  # the manifest's inode, mtime, size
        self._newer: set[int] = set()  # a newer snapshot on disk, for the follower to load
        self._pruned_past: set[int] = set()  # warned of once
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Connection] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # a newer snapshot to load: no need to wait a pass
        self._thread: threading.Thread | None = None

    def path(self, collection_id: int) -> Path:
        return self.root / f"c{collection_id}" / "ann"

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int, int] | None:
        try:
            stamp = os.stat(path / snapshots.MANIFEST)
        except FileNotFoundError:
            return None
        return (stamp.st_ino, stamp.st_mtime_ns, stamp.st_size)

    def get(self, collection_id: int) -> Served | None:
        """The collection's snapshot, loaded once; a query pays one ``stat`` of its manifest
        (a new snapshot replaces the manifest file, so it has a new inode and mtime). None
        when there is none, or when the outbox is pruned past its watermark: the changes it
        lacks are gone, so pgvector answers until a build replaces it.

        A newer snapshot than the one served is loaded here only when no follower runs;
        with one, it loads it and brings it level first, and the one served answers (exact
        as ever) until then."""
        seen = self._stamp(self.path(collection_id))
        if seen is None:
            return None
        with self._lock:
            served = self._served.get(collection_id)
            if served is not None and self._seen.get(collection_id) == seen:
                return self._unless_pruned(collection_id, served)
            if served is not None and self._thread is not None:
                self._newer.add(collection_id)
                self._wake.set()
                return self._unless_pruned(collection_id, served)
        manifest = snapshots.read_manifest(self.path(collection_id))
        if manifest is None:
            return None
        if served is None or served.manifest != manifest:
            served = self._loaded(collection_id, manifest)
        with self._lock:
            current = self._served.get(collection_id)
            if current is None or self._thread is None:
                self._served[collection_id] = served
                self._seen[collection_id] = seen
            else:  # the follower installed one meanwhile, brought level: keep it
                served = current
        return self._unless_pruned(collection_id, served)

    def _loaded(self, collection_id: int, manifest: snapshots.Manifest) -> Served:
        index = snapshots.load(self.path(collection_id), manifest)
        return Served(index, manifest, Live(manifest.watermark))

    def _unless_pruned(self, collection_id: int, served: Served) -> Served | None:
        pruned = self.horizon.value
        if pruned is None or served.watermark >= pruned:
            return served
        if collection_id not in self._pruned_past:
            self._pruned_past.add(collection_id)
            log.warning(
                "collection %d: its FAISS snapshot holds changes below %d and the outbox is "
                "pruned below %d; not served until a build replaces it",
                collection_id,
                served.watermark,
                pruned,
            )
        return None

    def start(self, pool: ConnectionPool[Connection], interval_s: float) -> None:
        """Follow the outbox: every ``interval_s``, apply it to the served snapshots' live
        segments, and load the newer snapshots builds swapped in."""
        self._pool = pool
        self._thread = threading.Thread(
            target=self._follow, args=(interval_s,), name="unidb-ann-follower", daemon=True
        )
        self._thread.start()

    def _follow(self, interval_s: float) -> None:
        while True:
            self._wake.wait(interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                assert self._pool is not None
                with self._pool.connection() as conn:
                    self.follow_once(conn)
            except PoolClosed:
                return  # an engine never closed, its pool finalized at exit
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("FAISS follower pass failed; retrying")

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def follow_once(self, conn: Connection) -> None:
        """One pass: load the newer snapshots (a build swapped one in, whether a query saw
        it or not), then apply the outbox up to the safe watermark to every served
        snapshot's live segment. One collection's failure stops only its own segment."""
        with self._lock:
            newer, self._newer = self._newer, set()
            served = dict(self._served)
            seen = dict(self._seen)
        for collection_id in served:
            stamp = self._stamp(self.path(collection_id))
            if stamp is None:  # dropped (here or by another process): its folder is gone
                self.drop(collection_id)
            elif stamp != seen.get(collection_id):
                newer.add(collection_id)
        upto = outbox.safe_watermark(conn)
        for collection_id in sorted(newer):
            try:
                self._load_newer(conn, collection_id, upto)
            except Exception:
                log.exception("collection %d: could not load its new FAISS snapshot; "
                              "serving the one before", collection_id)  # fmt: skip
        with self._lock:
            served = dict(self._served)
        if not served:
            return
        floor = min(s.watermark for s in served.values())
        changed: set[int] = set()
        if floor < upto:
            changed = outbox.changed_collections(conn, since=floor, upto=upto, among=list(served))
        updated: dict[int, Served | None] = {}
        stuck: set[int] = set()
        for collection_id in sorted(changed):
            if collection_id in self._too_many:  # waits for its rebuild
                stuck.add(collection_id)
                continue
            try:
                after = self._applied(conn, collection_id, served[collection_id], upto)
            except TooManyChanges as exc:
                if collection_id not in self._too_many:
                    self._too_many.add(collection_id)
                    log.warning("collection %d: %s; its live segment waits for the rebuild "
                                "this queues", collection_id, exc)  # fmt: skip
                stuck.add(collection_id)
                continue
            except Exception:
                log.exception("collection %d: FAISS follower pass failed; retrying",
                              collection_id)  # fmt: skip
                stuck.add(collection_id)
                continue
            updated[collection_id] = after
        # read after the changes: a prune that passed a watermark before they were read shows
        # here, and no segment below it may advance
        pruned = self.horizon.read(conn, wait_for_prune=False)
        with self._lock:
            for collection_id, before in served.items():
                if collection_id in stuck:
                    continue
                if self._served.get(collection_id) is not before or before.watermark < pruned:
                    continue  # dropped or reloaded meanwhile; or lost changes to a prune
                after = updated.get(collection_id, before)
                if after is None:  # the collection was dropped
                    self._served.pop(collection_id, None)
                    self._seen.pop(collection_id, None)
                elif after is before:
                    self._served[collection_id] = replace(before, live=before.live.advanced(upto))
                else:
                    self._served[collection_id] = after

    def _applied(
        self, conn: Connection, collection_id: int, served: Served, upto: int
    ) -> Served | None:
        """``served`` with the outbox below ``upto`` applied to its live segment; None when
        the collection was dropped. Raises TooManyChanges past ``max_live``."""
        changes = outbox.read_changes(conn, collection_id, since=served.watermark, upto=upto)
        if any(change.op == "drop" for change in changes):
            return None
        touched = np.fromiter(
            {c.document_key for c in changes if c.document_key is not None}, dtype=np.int64
        )
        bound = self.live_bound(served)
        if served.live.vectors + len(touched) > bound:
            raise TooManyChanges(
                f"{len(touched)} documents changed in one pass, on top of the "
                f"{served.live.vectors} its live segment holds, pass its bound of {bound} "
                "(half the snapshot's vectors, at least UNIDB_ANN_MAX_DELTA)"
            )
        keys, ready = self._current_vectors(conn, collection_id, served, touched)
        if served.live.vectors + len(keys) > bound:  # a chunked document has many vectors
            raise TooManyChanges(
                f"{len(keys)} vectors changed in one pass, on top of the "
                f"{served.live.vectors} its live segment holds, pass its bound of {bound}"
            )
        # building the pieces is CPU work: no snapshot held open meanwhile (it would hold
        # back outbox retention and vacuum)
        conn.commit()
        live = served.live.applied(upto, touched, keys, ready, served.manifest.metric)
        return replace(served, live=live)

    def _current_vectors(
        self, conn: Connection, collection_id: int, served: Served, touched: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The current vectors (prepared) of the ``touched`` documents that have one."""
        dim, metric = served.manifest.dim, served.manifest.metric
        if not len(touched):
            return np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)
        parts = list(stream_vectors(conn, collection_id, dim, chunk_rows=_CHUNK_ROWS, keys=touched))
        if not parts:
            return np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)
        keys = np.concatenate([k for k, _ in parts])
        vectors = np.concatenate([v for _, v in parts])
        return keys, prepare(vectors, metric)

    def _load_newer(self, conn: Connection, collection_id: int, upto: int) -> None:
        """Load the collection's snapshot on disk and bring it level with the one served:
        the served live segment's entries for documents changed since the new snapshot's
        watermark carry over, and the outbox up to ``upto`` is applied."""
        seen = self._stamp(self.path(collection_id))
        manifest = snapshots.read_manifest(self.path(collection_id))
        with self._lock:
            before = self._served.get(collection_id)
        if seen is None or manifest is None or before is None:
            return
        if before.manifest == manifest or manifest.watermark < (self.horizon.value or 0):
            # the same one; or one already pruned past, which a rebuild replaces: the one
            # served answers meanwhile, or pgvector if it is pruned past too
            with self._lock:
                if self._served.get(collection_id) is before:
                    self._seen[collection_id] = seen
            return
        loaded = self._loaded(collection_id, manifest)
        # builds of one collection are serialised, so a newer snapshot's watermark is at or
        # above the old one's; one that is not (a restored directory) starts afresh
        if before.watermark >= manifest.watermark >= before.manifest.watermark:
            touched = {
                c.document_key
                for c in outbox.read_changes(
                    conn, collection_id, since=manifest.watermark, upto=before.watermark
                )
                if c.document_key is not None
            }
            loaded = replace(loaded, live=before.live.rebased(np.fromiter(touched, dtype=np.int64)))
        level = (
            self._applied(conn, collection_id, loaded, upto) if loaded.watermark < upto else loaded
        )
        if level is None or manifest.watermark < self.horizon.read(conn, wait_for_prune=False):
            return  # dropped, or pruned past meanwhile: the next query or pass looks again
        with self._lock:
            if self._served.get(collection_id) is before:
                self._served[collection_id] = level
                self._seen[collection_id] = seen
        self._too_many.discard(collection_id)
        log.info(
            "collection %d: serving its snapshot of job %s (%d vectors), %d in the live "
            "segment", collection_id, manifest.job_id, manifest.count, level.live.vectors,
        )  # fmt: skip

    def live_bound(self, served: Served) -> int:
        """Vectors a snapshot's live segment may hold: half as many as the snapshot, and at
        least ``max_live``. Rebuilds start far below it (UNIDB_ANN_REBUILD_FRACTION); it
        stops a bulk load into a small snapshot from turning into one huge piece."""
        return max(self.max_live, served.manifest.count // 2)

    def waits_for_rebuild(self, collection_id: int) -> bool:
        """Whether the collection's live segment stopped, too many changes behind."""
        return collection_id in self._too_many

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
        with self._lock:
            served = self._served.get(collection_id)
        live = served.live if served is not None and served.manifest == manifest else None
        return AnnStatus.model_validate(
            {
                "kind": manifest.kind,
                "device": manifest.device,
                "vectors": manifest.count,
                "watermark": manifest.watermark,
                "lag": outbox.lag(conn, collection_id, since=manifest.watermark),
                "live_vectors": live.vectors if live is not None else 0,
                "live_watermark": live.watermark if live is not None else None,
                "built_at": datetime.fromtimestamp(manifest.built_at, UTC),
                "job_id": manifest.job_id,
            }
        )

    def drop(self, collection_id: int) -> None:
        with self._lock:
            self._served.pop(collection_id, None)
            self._seen.pop(collection_id, None)
            self._newer.discard(collection_id)

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
