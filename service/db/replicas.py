"""Read replicas: streaming standbys of the primary that serve reads which allow them."""

from __future__ import annotations

import itertools
import time

from psycopg_pool import ConnectionPool

from unidb.indexing.pg import Connection

_POLL_S = 0.005


class Replicas:
    """The replicas' pools, taken in turn, and the wait for one to replay a commit."""

    def __init__(self, pools: list[ConnectionPool[Connection]], *, wait_s: float) -> None:
        self.pools = pools
        self.wait_s = wait_s
        self._turn = itertools.count()

    def pick(self) -> ConnectionPool[Connection] | None:
        if not self.pools:
            return None
        return self.pools[next(self._turn) % len(self.pools)]

    def wait_for(self, conn: Connection, lsn: str) -> bool:
        """Whether the server on ``conn`` has replayed WAL up to ``lsn``, waiting at most
        ``wait_s`` for it (a server that is not in recovery has everything)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            row = conn.execute(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, NOT pg_is_in_recovery())",
                (lsn,),
            ).fetchone()
            if row is not None and row[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
