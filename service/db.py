"""Connecting to Postgres: the pgvector check, migrations, and the process's one pool."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from unidb.errors import Unavailable
from unidb.schema import upgrade

from .config import Settings
from .tenancy import SERVICE_ROLE, SERVICE_WIDE

log = logging.getLogger("unidb.db")


def sqlalchemy_engine(dsn: str) -> Engine:
    """A SQLAlchemy engine (psycopg 3 driver, no pooling) for any libpq DSN or URI."""
    return create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=NullPool
    )


def check_pgvector(dsn: str) -> None:
    """Fail with a clear message when the server cannot give us the `vector` extension."""
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute(
                "SELECT default_version, installed_version FROM pg_available_extensions"
                " WHERE name = 'vector'"
            ).fetchone()
            version = conn.execute("SHOW server_version").fetchone()
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to Postgres: {exc}".strip()) from exc
    if row is None:
        server = version[0] if version else "?"
        raise Unavailable(
            f"the Postgres server (version {server}) has no `vector` extension: install "
            "pgvector 0.8 or newer on it, or unset UNIDB_DATABASE_URL to use embedded Postgres"
        )


def migrate(dsn: str) -> None:
    """Run Alembic `upgrade head` in one transaction."""
    engine = sqlalchemy_engine(dsn)
    try:
        with engine.begin() as connection:
            upgrade(connection)
    finally:
        engine.dispose()


# the BM25 tailer, the prefix follower, and an index build (its read, its progress
# reports, its build lock)
BACKGROUND_CONNECTIONS = 5


def open_pool(
    dsn: str, settings: Settings, *, background: bool = False
) -> ConnectionPool[psycopg.Connection[Any]]:
    """The process's pool for requests, or with ``background`` the small one its own work
    uses (index tailing, prefix invalidation, index builds), so that work never queues behind
    requests; every connection knows the vector type and the statement timeout."""

    def configure(conn: psycopg.Connection[Any]) -> None:
        register_vector(conn)
        conn.execute(
            "SELECT set_config(%s, %s, false)",
            ("statement_timeout", str(settings.statement_timeout_ms)),
        )
        conn.execute("SET application_name = 'unidb'")
        # no superuser: row-level security binds the service (see migration 0007)
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(SERVICE_ROLE)))
        conn.execute("SELECT set_config('unidb.tenant', %s, false)", (SERVICE_WIDE,))
        conn.commit()

    pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
        dsn,
        min_size=1 if background else settings.pool_min_size,
        max_size=BACKGROUND_CONNECTIONS
        if background
        else max(settings.pool_max_size, settings.pool_min_size),
        timeout=settings.pool_timeout_s,
        configure=configure,
        open=False,
        name="unidb-background" if background else "unidb",
    )
    pool.open(wait=True, timeout=30)
    return pool
