"""The engine: the service's subsystems put together, started and closed in one place.

REST routes, the CLI, MCP and ``unidb.Client.embedded`` all call this; it implements the
SDK's ``Backend`` protocol, each method a delegation to the subsystem that owns the job:
``db`` (transactions, replicas), ``planner`` (queries), ``writes`` (documents, state,
transactions), ``text_indexes`` and ``ann`` (the derived indexes), ``hnsw`` (pgvector index
builds), ``jobs`` (build jobs), ``context`` (prompts for LLM engines), ``keys`` (API keys).
Constructing an engine starts no thread: ``start`` (or ``start_background``) does.
"""

from __future__ import annotations

import logging
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

from unidb.indexing.faiss_index import faiss_install_problem
from unidb.indexing.outbox import Horizon
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
    EngineChecks,
    Health,
    IndexBuildRequest,
    Job,
    PrefixList,
    QueryDefaults,
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
from unidb.service.collection_lifecycle import Collections
from unidb.service.config import Settings
from unidb.service.context.service import ContextService
from unidb.service.db.connect import connect
from unidb.service.db.database import Database
from unidb.service.db.embedded import EmbeddedPostgres
from unidb.service.db.pool import open_pool
from unidb.service.db.replicas import Replicas
from unidb.service.jobs.runner import JobRunner
from unidb.service.metrics import Metrics, database_gauges
from unidb.service.outbound import Outbound
from unidb.service.outbox_retention import OutboxRetention
from unidb.service.search.ann_indexes import AnnIndexes
from unidb.service.search.hnsw_builds import HnswBuilds
from unidb.service.search.planner import QueryPlanner
from unidb.service.search.rerank import Reranker
from unidb.service.store import catalog, documents, jobs, state
from unidb.service.writes import Writes

