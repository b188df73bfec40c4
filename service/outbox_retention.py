"""Outbox retention: what every follower has read is pruned from ``unidb.changes``.

Followers report their watermarks in ``unidb.outbox_followers``: the prefix registry as it
moves, and each serving process's indexes (BM25 and FAISS snapshots) as one follower,
reporting the lowest watermark any of its indexes holds, on disk or in memory. A pass here reports this directory, then prunes every outbox row below the lowest
watermark of the followers seen within ``UNIDB_OUTBOX_FOLLOWER_STALE_S`` (and below every
open snapshot, so a build reading as of one can catch up from it), plus the rows of
collections that no longer exist. A silent follower is logged, not waited on: when it
comes back, an index whose watermark is below the pruned horizon rebuilds from the tables
(its tailer checks every pass, and each query's outbox read carries the horizon).
"""

from __future__ import annotations

import logging
import threading

from psycopg_pool import ConnectionPool

from unidb.indexing import outbox
from unidb.indexing.pg import Connection
from unidb.indexing.text_indexes import TextIndexes
from unidb.service.config import Settings
from unidb.service.jobs.runner import process_name
from unidb.service.search.ann_indexes import AnnIndexes

log = logging.getLogger("unidb.outbox")


class OutboxRetention:
    def __init__(
        self,
        pool: ConnectionPool[Connection],
        settings: Settings,
        *,
        text_indexes: TextIndexes,
        ann: AnnIndexes,
        horizon: outbox.Horizon,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.text_indexes = text_indexes
        self.ann = ann
        self.horizon = horizon
        # one follower per process, even on a shared data directory: each process's indexes
        # are at its own watermarks in memory
        self.name = f"indexes:{process_name()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def report(self) -> int:
        """Report the lowest watermark this directory's indexes hold, then read the horizon
        that report holds back; returns the watermark reported."""
        with self.pool.connection() as conn:
            ids = {row[0] for row in conn.execute("SELECT id FROM unidb.collections")}
            # first what is open now: an index build under way reads as of an open snapshot
            # and will catch up from it; one that finishes meanwhile is on disk below
            held = [outbox.safe_watermark(conn), *outbox.open_snapshots(conn)]
            marks = [self.text_indexes.floor(ids), self.ann.floor(ids)]
            watermark = min([m for m in marks if m is not None] + held)
            outbox.report_follower(conn, self.name, watermark)
        with self.pool.connection() as conn:  # after the report commits
            self.horizon.read(conn)
        return watermark

    def prune(self) -> outbox.Pruned:
        with self.pool.connection() as conn:
            pruned = outbox.prune(
                conn,
                stale_after_s=self.settings.outbox_follower_stale_s,
                batch=self.settings.outbox_prune_batch,
            )
        self.horizon.remember(pruned.horizon)
        if pruned.stale:
            log.warning(
                "outbox followers silent for over %d s, not waited on: %s (an index of "
                "theirs below the pruned horizon rebuilds from the tables when they return)",
                self.settings.outbox_follower_stale_s,
                ", ".join(pruned.stale),
            )
        if pruned.deleted:
            log.debug("outbox pruned below %d: %d rows", pruned.horizon, pruned.deleted)
        return pruned

    def run_once(self) -> outbox.Pruned:
        self.report()
        return self.prune()

    def start(self) -> None:
        """Report now (before this process's indexes are followed), then report and prune
        every ``UNIDB_OUTBOX_PRUNE_INTERVAL_S``."""
        self.report()
        self._thread = threading.Thread(target=self._loop, name="unidb-outbox", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.outbox_prune_interval_s):
            try:
                self.run_once()
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("outbox retention pass failed; retrying")

    def close(self) -> None:
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join()
        try:
            with self.pool.connection() as conn:
                outbox.forget_follower(conn, self.name)
        except Exception:  # closing: a row left behind goes stale, then goes
            log.warning("could not remove outbox follower %s", self.name, exc_info=True)
