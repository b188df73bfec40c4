"""Reaching the database at start: embedded Postgres or a URL, the pgvector check,
migrations (as the migrating role), and the service's pools (as the service's role)."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg_pool import ConnectionPool

from unidb.indexing.pg import Connection
from unidb.service.config import Settings
from unidb.service.db.embedded import EmbeddedPostgres
from unidb.service.db.pool import (
    check_pgvector,
    migrate,
    open_pool,
    service_dsn,
    warn_if_privileged,
)


@dataclass
class Connected:
    pool: ConnectionPool[Connection]
    dsn: str  # the service's role
    admin_dsn: str  # the role migrations ran as
    embedded: EmbeddedPostgres | None = None
    replica_pools: list[ConnectionPool[Connection]] = field(default_factory=list)


def connect(settings: Settings) -> Connected:
    """Start embedded Postgres unless a URL is set, migrate, and open the pools."""
    embedded: EmbeddedPostgres | None = None
    if settings.database_url:
        dsn = settings.database_url
        admin_dsn = settings.migration_database_url or dsn
    else:
        embedded = EmbeddedPostgres(settings.pgdata)
        admin_dsn = embedded.start()
        # migrations run as the cluster's superuser; the service logs in as its own role
        dsn = service_dsn(admin_dsn)
    try:
        check_pgvector(admin_dsn)
        migrate(admin_dsn)
        if embedded is not None:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                embedded.tune(conn)
        pool = open_pool(dsn, settings)
        with pool.connection() as conn:
            warn_if_privileged(conn)
        replica_pools = [open_pool(url, settings) for url in settings.replica_urls]
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    return Connected(pool, dsn, admin_dsn, embedded, replica_pools)