log = logging.getLogger("unidb.engine")


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
        self.horizon = Horizon()
        self.text_indexes = TextIndexes(
            indexes,
            self.background_pool,
            interval_s=settings.tailer_interval_s,
            workers=settings.bm25_workers,
            open_indexes=settings.bm25_open_indexes,
            idle_s=settings.bm25_idle_s,
            horizon=self.horizon,
        )
        self.ann = AnnIndexes(indexes, self.horizon, max_live=settings.ann_max_delta)
        self.retention = OutboxRetention(
            self.background_pool,
            settings,
            text_indexes=self.text_indexes,
            ann=self.ann,
            horizon=self.horizon,
        )
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
            rebuild_after=(
                None
                if settings.ann_rebuild_fraction == 0
                else lambda vectors: max(
                    settings.ann_rebuild_min_changes,
                    int(settings.ann_rebuild_fraction * vectors),
                )
            ),
        )
        self.embedders = CollectionEmbedders(self.outbound)
        self.hnsw = HnswBuilds(dsn, settings)
        if take_over_jobs:  # a one-shot command's engine would cancel the build as it closes
            self.hnsw.wants_snapshot = self._queue_first_build
        self.planner = QueryPlanner(
            self.db,
            settings,
            text_indexes=self.text_indexes,
            ann=self.ann,
            embedders=self.embedders,
            hnsw=self.hnsw,
            metrics=self.metrics,
            reranker=Reranker(self.outbound),
        )
        self.writes = Writes(
            self.db, settings, embedders=self.embedders, planner=self.planner, metrics=self.metrics
        )
        self.collections = Collections(
            self.db,
            text_indexes=self.text_indexes,
            ann=self.ann,
            embedders=self.embedders,
            hnsw=self.hnsw,
            outbound=self.outbound,
        )
        self.collections.on_drop = self.planner.collections.forget_name
        self.metrics.watch(lambda: database_gauges(self.db, self.text_indexes, self.ann))

    @classmethod
    def start(cls, settings: Settings, *, take_over_jobs: bool = True) -> Engine:
        """Connect (starting embedded Postgres if no URL is set), migrate, open the pool, and
        start the background work.

        ``take_over_jobs``: also run the jobs of service processes that went silent; one-shot
        commands leave them to the processes that serve."""
        connected = connect(settings)
        engine = cls(
            settings,
            connected.pool,
            connected.dsn,
            connected.embedded,
            replica_pools=connected.replica_pools,
            take_over_jobs=take_over_jobs,
            admin_dsn=connected.admin_dsn,
        )
        # one-shot commands do not probe the engines (the serving processes do, at start)
        engine.start_background(check_engines=take_over_jobs)
        return engine

    def start_background(self, *, check_engines: bool = True) -> None:
        """Start following the outbox (BM25, FAISS live segments, prefixes, KV events) and
        running build jobs; with ``check_engines``, probe the KV engines once."""
        problem = faiss_install_problem()
        if problem is not None:
            log.warning("%s", problem)
        self.retention.start()  # reported before the indexes are followed
        self.text_indexes.start()
        self.ann.start(self.background_pool, self.settings.tailer_interval_s)
        self.context.start()
        if check_engines and self.settings.kv_check_at_start:
            self.context.check_engines_at_start(self.outbound)
        self.jobs.start()

    def _queue_first_build(self, row: catalog.CollectionRow) -> None:
        """A collection grown past UNIDB_ANN_AUTO_BUILD_ROWS gets its FAISS build queued,
        on a thread of its own: the query that noticed does not wait for the job's row."""

        def queue() -> None:
            try:
                self.jobs.build_first(row.id)
            except Exception:
                log.exception("collection %s: could not queue its FAISS build", row.name)

        threading.Thread(target=queue, name=f"unidb-first-build-{row.id}", daemon=True).start()

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
        self.ann.close()
        self.retention.close()  # its row protected the indexes until they stopped
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
        return self.collections.create(spec)

    def get_collection(self, name: str) -> Collection:
        return self.collections.get(name)

    def list_collections(self) -> list[Collection]:
        return self.collections.list_all()

    def set_query_defaults(self, name: str, defaults: QueryDefaults | None) -> Collection:
        if defaults is not None and defaults.rerank is not None:
            # refused now, not at every query that would use it
            self.outbound.resolve(defaults.rerank.url, field="rerank.url")
        return self.collections.set_query_defaults(name, defaults)

    def delete_collection(self, name: str) -> DeleteResult:
        return self.collections.delete(name)

    def upsert_documents(self, collection: str, documents_: list[Document]) -> UpsertResult:
        return self.writes.upsert_documents(collection, documents_)

    def get_document(self, collection: str, document_id: str) -> StoredDocument:
        with self.transaction() as conn:
            return documents.get(conn, catalog.get(conn, collection), document_id)

    def delete_document(self, collection: str, document_id: str) -> DeleteResult:
        return self.writes.delete_document(collection, document_id)

    def delete_documents(self, collection: str, request: DeleteWhere) -> DeleteCount:
        return self.writes.delete_documents(collection, request)

    def query(self, collection: str, request: QueryRequest) -> QueryResponse:
        return self.planner.query(collection, request)

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

    def check_engines(self) -> EngineChecks:
        return self.context.check_engines(self.outbound)

    # -- ANN index builds ----------------------------------------------------------------

    def build_index(self, collection: str, request: IndexBuildRequest) -> Job:
        """Queue a FAISS build of the collection's vectors; answers the job at once."""
        with self.transaction() as conn:
            job, task = self.jobs.plan_build(conn, collection, request)
        self.jobs.submit(task)
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
        """Opt the collection into a pgvector HNSW index and build it now (blocking); False
        if another build holds it."""
        with self.transaction() as conn:
            row = catalog.get(conn, collection)
            if not row.pgvector_hnsw:
                conn.execute(
                    "UPDATE unidb.collections SET pgvector_hnsw = true WHERE id = %s", (row.id,)
                )
                row = catalog.get(conn, collection)
        return self.hnsw.build(row)

    def wait_for_index_builds(self) -> None:
        """Block until the background HNSW builds started so far have finished."""
        self.hnsw.wait()
