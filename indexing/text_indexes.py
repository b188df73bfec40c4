"""The process's BM25 indexes, one per collection, and the tailer that keeps them current.

An idle collection costs a small object and nothing else. One tailer pass reads the safe
watermark and, in one query, which collections the outbox changed since the lowest
watermark; only those are caught up, by one bounded pool of workers shared by every
collection (each holding a tantivy writer just while it applies). Every other index's
watermark moves in memory, with no commit and no file written. An index's tantivy handle is
closed when it has not been used for ``idle_s`` or when more than ``open_indexes`` are open
(least recently used first); it reopens on next use.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from psycopg_pool import ConnectionPool

from unidb.indexing.bm25 import Bm25Index, IndexBusy
from unidb.indexing.outbox import Horizon, changed_collections, safe_watermark
from unidb.indexing.pg import Connection
from unidb.indexing.tailer import BelowHorizon, catch_up, rebuild

log = logging.getLogger("unidb.text_indexes")


class TextIndexes:
    """Opens indexes on first use, builds empty ones from Postgres, follows the outbox."""

    def __init__(
        self,
        root: Path,
        pool: ConnectionPool[Connection],
        *,
        interval_s: float,
        workers: int = 2,
        open_indexes: int = 16,
        idle_s: float = 30.0,
        horizon: Horizon | None = None,
    ) -> None:
        if workers < 1 or open_indexes < 1 or idle_s <= 0:
            raise ValueError("workers and open_indexes must be >= 1 and idle_s > 0")
        self.root = root
        self.pool = pool
        self.interval_s = interval_s
        self.idle_s = idle_s
        self.open_indexes = open_indexes
        self.horizon = horizon or Horizon()
        self._indexes: dict[int, Bm25Index] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._registry_lock = threading.Lock()
        self._followed: set[int] = set()
        self._used: OrderedDict[int, float] = OrderedDict()  # least recently used first
        self._seen: set[int] = set()  # collections the tailer has looked at
        self._scanned_upto: int | None = None  # the tailer has looked at every change below
        # one writer per worker at most, whoever writes: the tailer's pool or a first query
        self._writers = threading.BoundedSemaphore(workers)
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unidb-bm25")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def path(self, collection_id: int) -> Path:
        return self.root / f"c{collection_id}" / "bm25"

    def _lock_for(self, collection_id: int) -> threading.Lock:
        with self._registry_lock:
            return self._locks.setdefault(collection_id, threading.Lock())

    def opened(self, collection_id: int) -> Bm25Index | None:
        """The collection's index if this process has opened it (never opens one, nor waits
        for one being opened)."""
        return self._indexes.get(collection_id)

    def get(self, collection_id: int) -> Bm25Index:
        """The collection's index, built from the table if it has never been."""
        # opened already: no lock, which the tailer holds while it applies changes
        index = self._indexes.get(collection_id)
        pruned = self.horizon.value
        if index is not None and pruned is not None and 0 < index.watermark < pruned:
            self.behind(pruned)
            index = None
        if index is None:
            with self._lock_for(collection_id):
                index = self._indexes.get(collection_id)
                if index is None:
                    index = self._opened_from_disk(collection_id)
                    if index.watermark == 0:
                        self._build(collection_id, index)
                    self._indexes[collection_id] = index
        self._used_now(collection_id)
        return index

    def _opened_from_disk(self, collection_id: int, conn: Connection | None = None) -> Bm25Index:
        """The index as the folder holds it; emptied (to be built from the table) if the
        outbox has been pruned past its watermark, since the changes it lacks are gone."""
        index = Bm25Index(self.path(collection_id))
        if index.watermark == 0:
            return index
        if conn is None:
            with self.pool.connection() as own:
                horizon = self.horizon.known(own)
        else:
            horizon = self.horizon.known(conn)
        if index.watermark >= horizon:
            return index
        log.warning(
            "BM25 index of collection %d holds changes below %d, but the outbox is pruned "
            "below %d: rebuilding it from the table",
            collection_id,
            index.watermark,
            horizon,
        )
        index.destroy()
        return Bm25Index(self.path(collection_id))

    def floor(self, collection_ids: set[int]) -> int | None:
        """The lowest watermark among these collections' built indexes, as this process
        holds them in memory and as the folder holds them on disk (after writing the ones
        that moved in memory): what this process's indexes need the outbox to keep. None
        when none is built."""
        for opened in list(self._indexes.values()):
            opened.persist_watermark()
        marks = []
        for collection_id in collection_ids:
            known = self._indexes.get(collection_id)
            if known is None:
                mark = Bm25Index.read_watermark(self.path(collection_id))
            elif known.watermark == 0:
                continue  # being built: its build's open snapshot holds the outbox
            else:
                mark = min(known.watermark, known.persisted_watermark or known.watermark)
            if mark > 0:
                marks.append(mark)
        return min(marks) if marks else None

    def behind(self, horizon: int) -> list[int]:
        """Let go of the indexes this process holds below ``horizon`` (the outbox is pruned
        past them: catching up would miss changes); they rebuild from the table on next
        use. Returns their collections."""
        self.horizon.remember(horizon)
        gone = [c for c, index in list(self._indexes.items()) if 0 < index.watermark < horizon]
        for collection_id in gone:
            log.warning(
                "BM25 index of collection %d is below the pruned outbox horizon %d: "
                "rebuilding it from the table",
                collection_id,
                horizon,
            )
            self._let_go(collection_id)
        return gone

    def _let_go(self, collection_id: int) -> None:
        """Forget this process's object for the collection's BM25 index. The next use opens
        it from the folder again, which other processes may have kept current; only if the
        folder too is below the horizon is it rebuilt from the table (``_opened_from_disk``)."""
        with self._lock_for(collection_id):
            index = self._indexes.pop(collection_id, None)
            if index is not None:
                index.retire()  # a query still holding it gets IndexRetired, and asks again
        with self._registry_lock:
            self._used.pop(collection_id, None)
            self._seen.discard(collection_id)

    def _build(self, collection_id: int, index: Bm25Index) -> None:
        try:
            with self.pool.connection() as conn, self._writers:
                conn.commit()
                count = rebuild(conn, collection_id, index)
            log.debug("BM25 index of collection %d built from %d documents", collection_id, count)
        except IndexBusy:
            # another process is building it; queries score what it has not committed yet
            # from Postgres meanwhile
            self._follow_writer(collection_id, index)

    def _used_now(self, collection_id: int) -> None:
        """Mark the index used; close the least recently used ones beyond ``open_indexes``."""
        with self._registry_lock:
            self._used[collection_id] = time.monotonic()
            self._used.move_to_end(collection_id)
            excess = len(self._used) - self.open_indexes
            oldest = list(self._used)[:excess] if excess > 0 else []
        for old in oldest:
            self._release(old)

    def _release(self, collection_id: int) -> None:
        index = self._indexes.get(collection_id)
        # one writing now stays open; the next pass's sweep closes it
        if index is None or index.release():
            with self._registry_lock:
                self._used.pop(collection_id, None)

    def refresh(self, collection_id: int) -> int:
        """Apply the collection's outbox up to the safe watermark now; returns changes read.

        When another process writes this index, follow its commits instead."""
        index = self.get(collection_id)
        # the connection before the lock: waiting for one must not hold up this index's opener
        with self.pool.connection() as conn, self._lock_for(collection_id), self._writers:
            if self._indexes.get(collection_id) is not index:
                return 0  # let go of meanwhile (below the horizon, or dropped)
            if index.watermark == 0:
                # following another process's build: its watermark, once it has written one
                index.follow()
            if index.watermark == 0:
                # no build has finished: build it here from the table (the outbox may be
                # pruned, so catching up from 0 could miss documents), or keep following
                try:
                    rebuild(conn, collection_id, index)
                except IndexBusy:
                    self._follow_writer(collection_id, index)
                return 0
            try:
                return catch_up(conn, collection_id, index, self.horizon)
            except IndexBusy:
                self._follow_writer(collection_id, index)
                return 0
            except BelowHorizon:
                pass
        self.behind(self.horizon.value or 0)
        return 0

    def _follow_writer(self, collection_id: int, index: Bm25Index) -> None:
        if collection_id not in self._followed:
            log.warning("another process writes %s; this one follows it", index.path)
            self._followed.add(collection_id)
        index.follow()

    def drop(self, collection_id: int) -> None:
        with self._lock_for(collection_id):
            index = self._indexes.pop(collection_id, None)
            if index is not None:
                index.destroy()
            shutil.rmtree(self.root / f"c{collection_id}", ignore_errors=True)
        with self._registry_lock:
            self._used.pop(collection_id, None)
            self._seen.discard(collection_id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="unidb-tailer", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.follow_once()
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("BM25 tailer pass failed; retrying")

    def follow_once(self) -> None:
        """One tailer pass: catch up the indexes whose collections changed, move the others'
        watermarks in memory, close the handles idle for ``idle_s``."""
        with self.pool.connection() as conn:
            upto = safe_watermark(conn)
            # a process silent past the stale limit may find the outbox pruned past it
            self.behind(self.horizon.read(conn, wait_for_prune=False))
            ids = {row[0] for row in conn.execute("SELECT id FROM unidb.collections")}
            unbuilt = self._look_at(conn, ids)
            ready = dict(self._indexes)
            marks = [index.watermark for index in ready.values() if index.watermark > 0]
            floor = min([*marks, self._scanned_upto if self._scanned_upto is not None else upto])
            changed: set[int] = set()
            if floor < upto:
                changed = changed_collections(conn, since=floor, upto=upto)
            # read after the changes: a prune that passed ``floor`` before they were read
            # shows here, and no index below it may advance
            pruned = self.horizon.read(conn, wait_for_prune=False)
        # a collection created or dropped since the listing waits for the next pass;
        # an index another process has not finished building is looked at every pass
        due = (changed & ids) | unbuilt
        due |= {c for c, index in ready.items() if index.watermark == 0 and c in ids}
        futures: dict[int, Future[int]] = {
            c: self._workers.submit(self.refresh, c) for c in sorted(due)
        }
        wait(futures.values())
        failed = set()
        for collection_id, future in futures.items():
            if future.cancelled():  # closing
                failed.add(collection_id)
            elif (error := future.exception()) is not None:
                failed.add(collection_id)
                log.error(
                    "BM25 tailer pass failed for collection %d; retrying",
                    collection_id,
                    exc_info=error,
                )
        for collection_id, index in ready.items():
            # nothing of it in [floor, upto), and it holds everything below its watermark
            if collection_id not in changed and collection_id not in due:
                if index.watermark >= max(floor, pruned) and index.watermark > 0:
                    index.advance(upto)
        self.behind(pruned)
        with self._registry_lock:
            self._seen -= failed & unbuilt  # looked at again next pass
            gone = self._seen - ids  # dropped by another process
            self._seen -= gone
        if not failed:
            self._scanned_upto = upto
        for collection_id in gone:
            dropped = self._indexes.pop(collection_id, None)
            if dropped is not None:
                dropped.close()
        self._sweep()

    def _look_at(self, conn: Connection, ids: set[int]) -> set[int]:
        """Take in collections the tailer has not looked at: an index built before (on disk)
        joins the ones it follows; returns those never built that have documents."""
        with self._registry_lock:
            new = sorted(ids - self._seen)
        unbuilt = []
        for collection_id in new:
            lock = self._lock_for(collection_id)
            if not lock.acquire(blocking=False):  # being opened now: next pass
                continue
            try:
                if collection_id not in self._indexes:
                    index = self._opened_from_disk(collection_id, conn)
                    if index.watermark > 0:
                        self._indexes[collection_id] = index
                    else:
                        unbuilt.append(collection_id)
                with self._registry_lock:
                    self._seen.add(collection_id)
            finally:
                lock.release()
        if not unbuilt:
            return set()
        # read after the safe watermark: whatever wrote below it has committed, so a
        # collection found empty here gets its documents from changes the next pass reads
        return {
            row[0]
            for row in conn.execute(
                "SELECT c FROM unnest(%s::bigint[]) AS c WHERE EXISTS"
                " (SELECT 1 FROM unidb.documents d WHERE d.collection_id = c)",
                (unbuilt,),
            ).fetchall()
        }

    def _sweep(self) -> None:
        now = time.monotonic()
        with self._registry_lock:
            idle = [c for c, used in self._used.items() if now - used >= self.idle_s]
            untracked = [
                c for c, index in self._indexes.items() if index.is_open and c not in self._used
            ]
        for collection_id in idle:
            self._release(collection_id)
        for collection_id in untracked:
            index = self._indexes.get(collection_id)
            if index is not None:
                index.release()

    def close(self) -> None:
        self._stop.set()
        self._workers.shutdown(wait=False, cancel_futures=True)  # a pass ends with what runs
        if self._thread is not None:
            self._thread.join()
        self._workers.shutdown(wait=True)
        with self._registry_lock:
            indexes, self._indexes = list(self._indexes.values()), {}
        for index in indexes:
            index.persist_watermark()
            index.close()
