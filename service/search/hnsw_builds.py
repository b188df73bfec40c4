"""ANN for a collection that has grown large: a FAISS build queued (the default), and a
pgvector HNSW index built in the background for a collection that opted into one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from unidb.indexing.pg import Executor
from unidb.service.config import Settings
from unidb.service.db.pool import service_connection
from unidb.service.search.hnsw import build_hnsw
from unidb.service.store import catalog

log = logging.getLogger("unidb.hnsw")


# how often a query may look at a collection's size to decide on an HNSW build
_INDEX_CHECK_INTERVAL_S = 30.0
# HNSW builds are far faster when the graph fits in maintenance_work_mem
_BUILD_MAINTENANCE_WORK_MEM = "512MB"


class HnswBuilds:
    """This process's HNSW builds, one thread a collection, over their own connections."""

    def __init__(self, dsn: str, settings: Settings) -> None:
        self.dsn = dsn
        self.settings = settings
        self._index_checked_at: dict[int, float] = {}
        self._index_builds: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        # told the collection's id when its index has been built here
        self.on_built: Callable[[int], None] = lambda collection_id: None
        # asked to queue a FAISS build of a collection without a snapshot
        self.wants_snapshot: Callable[[catalog.CollectionRow], None] = lambda row: None

    def join(self, collection_id: int) -> None:
        """Wait for the collection's build, if one runs (dropping it meanwhile would
        deadlock with the build)."""
        with self._lock:
            build = self._index_builds.get(collection_id)
        if build is not None:
            build.join()

    def wait(self) -> None:
        """Block until the background HNSW builds started so far have finished."""
        with self._lock:
            builds = list(self._index_builds.values())
        for thread in builds:
            thread.join()

    def build(self, row: catalog.CollectionRow) -> bool:
        with service_connection(self.dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT set_config('maintenance_work_mem', %s, false)",
                (_BUILD_MAINTENANCE_WORK_MEM,),
            )
            built = build_hnsw(
                conn,
                row,
                m=self.settings.hnsw_m,
                ef_construction=self.settings.hnsw_ef_construction,
            )
        if built:
            self.on_built(row.id)
        return built

    def schedule(self, conn: Executor, row: catalog.CollectionRow) -> None:
        """Called by a query that no FAISS snapshot served (at most once per collection
        every 30 s): count the collection's vectors and, past the thresholds, queue its
        FAISS build and, if it opted in, build its pgvector HNSW index."""
        wants_hnsw = row.pgvector_hnsw and row.hnsw_valid is None
        if self.settings.ann_auto_build_rows == 0 and not wants_hnsw:
            return
        now = time.monotonic()
        with self._lock:
            if row.id in self._index_builds:
                return
            if now - self._index_checked_at.get(row.id, -1e9) < _INDEX_CHECK_INTERVAL_S:
                return
            self._index_checked_at[row.id] = now
        count = conn.execute(
            "SELECT count(*) FROM unidb.chunks WHERE collection_id = %s AND embedding IS NOT NULL",
            (row.id,),
        ).fetchone()
        if count is None:
            return
        auto = self.settings.ann_auto_build_rows
        if auto > 0 and count[0] >= auto:
            self.wants_snapshot(row)
        if not wants_hnsw or count[0] < self.settings.hnsw_min_rows:
            return

        def run() -> None:
            try:
                self.build(row)
            except psycopg.Error:
                log.exception("HNSW build for collection %s failed", row.name)
            finally:
                with self._lock:
                    self._index_builds.pop(row.id, None)

        thread = threading.Thread(target=run, name=f"hnsw-{row.name}", daemon=True)
        with self._lock:
            self._index_builds[row.id] = thread
        log.info("collection %s holds %d vectors: building its HNSW index", row.name, count[0])
        thread.start()
