"""The service's Postgres: a transaction per operation on the primary or a read replica,
driver failures mapped to the service's errors by SQLSTATE."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.abc import Params
from psycopg_pool import ConnectionPool, PoolTimeout

from unidb.errors import InvalidInput, ServerError, Unavailable, UnidbError
from unidb.indexing.pg import Connection, Fetches
from unidb.models import Consistency
from unidb.service.auth.tenancy import SERVICE_WIDE, current_tenant
from unidb.service.config import Settings
from unidb.service.db.replicas import Replicas
from unidb.service.store.commit_tokens import token_lsn

log = logging.getLogger("unidb.db")


# a statement and its parameters
Statement = tuple[Any, Any]

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
    def reading(self, *, consistency: Consistency, after: str | None) -> Iterator[ReadTransaction]:
        """A transaction for a read. A read replica serves it when one is configured and the
        read allows it: eventual consistency, or a commit token whose LSN the replica replays
        within ``replica_wait_ms``. Otherwise, strong reads included, the primary does."""
        lsn = token_lsn(after) if after is not None else None
        eligible = lsn is not None or (after is None and consistency == "eventual")
        replica = self.replicas.pick() if eligible else None
        tenant = current_tenant.get()
        if replica is not None:
            with (
                self.errors(),
                replica.connection() as conn,
                ReadTransaction.on(conn, tenant) as read,
            ):
                if lsn is None or self.replicas.wait_for(conn, lsn):
                    self.on_read("replica")
                    yield read
                    return
        # no replica, or it has not replayed the commit in time
        self.on_read("primary")
        with (
            self.errors(),
            self.pool.connection() as conn,
            ReadTransaction.on(conn, tenant) as read,
        ):
            yield read


class Rows:
    """A statement's rows, read like a cursor's."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None


_BEGIN: Statement = ("BEGIN", None)
_COMMIT: Statement = ("COMMIT", None)


class ReadTransaction:
    """A read-only transaction in as few round trips as its statements allow.

    Statements are pipelined: each round trip sends every statement queued so far, by the
    extended protocol, then one Sync. ``begin`` opens the transaction lazily: ``BEGIN``, the
    tenant setting and any settings given travel with the first statement run through
    ``first`` or ``execute``. ``finish`` sends its statements with ``COMMIT``; if nothing ran
    since ``begin``, they run as the implicit transaction a Sync closes, without ``BEGIN``.
    So a read whose only statements are the last ones is one round trip, however many
    statements it holds.

    Statements with parameters are prepared (psycopg names each once per connection and
    keeps at most ``prepared_max`` of them, deallocating them all after a rollback or a
    ``DROP`` could have made them stale), so Postgres plans a query once per connection;
    parameters travel in binary where their type has a binary form (a vector does).
    """

    def __init__(self, conn: Connection, tenant: str) -> None:
        self.conn = conn
        self.tenant = tenant
        self._opening: list[Statement] = []  # begun, not yet sent
        self._open = False  # BEGIN sent

    @classmethod
    @contextmanager
    def on(cls, conn: Connection, tenant: str) -> Iterator[ReadTransaction]:
        """``conn`` (idle) switched to autocommit so that psycopg sends no ``BEGIN`` of its
        own; rolled back if left open, and back to its usual mode after."""
        conn.autocommit = True
        try:
            yield cls(conn, tenant)
        finally:
            try:
                if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")  # left early, or failed
                conn.autocommit = False
            except psycopg.Error:
                conn.close()  # the pool replaces a connection it gets back closed

    def _tenant(self) -> Statement:
        return ("SELECT set_config('unidb.tenant', %s, true)", (self.tenant,))

    def _send(
        self, statements: list[Statement], meanwhile: Callable[[], object] | None = None
    ) -> list[list[tuple[Any, ...]]]:
        """Send ``statements`` in one round trip, running ``meanwhile`` while the server
        executes them; each one's rows, in order."""
        cursors = []
        with self.conn.pipeline():
            for query, params in statements:
                cursor = self.conn.cursor()
                cursor.execute(query, params, prepare=params is not None)
                cursors.append(cursor)
            if meanwhile is not None:
                meanwhile()
        return [cursor.fetchall() if cursor.description is not None else [] for cursor in cursors]

    def begin(self, *settings: Statement) -> None:
        """Open the transaction as this request's tenant, with ``settings`` (statements whose
        rows nobody reads), when the first statement runs."""
        self._opening = [_BEGIN, self._tenant(), *settings]

    def begin_with(self, *statements: Statement) -> list[list[tuple[Any, ...]]]:
        """Open the transaction now, running ``statements`` in the same round trip; their
        rows, in order."""
        self._opening = [_BEGIN, self._tenant()]
        return self.first(*statements)

    def first(
        self, *statements: Statement, meanwhile: Callable[[], object] | None = None
    ) -> list[list[tuple[Any, ...]]]:
        """Run ``statements`` now, with the transaction's opening if it is still to be sent;
        their rows, in order. ``meanwhile`` runs here while the server works on them."""
        if not self._opening and not self._open:
            self._opening = [_BEGIN, self._tenant()]  # never a statement without the tenant
        sent = [*self._opening, *statements]
        self._opening, self._open = [], True
        return self._send(sent, meanwhile)[len(sent) - len(statements) :]

    def execute(self, query: Any, params: Params | None = None) -> Fetches:
        """Run one statement now, like ``Connection.execute`` (with the transaction's
        opening if it is still to be sent); its rows."""
        (rows,) = self.first((query, params))
        return Rows(rows)

    def finish(self, *statements: Statement) -> list[list[tuple[Any, ...]]]:
        """Run ``statements`` and end the transaction in one round trip; their rows."""
        if self._open:
            self._open = False
            return self._send([*statements, _COMMIT])[:-1]
        opening, self._opening = self._opening, []
        if not statements:
            return []  # nothing was sent: nothing to end
        # nothing ran since begin: one implicit transaction, with the tenant (and settings)
        prelude = opening[1:] if opening else [self._tenant()]
        return self._send([*prelude, *statements])[len(prelude) :]
