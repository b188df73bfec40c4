"""Connecting to Postgres: the pgvector check, migrations, and the process's one pool."""

from __future__ import annotations

import logging

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from unidb.errors import Unavailable
from unidb.indexing.pg import Connection
from unidb.schema import at_head, head_revision, upgrade
from unidb.service.auth.tenancy import SERVICE_ROLE, SERVICE_WIDE
from unidb.service.config import Settings

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
    """Run Alembic `upgrade head` in one transaction, unless the schema is there already (so
    the service's own role, which may not migrate, can start once an administrator has)."""
    engine = sqlalchemy_engine(dsn)
    try:
        with engine.begin() as connection:
            if at_head(connection):
                log.info("schema at migration %s", head_revision())
            else:
                upgrade(connection)
                log.info("schema migrated to %s", head_revision())
    finally:
        engine.dispose()


def service_dsn(dsn: str) -> str:
    """``dsn`` logging in as the service role instead (embedded Postgres trusts local
    logins; migration 0009 lets the role log in)."""
    return make_conninfo(dsn, user=SERVICE_ROLE)


def act_as_service(conn: Connection) -> None:
    """Work as the service role, seeing every tenant until a transaction names one; commits
    unless ``conn`` is in autocommit."""
    # no superuser: row-level security binds the service (see migrations 0007 and 0009)
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(SERVICE_ROLE)))
    conn.execute("SELECT set_config('unidb.tenant', %s, false)", (SERVICE_WIDE,))
    if not conn.autocommit:
        conn.commit()


def service_connection(dsn: str, *, autocommit: bool = False) -> Connection:
    """A connection outside the pools (index builds, Ray workers), working as theirs do."""
    conn = psycopg.connect(dsn, autocommit=autocommit)
    try:
        act_as_service(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def warn_if_privileged(conn: Connection) -> None:
    """Log when the DSN's login role is a superuser or bypasses row-level security: the
    service works as unidb_service all the same, but such a session can leave that role."""
    row = conn.execute(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = session_user"
    ).fetchone()
    if row is not None and row[0]:
        log.warning(
            "UNIDB_DATABASE_URL logs in as a superuser (or a BYPASSRLS role); log in as %s"
            " instead (README: Running without a superuser)",
            SERVICE_ROLE,
        )


# the BM25 tailer, the prefix follower, and an index build (its read, its progress
# reports, its build lock)
BACKGROUND_CONNECTIONS = 5


def open_pool(
    dsn: str, settings: Settings, *, background: bool = False
) -> ConnectionPool[Connection]:
    """The process's pool for requests, or with ``background`` the small one its own work
    uses (index tailing, prefix invalidation, index builds), so that work never queues behind
    requests; every connection knows the vector type and its statement timeout (requests'
    ``statement_timeout_ms``, background work's ``background_statement_timeout_ms``)."""

    timeout_ms = (
        settings.background_statement_timeout_ms if background else settings.statement_timeout_ms
    )

    def configure(conn: Connection) -> None:
        register_vector(conn)
        conn.execute("SELECT set_config(%s, %s, false)", ("statement_timeout", str(timeout_ms)))
        conn.execute("SET application_name = 'unidb'")
        act_as_service(conn)

    pool: ConnectionPool[Connection] = ConnectionPool(
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
