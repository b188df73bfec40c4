"""The engine: one pool, one transaction per operation, every capability behind one object.

REST routes, the CLI and ``unidb.Client.embedded`` all call this; it implements the SDK's
``Backend`` protocol.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from unidb.errors import InvalidInput, NotFound, ServerError, Unavailable, UnidbError
from unidb.models import (
    Collection,
    CollectionCreate,
    DeleteResult,
    Document,
    Health,
    QueryRequest,
    QueryResponse,
    StoredDocument,
    UpsertResult,
)

from . import collections, documents
from .config import Settings
from .db import check_pgvector, migrate, open_pool
from .embedded import EmbeddedPostgres
from .filters import compile_filter
from .search import vector_search
from .vector_index import build_hnsw

log = logging.getLogger("unidb.engine")

Connection = psycopg.Connection[Any]

# how often a query may look at a collection's size to decide on an HNSW build
_INDEX_CHECK_INTERVAL_S = 30.0
# HNSW builds are far faster when the graph fits in maintenance_work_mem
_BUILD_MAINTENANCE_WORK_MEM = "512MB"


class Engine:
    """Owns the database connection (and embedded Postgres, when it started one)."""

    def __init__(
        self,
        settings: Settings,
        pool: ConnectionPool[Connection],
        dsn: str,
        embedded: EmbeddedPostgres | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.dsn = dsn
        self._embedded = embedded
        self._limits = documents.Limits(
            max_batch_documents=settings.max_batch_documents,
            max_text_chars=settings.max_text_chars,
        )
        self._index_checked_at: dict[int, float] = {}
        self._index_builds: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()

    @classmethod
    def start(cls, settings: Settings) -> Engine:
        """Connect (starting embedded Postgres if no URL is set), migrate, open the pool."""
        embedded: EmbeddedPostgres | None = None
        if settings.database_url:
            dsn = settings.database_url
        else:
            embedded = EmbeddedPostgres(settings.pgdata)
            dsn = embedded.start()
        try:
            check_pgvector(dsn)
            migrate(dsn)
            if embedded is not None:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    embedded.tune(conn)
            pool = open_pool(dsn, settings)
        except BaseException:
            if embedded is not None:
                embedded.stop()
            raise
        return cls(settings, pool, dsn, embedded)

    @classmethod
    def open_embedded(cls, path: Path, **overrides: Any) -> Engine:
        """An engine on embedded Postgres under ``path`` (the ``Client.embedded`` backend)."""
        settings = Settings(data_dir=path, database_url=None, **overrides)
        return cls.start(settings)

    def close(self) -> None:
        """Wait for index builds, close the pool, stop embedded Postgres if we started it.

        Closing twice is harmless."""
        self.wait_for_index_builds()
        self.pool.close()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One pooled connection in one transaction: committed on success, rolled back on error."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except UnidbError:
            raise
        except PoolTimeout as exc:
            raise Unavailable("no database connection free; retry shortly") from exc
        except pg_errors.QueryCanceled as exc:
            raise Unavailable("the statement timed out") from exc
        except psycopg.OperationalError as exc:
            raise Unavailable(f"database unavailable: {exc}") from exc
        except psycopg.Error as exc:
            log.exception("database error")
            raise ServerError(f"database error {exc.sqlstate or ''}".strip()) from exc

    # -- Backend protocol ---------------------------------------------------------------

    def health(self) -> Health:
        with self.transaction() as conn:
            conn.execute("SELECT 1")
        return Health(status="ok")

    def create_collection(self, spec: CollectionCreate) -> Collection:
        with self.transaction() as conn:
            row = collections.create(conn, spec)
            return collections.describe(conn, row)

    def get_collection(self, name: str) -> Collection:
        with self.transaction() as conn:
            return collections.describe(conn, collections.get(conn, name))

    def list_collections(self) -> list[Collection]:
        with self.transaction() as conn:
            return [collections.describe(conn, row) for row in collections.list_all(conn)]

    def delete_collection(self, name: str) -> DeleteResult:
        with self.transaction() as conn:
            if not collections.drop(conn, name):
                raise NotFound(f"collection {name!r} does not exist", field="collection")
        return DeleteResult(deleted=True)

    def upsert_documents(self, collection: str, documents_: list[Document]) -> UpsertResult:
        with self.transaction() as conn:
            row = collections.get(conn, collection, lock=True)
            return documents.upsert(conn, row, documents_, self._limits)

    def get_document(self, collection: str, document_id: str) -> StoredDocument:
        with self.transaction() as conn:
            return documents.get(conn, collections.get(conn, collection), document_id)

    def delete_document(self, collection: str, document_id: str) -> DeleteResult:
        with self.transaction() as conn:
            row = collections.get(conn, collection, lock=True)
            if not documents.delete(conn, row, document_id):
                raise NotFound(
                    f"document {document_id!r} is not in collection {collection!r}", field="id"
                )
        return DeleteResult(deleted=True)

    def query(self, collection: str, request: QueryRequest) -> QueryResponse:
        mode = request.mode
        if request.vector is None:
            raise InvalidInput(
                "give a query vector; text queries (bm25 and hybrid on text) need the BM25 "
                "index, which this version does not have yet",
                field="vector" if request.text is None else "text",
            )
        if mode == "bm25":
            raise InvalidInput("bm25 mode needs the BM25 index, not in this version", field="mode")
        where = compile_filter(
            request.filter,
            column=sql.SQL("d.metadata"),
            max_depth=self.settings.max_filter_depth,
        )
        with self.transaction() as conn:
            row = collections.get(conn, collection)
            vector = documents.check_vector(row, request.vector, "vector")
            use_index = collections.vector_index_state(conn, row) == "hnsw"
            if not use_index:
                self._maybe_schedule_index(conn, row)
            return vector_search(
                conn,
                row,
                vector,
                k=request.k,
                where=where,
                use_index=use_index,
                ef_search=self.settings.hnsw_ef_search,
                max_scan_tuples=self.settings.hnsw_max_scan_tuples,
            )

    # -- vector index ---------------------------------------------------------------------

    def build_vector_index(self, collection: str) -> bool:
        """Build the collection's HNSW index now (blocking); False if another build holds it."""
        with self.transaction() as conn:
            row = collections.get(conn, collection)
        return self._build(row)

    def wait_for_index_builds(self) -> None:
        """Block until the background HNSW builds started so far have finished."""
        with self._lock:
            builds = list(self._index_builds.values())
        for thread in builds:
            thread.join()

    def _build(self, row: collections.CollectionRow) -> bool:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT set_config('maintenance_work_mem', %s, false)",
                (_BUILD_MAINTENANCE_WORK_MEM,),
            )
            return build_hnsw(
                conn,
                row,
                m=self.settings.hnsw_m,
                ef_construction=self.settings.hnsw_ef_construction,
            )

    def _maybe_schedule_index(self, conn: Connection, row: collections.CollectionRow) -> None:
        now = time.monotonic()
        with self._lock:
            if row.id in self._index_builds:
                return
            if now - self._index_checked_at.get(row.id, -1e9) < _INDEX_CHECK_INTERVAL_S:
                return
            self._index_checked_at[row.id] = now
        count = conn.execute(
            "SELECT count(*) FROM unidb.chunks WHERE collection_id = %s AND embedding IS NOT NULL",
            (row.id,),
        ).fetchone()
        if count is None or count[0] < self.settings.hnsw_min_rows:
            return

        def run() -> None:
            try:
                self._build(row)
            except psycopg.Error:
                log.exception("HNSW build for collection %s failed", row.name)
            finally:
                with self._lock:
                    self._index_builds.pop(row.id, None)

        thread = threading.Thread(target=run, name=f"hnsw-{row.name}", daemon=True)
        with self._lock:
            self._index_builds[row.id] = thread
        log.info("collection %s holds %d vectors: building its HNSW index", row.name, count[0])
        thread.start()
