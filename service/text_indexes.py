"""The process's BM25 indexes, one per collection, and the thread that keeps them current."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from unidb.indexing.bm25 import Bm25Index, IndexBusy
from unidb.indexing.tailer import catch_up, rebuild

log = logging.getLogger("unidb.text_indexes")


class TextIndexes:
    """Opens indexes on first use, builds empty ones from Postgres, follows the outbox."""

    def __init__(
        self, root: Path, pool: ConnectionPool[psycopg.Connection[Any]], *, interval_s: float
    ) -> None:
        self.root = root
        self.pool = pool
        self.interval_s = interval_s
        self._indexes: dict[int, Bm25Index] = {}
        self._locks: dict[int, threading.Lock] = {}
        self._registry_lock = threading.Lock()
        self._followed: set[int] = set()
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
        opened = self._indexes.get(collection_id)
        if opened is not None:
            return opened
        with self._lock_for(collection_id):
            index = self._indexes.get(collection_id)
            if index is None:
                index = Bm25Index(self.path(collection_id))
                if index.watermark == 0:
                    try:
                        with self.pool.connection() as conn:
                            conn.commit()
                            count = rebuild(conn, collection_id, index)
                        log.info(
                            "BM25 index of collection %d built from %d documents",
                            collection_id,
                            count,
                        )
                    except IndexBusy:
                        # another process is building it; queries score what it has not
                        # committed yet from Postgres meanwhile
                        self._follow_writer(collection_id, index)
                self._indexes[collection_id] = index
            return index

    def refresh(self, collection_id: int) -> int:
        """Apply the collection's outbox up to the safe watermark now; returns changes read.

        When another process writes this index, follow its commits instead."""
        index = self.get(collection_id)
        # the connection before the lock: waiting for one must not hold up this index's opener
        with self.pool.connection() as conn, self._lock_for(collection_id):
            try:
                return catch_up(conn, collection_id, index)
            except IndexBusy:
                self._follow_writer(collection_id, index)
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

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="unidb-tailer", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with self.pool.connection() as conn:
                    ids = [
                        r[0] for r in conn.execute("SELECT id FROM unidb.collections").fetchall()
                    ]
                for collection_id in ids:
                    if self._stop.is_set():
                        return
                    self.refresh(collection_id)
            except Exception:
                log.exception("BM25 tailer pass failed; retrying")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._registry_lock:
            indexes, self._indexes = list(self._indexes.values()), {}
        for index in indexes:
            index.close()
