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
from typing import Any, Literal

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from unidb.errors import (
    BadGateway,
    GatewayTimeout,
    InvalidInput,
    NotFound,
    ServerError,
    Unavailable,
    UnidbError,
)
from unidb.indexing import outbox
from unidb.indexing.bm25 import document_body
from unidb.indexing.embedders import (
    Embedder,
    EmbedderBusy,
    EmbedderError,
    EmbedderTimeout,
    get_embedder,
)
from unidb.indexing.faiss_index import BuildRefused
from unidb.indexing.text_indexes import TextIndexes
from unidb.models import (
    Collection,
    CollectionCreate,
    Consistency,
    ContextRequest,
    ContextResponse,
    DeleteCount,
    DeleteDocumentOp,
    DeleteResult,
    DeleteStateOp,
    DeleteWhere,
    Document,
    Health,
    IndexBuildRequest,
    IndexStatus,
    Job,
    PrefixList,
    PutStateOp,
    QueryRequest,
    QueryResponse,
    StateEntry,
    StateList,
    StatePut,
    StoredDocument,
    TransactionRequest,
    TransactionResult,
    UpsertDocumentsOp,
    UpsertResult,
    WarmRequest,
    WarmResult,
)
from unidb.service.auth.keys import KeyChecker
from unidb.service.auth.tenancy import SERVICE_WIDE, current_tenant
from unidb.service.config import Settings
from unidb.service.context import registry
from unidb.service.context.service import ContextService
from unidb.service.context.warmup import warm
from unidb.service.db.embedded import EmbeddedPostgres
from unidb.service.db.pool import (
    check_pgvector,
    migrate,
    open_pool,
    service_connection,
    service_dsn,
    warn_if_privileged,
)
from unidb.service.db.replicas import Replicas
from unidb.service.jobs.runner import JobRunner, create_build_job, plan_build
from unidb.service.metrics import Metrics
from unidb.service.outbound import Outbound
from unidb.service.search.ann import ann_search
from unidb.service.search.ann_indexes import AnnIndexes, BuildTask
from unidb.service.search.bm25 import bm25_search
from unidb.service.search.filters import CompiledFilter, compile_filter
from unidb.service.search.fusion import fuse
from unidb.service.search.hits import hydrate
from unidb.service.search.hnsw import build_hnsw
from unidb.service.search.pgvector import vector_search
from unidb.service.store import catalog, documents, jobs, state
from unidb.service.store.commit_tokens import (
    at_op,
    commit_token,
    current_xid,
    token_lsn,
    token_xid,
    wal_position,
)

log = logging.getLogger("unidb.engine")

