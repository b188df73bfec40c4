"""The service's Postgres: a transaction per operation on the primary or a read replica,
driver failures mapped to the service's errors by SQLSTATE."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from unidb.errors import InvalidInput, ServerError, Unavailable, UnidbError
from unidb.indexing.pg import Connection
from unidb.models import Consistency
from unidb.service.auth.tenancy import SERVICE_WIDE, current_tenant
from unidb.service.config import Settings
from unidb.service.db.replicas import Replicas
from unidb.service.store.commit_tokens import token_lsn

log = logging.getLogger("unidb.db")


# psycopg refuses NUL characters before sending (no SQLSTATE); 22021: bad byte sequence;
# 22P05: a character jsonb cannot hold (\u0000 inside a JSON value)
_UNSTORABLE_INPUT = (None, "22021", "22P05")


class Database:
    """The primary's pool, the replicas', and ``on_read(target)`` told where each read went."""

    def __init__(
        self,
        pool: ConnectionPool[Connection],
        settings: Settings,
        replicas: Replicas,
        *,
        on_read: Callable[[str], None] = lambda target: None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.replicas = replicas
        self.on_read = on_read

    @contextmanager
    def transaction(
        self, *, service_wide: bool = False, pool: ConnectionPool[Connection] | None = None
    ) -> Iterator[Connection]:
        """One pooled connection in one transaction: committed on success, rolled back on error.

        Row-level security shows it the current request's tenant only, or with
        ``service_wide`` every tenant (for the service's own bookkeeping). ``pool`` is the
        primary's unless a read replica's is given."""
        tenant = SERVICE_WIDE if service_wide else current_tenant.get()
        with self.errors(), (pool or self.pool).connection() as conn:
            conn.execute("SELECT set_config('unidb.tenant', %s, true)", (tenant,))
            yield conn

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Database failures as the service's errors: 503 when busy or unreachable, 400 for
        text Postgres cannot hold, 500 for the rest."""
        try:
            yield
        except UnidbError:
            raise
        except PoolTimeout as exc:
            raise Unavailable(
                f"no database connection came free within {self.settings.pool_timeout_s} s "
                f"(UNIDB_POOL_TIMEOUT_S, UNIDB_POOL_MAX_SIZE); retry shortly"
            ) from exc
        except pg_errors.QueryCanceled as exc:
            raise Unavailable(
                f"the statement ran past {self.settings.statement_timeout_ms} ms "
                f"(UNIDB_STATEMENT_TIMEOUT_MS) and was cancelled; nothing was changed"
            ) from exc
        except psycopg.OperationalError as exc:
            raise Unavailable(f"database unavailable: {exc}") from exc
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.DataError) and exc.sqlstate in _UNSTORABLE_INPUT:
                # text Postgres cannot hold (a NUL character, a bad encoding) sent by the
                # caller: refused and rolled back; other data errors are the service's own
                message = str(exc).splitlines()[0] if str(exc) else "invalid value"
                raise InvalidInput(f"invalid value: {message}") from exc
            log.exception("database error")
            raise ServerError(f"database error {exc.sqlstate or ''}".strip()) from exc

    @contextmanager
    def reading(self, *, consistency: Consistency, after: str | None) -> Iterator[Connection]:
        """A transaction for a read. A read replica serves it when one is configured and the
        read allows it: eventual consistency, or a commit token whose LSN the replica replays
        within ``replica_wait_ms``. Otherwise, strong reads included, the primary does."""
        lsn = token_lsn(after) if after is not None else None
        eligible = lsn is not None or (after is None and consistency == "eventual")
        replica = self.replicas.pick() if eligible else None
        if replica is not None:
            with self.transaction(pool=replica) as conn:
                if lsn is None or self.replicas.wait_for(conn, lsn):
                    self.on_read("replica")
                    yield conn
                    return
        # no replica, or it has not replayed the commit in time
        self.on_read("primary")
        with self.transaction() as conn:
            yield conn
