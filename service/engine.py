"""The engine: the service's subsystems put together, started and closed in one place.

REST routes, the CLI, MCP and ``unidb.Client.embedded`` all call this; it implements the
SDK's ``Backend`` protocol, each method a delegation to the subsystem that owns the job:
``db`` (transactions, replicas), ``planner`` (queries), ``writes`` (documents, state,
transactions), ``text_indexes`` and ``ann`` (the derived indexes), ``hnsw`` (pgvector index
builds), ``jobs`` (build jobs), ``context`` (prompts for LLM engines), ``keys`` (API keys).
Constructing an engine starts no thread: ``start`` (or ``start_background``) does.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from unidb.errors import InvalidInput, NotFound
from unidb.indexing import outbox
from unidb.indexing.faiss_index import BuildRefused
from unidb.indexing.pg import Connection
from unidb.indexing.text_indexes import TextIndexes
from unidb.models import (
    Collection,
    CollectionCreate,
    ContextRequest,
    ContextResponse,
    DeleteCount,
    DeleteResult,
    DeleteWhere,
    Document,
    Health,
    IndexBuildRequest,
    IndexStatus,
    Job,
    PrefixList,
    QueryRequest,
    QueryResponse,
    StateEntry,
    StateList,
    StatePut,
    StoredDocument,
    TransactionRequest,
    TransactionResult,
    UpsertResult,
    WarmRequest,
    WarmResult,
)
from unidb.service.auth.keys import KeyChecker
from unidb.service.collection_embedders import CollectionEmbedders
from unidb.service.config import Settings
from unidb.service.context.service import ContextService
from unidb.service.db.database import Database
from unidb.service.db.embedded import EmbeddedPostgres
from unidb.service.db.pool import (
    check_pgvector,
    migrate,
    open_pool,
    service_dsn,
    warn_if_privileged,
)
from unidb.service.db.replicas import Replicas
from unidb.service.jobs.runner import JobRunner, create_build_job, plan_build
from unidb.service.metrics import Metrics, database_gauges
from unidb.service.outbound import Outbound
from unidb.service.search.ann_indexes import AnnIndexes, BuildTask
from unidb.service.search.filters import CompiledFilter
from unidb.service.search.hnsw_builds import HnswBuilds
from unidb.service.search.planner import QueryPlanner
from unidb.service.store import catalog, documents, jobs, state
from unidb.service.writes import Writes


class Engine:
    """Owns the database connection (and embedded Postgres, when it started one)."""

    def __init__(
        self,
        settings: Settings,
        pool: ConnectionPool[Connection],
        dsn: str,
        embedded: EmbeddedPostgres | None = None,
        background_pool: ConnectionPool[Connection] | None = None,
        replica_pools: list[ConnectionPool[Connection]] | None = None,
        *,
        take_over_jobs: bool = True,
        admin_dsn: str | None = None,
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        # the role migrations ran as (embedded Postgres: its superuser); the service's own
        # connections use ``dsn``
        self.admin_dsn = admin_dsn or dsn
        self._embedded = embedded
        self._owns_background_pool = background_pool is None
        self.background_pool = background_pool or open_pool(dsn, settings, background=True)
        self.metrics = Metrics()
        self.replicas = Replicas(replica_pools or [], wait_s=settings.replica_wait_ms / 1000)
        self.db = Database(
            pool, settings, self.replicas, on_read=lambda to: self.metrics.reads.labels(to).inc()
        )
        self.outbound = Outbound.from_settings(settings)
        indexes = settings.data_dir / "indexes"
        self.text_indexes = TextIndexes(
            indexes,
            self.background_pool,
            interval_s=settings.tailer_interval_s,
            workers=settings.bm25_workers,
            open_indexes=settings.bm25_open_indexes,
            idle_s=settings.bm25_idle_s,
        )
        self.ann = AnnIndexes(indexes)
        self.context = ContextService(settings, self.background_pool)
        self.keys = KeyChecker(
            concurrency=settings.key_check_concurrency,
            failures_allowed=settings.key_failures_allowed,
        )
        self.jobs = JobRunner(
            self.background_pool,
            self.ann,
            orphan_after_s=settings.job_orphan_after_s,
            take_over=take_over_jobs,
        )
        self.embedders = CollectionEmbedders(self.outbound)
        self.hnsw = HnswBuilds(dsn, settings)
        self.planner = QueryPlanner(
            self.db,
            settings,
            text_indexes=self.text_indexes,
            ann=self.ann,
            embedders=self.embedders,
            hnsw=self.hnsw,
            metrics=self.metrics,
        )
        self.writes = Writes(
            self.db, settings, embedders=self.embedders, planner=self.planner, metrics=self.metrics
        )
        self._limits = self.writes.limits
        self.metrics.watch(lambda: database_gauges(self.db, self.text_indexes, self.ann))

    @classmethod
    def start(cls, settings: Settings, *, take_over_jobs: bool = True) -> Engine:
        """Connect (starting embedded Postgres if no URL is set), migrate, open the pool, and
        start the background work.

        ``take_over_jobs``: also run the jobs of service processes that went silent; one-shot
        commands leave them to the processes that serve."""
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
        engine = cls(
            settings,
            pool,
            dsn,
            embedded,
            replica_pools=replica_pools,
            take_over_jobs=take_over_jobs,
            admin_dsn=admin_dsn,
        )
        engine.start_background()
        return engine

    def start_background(self) -> None:
        """Start following the outbox (BM25, prefixes, KV events) and running build jobs."""
        self.text_indexes.start()
        self.context.start()
        self.jobs.start()

    @classmethod
    def open_embedded(cls, path: Path, **overrides: Any) -> Engine:
        """An engine on embedded Postgres under ``path`` (the ``Client.embedded`` backend)."""
        settings = Settings(data_dir=path, database_url=None, **overrides)
        return cls.start(settings)

    def close(self) -> None:
        """Wait for index builds, close the pool, stop embedded Postgres if we started it.

        Closing twice is harmless."""
        self.hnsw.wait()
        self.jobs.close()
        self.context.close()
        self.text_indexes.close()
        if self._owns_background_pool:
            self.background_pool.close()
        self.replicas.close()
        self.db.pool.close()
        self.outbound.close()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    @property
    def pool(self) -> ConnectionPool[Connection]:
        return self.db.pool

    def transaction(
        self, *, service_wide: bool = False, pool: ConnectionPool[Connection] | None = None
    ) -> AbstractContextManager[Connection]:
        """One pooled connection in one transaction (see `Database.transaction`)."""
        return self.db.transaction(service_wide=service_wide, pool=pool)

    def database_gauges(self) -> dict[str, Any]:
        return database_gauges(self.db, self.text_indexes, self.ann)

    # -- Backend protocol ---------------------------------------------------------------

    def health(self) -> Health:
        with self.transaction() as conn:
            conn.execute("SELECT 1")
        return Health(status="ok")

    def create_collection(self, spec: CollectionCreate) -> Collection:
        if spec.embedder is not None and spec.embedder.kind == "openai" and spec.embedder.url:
            self.outbound.resolve(spec.embedder.url, field="embedder.url")
        with self.transaction() as conn:
            return catalog.describe(conn, catalog.create(conn, spec))

    def get_collection(self, name: str) -> Collection:
        with self.transaction() as conn:
            return self._describe(conn, catalog.get(conn, name))

    def list_collections(self) -> list[Collection]:
        with self.transaction() as conn:
            return [self._describe(conn, row) for row in catalog.list_all(conn)]

    def _describe(self, conn: Connection, row: catalog.CollectionRow) -> Collection:
        index = self.text_indexes.get(row.id)
        lag = outbox.lag(conn, row.id, since=index.watermark)
        bm25 = IndexStatus(watermark=index.watermark, lag=lag)
        return catalog.describe(conn, row, bm25, self.ann.status(conn, row.id))

    def delete_collection(self, name: str) -> DeleteResult:
        with self.transaction() as conn:
            row = catalog.get(conn, name)
        self.hnsw.join(row.id)
        with self.transaction() as conn:
            if not catalog.drop(conn, name):
                raise NotFound(f"collection {name!r} does not exist", field="collection")
            jobs.cancel_for_collection(conn, row.id)
        self.text_indexes.drop(row.id)  # the collection's derived indexes, ANN ones too
        self.ann.drop(row.id)
        self.embedders.drop(row.id)
        return DeleteResult(deleted=True)

    def upsert_documents(self, collection: str, documents_: list[Document]) -> UpsertResult:
        return self.writes.upsert_documents(collection, documents_)

    def _upsert(self, conn: Connection, collection: str, docs: list[Document]) -> UpsertResult:
        return self.writes.upsert_into(conn, collection, docs)

    def get_document(self, collection: str, document_id: str) -> StoredDocument:
        with self.transaction() as conn:
            return documents.get(conn, catalog.get(conn, collection), document_id)

    def delete_document(self, collection: str, document_id: str) -> DeleteResult:
        return self.writes.delete_document(collection, document_id)

    def delete_documents(self, collection: str, request: DeleteWhere) -> DeleteCount:
        return self.writes.delete_documents(collection, request)

    def query(self, collection: str, request: QueryRequest) -> QueryResponse:
        return self.planner.query(collection, request)

    def _compiled_filter(self, spec: dict[str, Any]) -> CompiledFilter:
        return self.planner.compiled_filter(spec)

    def transact(self, request: TransactionRequest) -> TransactionResult:
        return self.writes.transact(request)

    # -- context for LLM engines ---------------------------------------------------------

    def build_context(self, request: ContextRequest) -> ContextResponse:
        self.planner.check_limits(request.k, request.query, "query")
        return self.context.build(self.db, self.planner.query, request, self.metrics)

    def list_prefixes(self, collection: str | None = None, *, limit: int = 100) -> PrefixList:
        with self.transaction() as conn:
            return self.context.list_prefixes(conn, collection, limit=limit)

    def warm_prefix(self, prefix_key: str, request: WarmRequest) -> WarmResult:
        return self.context.warm_prefix(self.db, self.outbound, prefix_key, request)

    # -- ANN index builds ----------------------------------------------------------------

    def build_index(self, collection: str, request: IndexBuildRequest) -> Job:
        """Queue a FAISS build of the collection's vectors; answers the job at once."""
        with self.transaction() as conn:
            row = catalog.get(conn, collection)
            try:
                chosen = plan_build(conn, row, request)
            except BuildRefused as exc:
                raise InvalidInput(str(exc), field=exc.field) from exc
            job = create_build_job(conn, row, request, chosen, owner=self.jobs.owner)
        self.jobs.submit(BuildTask(job.id, row, chosen))
        return job

    def get_job(self, job_id: int) -> Job:
        with self.transaction() as conn:
            return jobs.get(conn, job_id)

    def cancel_job(self, job_id: int) -> Job:
        with self.transaction() as conn:
            return jobs.cancel(conn, job_id)

    # -- application state --------------------------------------------------------------

    def get_state(self, namespace: str, key: str) -> StateEntry:
        with self.transaction() as conn:
            return state.get(conn, namespace, key)

    def put_state(self, namespace: str, key: str, body: StatePut) -> StateEntry:
        return self.writes.put_state(namespace, key, body)

    def delete_state(self, namespace: str, key: str, if_version: int | None = None) -> DeleteResult:
        return self.writes.delete_state(namespace, key, if_version)

    def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList:
        with self.transaction() as conn:
            return state.list_entries(conn, namespace, prefix=prefix, after=after, limit=limit)

    # -- pgvector HNSW ----------------------------------------------------------------------

    def build_vector_index(self, collection: str) -> bool:
        """Build the collection's HNSW index now (blocking); False if another build holds it."""
        with self.transaction() as conn:
            row = catalog.get(conn, collection)
        return self.hnsw.build(row)

    def wait_for_index_builds(self) -> None:
        """Block until the background HNSW builds started so far have finished."""
        self.hnsw.wait()