# psycopg refuses NUL characters before sending (no SQLSTATE); 22021: bad byte sequence;
# 22P05: a character jsonb cannot hold (\u0000 inside a JSON value)
_UNSTORABLE_INPUT = (None, "22021", "22P05")

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
        background_pool: ConnectionPool[Connection] | None = None,
        replica_pools: list[ConnectionPool[Connection]] | None = None,
        *,
        take_over_jobs: bool = True,
        admin_dsn: str | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.dsn = dsn
        # the role migrations ran as (embedded Postgres: its superuser); the service's own
        # connections use ``dsn``
        self.admin_dsn = admin_dsn or dsn
        self.replicas = Replicas(replica_pools or [], wait_s=settings.replica_wait_ms / 1000)
        self._owns_background_pool = background_pool is None
        self.background_pool = background_pool or open_pool(dsn, settings, background=True)
        self._embedded = embedded
        self._limits = documents.Limits(
            max_batch_documents=settings.max_batch_documents,
            max_text_chars=settings.max_text_chars,
        )
        self._index_checked_at: dict[int, float] = {}
        self._index_builds: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self._embedders: dict[int, Embedder] = {}
        self.outbound = Outbound.from_settings(settings)
        self.text_indexes = TextIndexes(
            settings.data_dir / "indexes",
            self.background_pool,
            interval_s=settings.tailer_interval_s,
            workers=settings.bm25_workers,
            open_indexes=settings.bm25_open_indexes,
            idle_s=settings.bm25_idle_s,
        )
        self.text_indexes.start()
        self.context = ContextService(settings, self.background_pool)
        self.context.start()
        self.ann = AnnIndexes(settings.data_dir / "indexes")
        self.metrics = Metrics()
        self.keys = KeyChecker(
            concurrency=settings.key_check_concurrency,
            failures_allowed=settings.key_failures_allowed,
        )
        self.metrics.watch(self)
        self.jobs = JobRunner(
            self.background_pool,
            self.ann,
            orphan_after_s=settings.job_orphan_after_s,
            take_over=take_over_jobs,
        )
        self.jobs.start()

    @classmethod
    def start(cls, settings: Settings, *, take_over_jobs: bool = True) -> Engine:
        """Connect (starting embedded Postgres if no URL is set), migrate, open the pool.

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
        return cls(
            settings,
            pool,
            dsn,
            embedded,
            replica_pools=replica_pools,
            take_over_jobs=take_over_jobs,
            admin_dsn=admin_dsn,
        )

    @classmethod
    def open_embedded(cls, path: Path, **overrides: Any) -> Engine:
        """An engine on embedded Postgres under ``path`` (the ``Client.embedded`` backend)."""
        settings = Settings(data_dir=path, database_url=None, **overrides)
        return cls.start(settings)

    def close(self) -> None:
        """Wait for index builds, close the pool, stop embedded Postgres if we started it.

        Closing twice is harmless."""
        self.wait_for_index_builds()
        self.jobs.close()
        self.context.close()
        self.text_indexes.close()
        if self._owns_background_pool:
            self.background_pool.close()
        self.replicas.close()
        self.pool.close()
        self.outbound.close()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    @contextmanager
    def transaction(
        self, *, service_wide: bool = False, pool: ConnectionPool[Connection] | None = None
    ) -> Iterator[Connection]:
        """One pooled connection in one transaction: committed on success, rolled back on error.

        Row-level security shows it the current request's tenant only, or with
        ``service_wide`` every tenant (for the service's own bookkeeping). ``pool`` is the
        primary's unless a read replica's is given."""
        tenant = SERVICE_WIDE if service_wide else current_tenant.get()
        with self._database_errors(), (pool or self.pool).connection() as conn:
            conn.execute("SELECT set_config('unidb.tenant', %s, true)", (tenant,))
            yield conn

    @contextmanager
    def _database_errors(self) -> Iterator[None]:
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
                    self.metrics.reads.labels("replica").inc()
                    yield conn
                    return
        # no replica, or it has not replayed the commit in time
        self.metrics.reads.labels("primary").inc()
        with self.transaction() as conn:
            yield conn

    def database_gauges(self) -> dict[str, Any]:
        """Index lag per collection, jobs by status and pool use, read now for `/metrics`."""
        lag: dict[tuple[str, str, str], int] = {}
        with self.transaction(service_wide=True) as conn:
            for collection_id, tenant, name in conn.execute(
                "SELECT id, tenant, name FROM unidb.collections"
            ).fetchall():
                opened = self.text_indexes.opened(collection_id)
                if opened is not None:
                    lag[tenant, name, "bm25"] = outbox.lag(
                        conn, collection_id, since=opened.watermark
                    )
                ann = self.ann.status(conn, collection_id)
                if ann is not None:
                    lag[tenant, name, "faiss"] = ann.lag
            counted = dict(
                conn.execute("SELECT status, count(*) FROM unidb.jobs GROUP BY status").fetchall()
            )
        stats = self.pool.get_stats()
        return {
            "lag": lag,
            "jobs": {
                s: counted.get(s, 0) for s in ("queued", "running", "done", "failed", "cancelled")
            },
            "pool": {
                "open": stats.get("pool_size", 0),
                "idle": stats.get("pool_available", 0),
                "waiting": stats.get("requests_waiting", 0),
                "max": self.pool.max_size,
            },
        }

    # -- Backend protocol ---------------------------------------------------------------

    def health(self) -> Health:
        with self.transaction() as conn:
            conn.execute("SELECT 1")
        return Health(status="ok")

    def create_collection(self, spec: CollectionCreate) -> Collection:
        if spec.embedder is not None and spec.embedder.kind == "openai" and spec.embedder.url:
            self.outbound.resolve(spec.embedder.url, field="embedder.url")
        with self.transaction() as conn:
            row = catalog.create(conn, spec)
            return catalog.describe(conn, row)

    def get_collection(self, name: str) -> Collection:
        with self.transaction() as conn:
            row = catalog.get(conn, name)
            return catalog.describe(
                conn, row, self._bm25_status(conn, row), self.ann.status(conn, row.id)
            )

    def list_collections(self) -> list[Collection]:
        with self.transaction() as conn:
            return [
                catalog.describe(
                    conn, row, self._bm25_status(conn, row), self.ann.status(conn, row.id)
                )
                for row in catalog.list_all(conn)
            ]

    def _bm25_status(self, conn: Connection, row: catalog.CollectionRow) -> IndexStatus:
        index = self.text_indexes.get(row.id)
        return IndexStatus(
            watermark=index.watermark, lag=outbox.lag(conn, row.id, since=index.watermark)
        )

    def delete_collection(self, name: str) -> DeleteResult:
        with self.transaction() as conn:
            row = catalog.get(conn, name)
        # dropping the HNSW index while this process builds it would deadlock with the build
        with self._lock:
            build = self._index_builds.get(row.id)
        if build is not None:
            build.join()
        with self.transaction() as conn:
            if not catalog.drop(conn, name):
                raise NotFound(f"collection {name!r} does not exist", field="collection")
            jobs.cancel_for_collection(conn, row.id)
        self.text_indexes.drop(row.id)  # the collection's derived indexes, ANN ones too
        self.ann.drop(row.id)
        with self._lock:
            self._embedders.pop(row.id, None)
        return DeleteResult(deleted=True)

    def embedder(self, row: catalog.CollectionRow) -> Embedder | None:
        """The collection's embedder, made once per process."""
        spec = row.embedder
        if spec is None:
            return None
        with self._lock:
            embedder = self._embedders.get(row.id)
            if embedder is None:
                # the operator's list may have changed since the collection was made
                endpoint = (
                    self.outbound.embedding_endpoint(spec.url or "", field="embedder.url")
                    if spec.kind == "openai"
                    else None
                )
                embedder = get_embedder(spec.kind, dim=row.dim, endpoint=endpoint, model=spec.model)
                self._embedders[row.id] = embedder
            return embedder

    def _embed(self, embedder: Embedder, texts: list[str]) -> Any:
        try:
            return embedder.embed_documents(texts)
        except EmbedderBusy as exc:
            raise Unavailable(f"{exc} (UNIDB_EMBEDDER_CONCURRENCY)", field="embedder") from exc
        except EmbedderTimeout as exc:
            raise GatewayTimeout(f"{exc} (UNIDB_EMBEDDER_TIMEOUT_S)", field="embedder") from exc
        except EmbedderError as exc:
            raise BadGateway(str(exc), field="embedder") from exc

    def _with_embeddings(self, collection: str, documents_: list[Document]) -> list[Document]:
        """Documents without an embedding get one from the collection's embedder, if any.

        Called outside any transaction: a model call must not hold a connection."""
        with self.transaction() as conn:
            row = catalog.get(conn, collection)
        missing = [d for d in documents_ if d.embedding is None] if row.embedder else []
        embedder = self.embedder(row) if missing else None
        if embedder is None:
            return documents_
        vectors = self._embed(embedder, [document_body(d.text, d.metadata) for d in missing])
        filled = {id(d): v for d, v in zip(missing, vectors, strict=True)}
        return [
            d.model_copy(update={"embedding": filled[id(d)]}) if id(d) in filled else d
            for d in documents_
        ]

    def upsert_documents(self, collection: str, documents_: list[Document]) -> UpsertResult:
        documents_ = self._with_embeddings(collection, documents_)
        with self.transaction() as conn:
            result = self._upsert(conn, collection, documents_)
        self.metrics.ingested.labels(collection).inc(len(documents_))
        return result

    def _upsert(
        self, conn: Connection, collection: str, documents_: list[Document]
    ) -> UpsertResult:
        # the collection is held against a concurrent drop until commit
        row = catalog.get(conn, collection, lock=True)
        return documents.upsert(conn, row, documents_, self._limits)

    def get_document(self, collection: str, document_id: str) -> StoredDocument:
        with self.transaction() as conn:
            return documents.get(conn, catalog.get(conn, collection), document_id)

    def delete_document(self, collection: str, document_id: str) -> DeleteResult:
        with self.transaction() as conn:
            return _delete_document(conn, collection, document_id)

    def delete_documents(self, collection: str, request: DeleteWhere) -> DeleteCount:
        if request.all:
            if request.filter or request.ids is not None:
                raise InvalidInput(
                    "all deletes every document: give it without a filter or ids", field="all"
                )
        elif request.filter is None and request.ids is None:
            raise InvalidInput(
                "give a filter, ids or both; to delete every document, send all: true",
                field="filter",
            )
        elif request.filter == {} and request.ids is None:
            # an empty filter admits every document: deleting them all must be said outright
            raise InvalidInput(
                "an empty filter matches every document; send all: true to delete them all",
                field="filter",
            )
        with self.transaction() as conn:
            # the collection first: nothing is compiled for a collection that is not there
            row = catalog.get(conn, collection, lock=True)
            parts: list[sql.Composable] = [sql.SQL("TRUE")]
            params: list[Any] = []
            if request.filter:
                compiled = self._compiled_filter(request.filter)
                if compiled.matches_everything and request.ids is None:
                    raise InvalidInput(
                        "this filter matches every document whatever its metadata; send "
                        "all: true to delete them all",
                        field="filter",
                    )
                parts.append(compiled.expression)
                params.extend(compiled.params)
            if request.ids is not None:
                parts.append(sql.SQL("d.id = ANY({})").format(sql.Placeholder()))
                params.append(request.ids)
            where = sql.SQL(" AND ").join(parts)
            return DeleteCount(deleted=documents.delete_where(conn, row, where, params))

    def query(self, collection: str, request: QueryRequest) -> QueryResponse:
        began = time.perf_counter()
        answer = self._query(collection, request)
        self.metrics.queries.labels(request.mode, answer.vector_index or "none").observe(
            time.perf_counter() - began
        )
        return answer

    def _compiled_filter(self, spec: dict[str, Any]) -> CompiledFilter:
        """A metadata filter as SQL on the documents alias ``d``."""
        return compile_filter(
            spec,
            column=sql.SQL("d.metadata"),
            max_depth=self.settings.max_filter_depth,
            max_conditions=self.settings.max_filter_conditions,
            max_in_values=self.settings.max_filter_in_values,
        )

    def _check_limits(self, k: int, text: str | None, text_field: str) -> None:
        if k > self.settings.max_k:
            raise InvalidInput(
                f"k is {k}, over the limit of {self.settings.max_k} (UNIDB_MAX_K)", field="k"
            )
        if text is not None and len(text) > self.settings.max_query_chars:
            raise InvalidInput(
                f"the query is {len(text)} characters, over the limit of "
                f"{self.settings.max_query_chars} (UNIDB_MAX_QUERY_CHARS)",
                field=text_field,
            )

    def _query(self, collection: str, request: QueryRequest) -> QueryResponse:
        self._check_limits(request.k, request.text, "text")
        if request.after is not None:
            token_xid(request.after)  # a malformed token is refused before any work
        with self.reading(consistency=request.consistency, after=request.after) as conn:
            row = catalog.get(conn, collection)
            # compiled once the collection is known to exist (and within the filter limits)
            where = self._compiled_filter(request.filter) if request.filter else None
            wants_embedding = (
                request.vector is None
                and request.mode in ("vector", "hybrid")
                and bool(request.text)
                and row.embedder is not None
            )
            if not wants_embedding:
                return self._answer(conn, row, request, request.vector, where)
            embedder = self.embedder(row)
        # embed outside a transaction: a model call must not hold a connection
        assert embedder is not None and request.text
        query_vector = self._embed(embedder, [request.text])[0]
        with self.reading(consistency=request.consistency, after=request.after) as conn:
            return self._answer(conn, row, request, query_vector, where)

    def _answer(
        self,
        conn: Connection,
        row: catalog.CollectionRow,
        request: QueryRequest,
        query_vector: Any,
        where: CompiledFilter | None,
    ) -> QueryResponse:
        run_bm25 = request.mode in ("bm25", "hybrid") and bool(request.text)
        run_vector = request.mode in ("vector", "hybrid") and query_vector is not None
        if request.mode == "bm25" and not run_bm25:
            raise InvalidInput("bm25 mode needs query text", field="text")
        if request.mode == "vector" and not run_vector:
            raise InvalidInput(
                "vector mode needs a query vector, or text and a collection embedder",
                field="vector",
            )
        if not (run_bm25 or run_vector):
            raise InvalidInput("give query text, a query vector, or both", field="text")
        vector = documents.check_vector(row, query_vector, "vector") if run_vector else None

        depth = (
            request.k
            if request.mode != "hybrid"
            else max(request.k, self.settings.hybrid_candidates)
        )
        bm25_hits: list[tuple[int, float]] = []
        vector_hits: list[tuple[int, float]] = []
        exhaustive = True
        served_by: Literal["faiss", "hnsw", "exact"] | None = None
        if vector is not None:
            vector_hits, served_by = self._vector_hits(conn, row, vector, depth, where)
            exhaustive = served_by == "exact"
        if run_bm25 and request.text:
            index = self.text_indexes.get(row.id)
            strong = request.consistency == "strong"
            if request.after is not None and index.watermark <= token_xid(request.after):
                strong = True  # the index has not reached that commit: merge what it lacks
            bm25_hits = bm25_search(
                conn, row, index, request.text, limit=depth, where=where, strong=strong
            )
        ranked = fuse(request, bm25_hits, vector_hits, depth=depth)[: request.k]
        hits = hydrate(conn, row, ranked, dict(bm25_hits), dict(vector_hits))
        return QueryResponse(hits=hits, exhaustive=exhaustive, vector_index=served_by)

    def _vector_hits(
        self,
        conn: Connection,
        row: catalog.CollectionRow,
        vector: Any,
        k: int,
        where: CompiledFilter | None,
    ) -> tuple[list[tuple[int, float]], Literal["faiss", "hnsw", "exact"]]:
        served = self.ann.get(row.id)
        if served is not None:
            found = ann_search(
                conn,
                row,
                served,
                vector,
                k=k,
                where=where,
                exact_below=self.settings.ann_exact_below,
                max_delta=self.settings.ann_max_delta,
            )
            if found is not None:
                return found, "faiss"
        use_index = row.vector_index == "hnsw"
        if not use_index:
            self._maybe_schedule_index(conn, row)
        hits, exhaustive = vector_search(
            conn,
            row,
            vector,
            k=k,
            where=where,
            use_index=use_index,
            ef_search=self.settings.hnsw_ef_search,
            max_scan_tuples=self.settings.hnsw_max_scan_tuples,
        )
        return hits, "exact" if exhaustive else "hnsw"

    # -- context for LLM engines ---------------------------------------------------------

    def build_context(self, request: ContextRequest) -> ContextResponse:
        self._check_limits(request.k, request.query, "query")
        # refused before any search
        self.context.tokenizers.get(request.tokenizer)
        self.context.builder.max_tokens(request)
        found = self.query(
            request.collection,
            QueryRequest(
                text=request.query,
                k=request.k,
                mode=request.mode,
                filter=request.filter,
                consistency=request.consistency,
                after=request.after,
            ),
        )
        with self.transaction() as conn:
            row = catalog.get(conn, request.collection)
            built = self.context.builder.build(conn, row, request, [hit.id for hit in found.hits])
        self.metrics.context_tokens.inc(len(built.token_ids))
        self.metrics.context_cached_tokens.inc(built.cached_tokens)
        return built

    def list_prefixes(self, collection: str | None = None, *, limit: int = 100) -> PrefixList:
        with self.transaction() as conn:
            collection_id = catalog.get(conn, collection).id if collection else None
            return PrefixList(
                prefixes=registry.list_prefixes(conn, collection_id=collection_id, limit=limit)
            )

    def warm_prefix(self, prefix_key: str, request: WarmRequest) -> WarmResult:
        if (request.engine is None) == (request.engine_url is None):
            raise InvalidInput("give one of engine (a name) or engine_url", field="engine")
        field = "engine" if request.engine is not None else "engine_url"
        # only a listed server, checked before anything else is done
        upstream = self.outbound.resolve(request.engine or request.engine_url or "", field=field)
        with self.transaction() as conn:
            found = registry.get(conn, prefix_key)
        if found is None:
            raise NotFound(f"no prefix {prefix_key!r}", field="prefix_key")
        # the engine call holds no database connection
        model, prompt_tokens, cached = warm(
            upstream,
            found.token_ids,
            model=request.model,
            cache_salt=found.cache_salt,
            field=field,
        )
        return WarmResult(
            prefix_key=prefix_key,
            engine=upstream.name,
            engine_url=request.engine_url,
            model=model,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
        )

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

    # -- transactions --------------------------------------------------------------------

    def transact(self, request: TransactionRequest) -> TransactionResult:
        """Apply every operation in one transaction, or none; returns the commit token."""
        ops = []
        for index, op in enumerate(request.ops):
            try:
                ops.append(self._embedded_op(op))
            except UnidbError as exc:
                raise at_op(exc, index) from exc
        results: list[StateEntry | UpsertResult | DeleteResult] = []
        with self.transaction() as conn:
            for index, op in enumerate(ops):
                try:
                    results.append(self._apply(conn, op))
                except UnidbError as exc:
                    raise at_op(exc, index) from exc
            xid = current_xid(conn)
        # read after the commit: the WAL position is then past its commit record
        with self._database_errors(), self.pool.connection() as conn:
            lsn = wal_position(conn)
        return TransactionResult(results=results, commit_token=commit_token(xid, lsn))

    def _embedded_op(self, op: Any) -> Any:
        if not isinstance(op, UpsertDocumentsOp):
            return op
        return op.model_copy(
            update={"documents": self._with_embeddings(op.collection, op.documents)}
        )

    def _apply(self, conn: Connection, op: Any) -> StateEntry | UpsertResult | DeleteResult:
        if isinstance(op, PutStateOp):
            return self._put_state(conn, op.namespace, op.key, op.value, op.if_version)
        if isinstance(op, DeleteStateOp):
            state.delete(conn, op.namespace, op.key, if_version=op.if_version)
            return DeleteResult(deleted=True)
        if isinstance(op, UpsertDocumentsOp):
            return self._upsert(conn, op.collection, op.documents)
        assert isinstance(op, DeleteDocumentOp)
        return _delete_document(conn, op.collection, op.id)

    # -- application state --------------------------------------------------------------

    def get_state(self, namespace: str, key: str) -> StateEntry:
        with self.transaction() as conn:
            return state.get(conn, namespace, key)

    def put_state(self, namespace: str, key: str, body: StatePut) -> StateEntry:
        with self.transaction() as conn:
            return self._put_state(conn, namespace, key, body.value, body.if_version)

    def _put_state(
        self, conn: Connection, namespace: str, key: str, value: Any, if_version: int | None
    ) -> StateEntry:
        state.check_value(value, max_bytes=self.settings.max_state_bytes)
        return state.put(conn, namespace, key, value, if_version=if_version)

    def delete_state(self, namespace: str, key: str, if_version: int | None = None) -> DeleteResult:
        with self.transaction() as conn:
            state.delete(conn, namespace, key, if_version=if_version)
        return DeleteResult(deleted=True)

    def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList:
        with self.transaction() as conn:
            return state.list_entries(conn, namespace, prefix=prefix, after=after, limit=limit)

    # -- vector index ---------------------------------------------------------------------

    def build_vector_index(self, collection: str) -> bool:
        """Build the collection's HNSW index now (blocking); False if another build holds it."""
        with self.transaction() as conn:
            row = catalog.get(conn, collection)
        return self._build(row)

    def wait_for_index_builds(self) -> None:
        """Block until the background HNSW builds started so far have finished."""
        with self._lock:
            builds = list(self._index_builds.values())
        for thread in builds:
            thread.join()

    def _build(self, row: catalog.CollectionRow) -> bool:
        with service_connection(self.dsn, autocommit=True) as conn:
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

    def _maybe_schedule_index(self, conn: Connection, row: catalog.CollectionRow) -> None:
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


def _delete_document(conn: Connection, collection: str, document_id: str) -> DeleteResult:
    row = catalog.get(conn, collection, lock=True)
    if not documents.delete(conn, row, document_id):
        raise NotFound(f"document {document_id!r} is not in collection {collection!r}", field="id")
    return DeleteResult(deleted=True)
