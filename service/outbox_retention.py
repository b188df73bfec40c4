"""Outbox retention: what every follower has read is pruned from ``unidb.changes``.

Followers report their watermarks in ``unidb.outbox_followers``: the prefix registry as it
moves, and each data directory's indexes (BM25 and FAISS snapshots) as one follower, named
by an id kept in the directory, reporting the lowest watermark any of its indexes holds on
disk. A pass here reports this directory, then prunes every outbox row below the lowest
watermark of the followers seen within ``UNIDB_OUTBOX_FOLLOWER_STALE_S`` (and below every
open snapshot, so a build reading as of one can catch up from it), plus the rows of
collections that no longer exist. A silent follower is logged, not waited on: when it
comes back, an index whose watermark is below the pruned horizon rebuilds from the tables.
"""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

from psycopg_pool import ConnectionPool

from unidb.indexing import outbox
from unidb.indexing.pg import Connection
from unidb.indexing.text_indexes import TextIndexes
from unidb.service.config import Settings
from unidb.service.search.ann_indexes import AnnIndexes

log = logging.getLogger("unidb.outbox")

_ID_FILE = "follower-id"


def directory_follower(indexes_root: Path) -> str:
    """This data directory's follower name, the same for every process that shares it."""
    indexes_root.mkdir(parents=True, exist_ok=True)
    path = indexes_root / _ID_FILE
    if not path.exists():
        staged = indexes_root / f".{_ID_FILE}.{uuid.uuid4().hex}.tmp"
        staged.write_text(uuid.uuid4().hex)
        try:
            path.hardlink_to(staged)  # the first process to name the directory wins
        except FileExistsError:
            pass
        finally:
            staged.unlink(missing_ok=True)
    return f"indexes:{path.read_text().strip()}"


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
        self.name = directory_follower(settings.data_dir / "indexes")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def report(self) -> int:
        """Report the lowest watermark this directory's indexes hold, then read the horizon
        that report holds back; returns the watermark reported."""
        with self.pool.connection() as conn:
            ids = {row[0] for row in conn.execute("SELECT id FROM unidb.collections")}
            marks = [self.text_indexes.floor(ids), self.ann.floor(ids)]
            # an index build under way reads as of an open snapshot and will catch up from it
            watermark = min(
                [m for m in marks if m is not None]
                + [outbox.safe_watermark(conn), *outbox.open_snapshots(conn)]
            )
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
            log.info("outbox pruned below %d: %d rows", pruned.horizon, pruned.deleted)
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
        if self._thread is not None:
            self._thread.join()
