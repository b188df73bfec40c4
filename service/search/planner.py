"""A query from request to hits: limits, the filter, the retrievers each mode runs (BM25,
FAISS, pgvector HNSW or exact), fusion, and hydration, on one read transaction."""

from __future__ import annotations

import time
from typing import Any, Literal

from psycopg import sql

from unidb.errors import InvalidInput, NotFound, Unavailable
from unidb.indexing.bm25 import Bm25Index, IndexRetired
from unidb.indexing.outbox import HORIZON_STATEMENT
from unidb.indexing.pg import Executor
from unidb.indexing.text_indexes import TextIndexes
from unidb.models import QueryExplain, QueryRequest, QueryResponse, RerankSpec
from unidb.service.auth.tenancy import current_tenant
from unidb.service.collection_embedders import CollectionEmbedders
from unidb.service.config import Settings
from unidb.service.db.database import Database, ReadTransaction, Statement
from unidb.service.metrics import Metrics
from unidb.service.query_stages import StageClock, lap, note_changed, query_clock
from unidb.service.search import hits, passages
from unidb.service.search.ann import ann_search
from unidb.service.search.ann_indexes import AnnIndexes, Served
from unidb.service.search.bm25 import bm25_search
from unidb.service.search.candidates import Changes
from unidb.service.search.collection_rows import CollectionRows, StaleCollection
from unidb.service.search.filters import CompiledFilter, compile_filter
from unidb.service.search.fusion import fuse
from unidb.service.search.hnsw_builds import HnswBuilds
from unidb.service.search.pgvector import (
    nearest,
    nearest_with_rows,
    scan_settings,
    scored,
    vector_search,
)
from unidb.service.search.rerank import Reranker
from unidb.service.store import catalog, documents
from unidb.service.store.commit_tokens import token_xid


class IndexBehind(Exception):
    """An index answering the query is below the pruned outbox horizon: answer again."""


def with_query_defaults(request: QueryRequest, row: catalog.CollectionRow) -> QueryRequest:
    """``request`` with the collection's fusion and alpha where it names none."""
    defaults = row.query_defaults
    if defaults is None:
        return request
    unset = {
        name: getattr(defaults, name)
        for name in ("fusion", "alpha")
        if name not in request.model_fields_set and getattr(defaults, name) is not None
    }
    return request.model_copy(update=unset) if unset else request


class QueryPlanner:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        text_indexes: TextIndexes,
        ann: AnnIndexes,
        embedders: CollectionEmbedders,
        hnsw: HnswBuilds,
        metrics: Metrics,
        reranker: Reranker,
    ) -> None:
        self.reranker = reranker
        self.db = db
        self.settings = settings
        self.text_indexes = text_indexes
        self.ann = ann
        self.embedders = embedders
        self.hnsw = hnsw
        self.metrics = metrics
        self.collections = CollectionRows()
        hnsw.on_built = self.collections.forget_id

    def query(self, collection: str, request: QueryRequest) -> QueryResponse:
        began = time.perf_counter()
        clock = query_clock.get()
        token = None
        if clock is None:  # not started by the REST route: this call records its stages
            clock = StageClock(began)
            token = query_clock.set(clock)
        else:
            clock.lap("dispatch")  # from the event loop to this worker thread
        try:
            answer, request = self._answered(collection, request, clock)
        finally:
            if token is not None:
                query_clock.reset(token)
                self.metrics.observe_stages(clock)
        self.metrics.queries.labels(request.mode, answer.vector_index or "none").observe(
            time.perf_counter() - began
        )
        if request.explain:
            answer.explain = QueryExplain.model_construct(
                stages_ms=clock.milliseconds(),
                candidates=self.depth(request),
                changed_since_index=clock.changed,
                vector_plan=clock.vector_plan,
            )
        return answer

    def _answered(
        self, collection: str, request: QueryRequest, clock: StageClock
    ) -> tuple[QueryResponse, QueryRequest]:
        """The answer, reranked when the request names a rerank stage or the collection
        has a default one (``rerank: null`` turns the default off); and the request as
        answered. A default is read from the collection's row as this process remembers
        it, then checked against the row the query read: a default set or cleared since
        applies to this answer already."""
        if "rerank" in request.model_fields_set or request.rerank is not None:
            if request.rerank is None:
                answer = self._query(collection, request)
                clock.lap("commit")
                return answer, request
            return self._reranked(collection, request, clock), request
        default = self._default_rerank(collection, request)
        if default is None:
            answer = self._query(collection, request)
            clock.lap("commit")
            default = self._default_rerank(collection, request)
            if default is None:
                return answer, request
            reranked = request.model_copy(update={"rerank": default})
            return self._reranked(collection, reranked, clock), reranked
        reranked = request.model_copy(update={"rerank": default})
        answer = self._retrieved_for(collection, reranked)
        clock.lap("commit")
        now = self._default_rerank(collection, request)
        if now is None:  # cleared meanwhile
            answer.hits = answer.hits[: request.k]
            return answer, request
        reranked = request.model_copy(update={"rerank": now})
        answer = self.reranker.apply(reranked, answer)
        clock.lap("rerank")
        return answer, reranked

    def _default_rerank(self, collection: str, request: QueryRequest) -> RerankSpec | None:
        """The collection's default rerank stage for ``request`` (none for a query without
        text), from the row this process remembers: a first query finds it when its
        answer comes back, and is answered again with it."""
        if not request.text:
            return None
        row = self.collections.get((current_tenant.get(), collection))
        if row is None or row.query_defaults is None:
            return None
        return row.query_defaults.rerank

    def _reranked(self, collection: str, request: QueryRequest, clock: StageClock) -> QueryResponse:
        """Retrieve the reranker's candidates (after the read transaction ends, so the call
        holds no connection), then have it order them."""
        answer = self._retrieved_for(collection, request)
        clock.lap("commit")
        answer = self.reranker.apply(request, answer)
        clock.lap("rerank")
        return answer

    def _retrieved_for(self, collection: str, request: QueryRequest) -> QueryResponse:
        """The fused hits a rerank of ``request`` reads: its top_n, or k if more."""
        assert request.rerank is not None
        self.check_limits(request.k, request.text, "text")
        if request.rerank.top_n > self.settings.max_k:
            raise InvalidInput(
                f"top_n is {request.rerank.top_n}, over the limit of {self.settings.max_k} "
                "(UNIDB_MAX_K)",
                field="rerank.top_n",
            )
        self.reranker.check(request)
        wide = request.model_copy(update={"k": self.reranker.depth(request)})
        return self._query(collection, wide)

    def depth(self, request: QueryRequest) -> int:
        """How deep each retriever ranks: k, or for hybrid enough candidates to fuse."""
        if request.mode != "hybrid":
            return request.k
        return max(request.k, self.settings.hybrid_candidates)

    def check_limits(self, k: int, text: str | None, text_field: str) -> None:
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
        self.check_limits(request.k, request.text, "text")
        if request.after is not None:
            token_xid(request.after)  # a malformed token is refused before any work
        key = (current_tenant.get(), collection)
        remembered = self.collections.get(key)
        if remembered is not None and request.mode != "vector":
            if self.text_indexes.opened(remembered.id) is None:
                # reopening an index for a row that may be gone would rebuild it on disk:
                # look the collection up first
                remembered = None
        if remembered is not None:
            try:
                return self._run(key, request, remembered)
            except StaleCollection:
                # answered from a row that no longer holds (dropped, re-created elsewhere, or
                # its query defaults changed)
                self.collections.forget(key)
            except (InvalidInput, NotFound):
                # the caller's mistake, unless the remembered row misled the checks
                if self._still_current(key, remembered):
                    raise
                self.collections.forget(key)
            except (IndexBehind, IndexRetired):
                pass  # the indexes below the horizon are let go of: they answer no more
        for _ in range(2):
            try:
                return self._run(key, request, None)
            except (IndexBehind, IndexRetired):
                continue
        raise Unavailable(
            "the collection's indexes are being rebuilt (the outbox was pruned past them "
            "while this process was silent); retry shortly"
        )

    def _still_current(self, key: tuple[str, str], remembered: catalog.CollectionRow) -> bool:
        """Whether the collection is still the one ``remembered`` describes."""
        with self.db.reading(consistency="strong", after=None) as read:
            (found,) = read.finish(catalog.lookup(key[1]))
        return bool(found) and catalog.found(found, key[1]) == remembered

    def _run(
        self, key: tuple[str, str], request: QueryRequest, remembered: catalog.CollectionRow | None
    ) -> QueryResponse:
        # the HNSW scan settings travel with the transaction's first statement
        settings = [self._scan_settings(request)] if request.mode != "bm25" else []
        with self.db.reading(consistency=request.consistency, after=request.after) as read:
            lap("connect")
            if remembered is None:
                (found, *_) = read.begin_with(catalog.lookup(key[1]), *settings)
                row = self.collections.remember(key, catalog.found(found, key[1]))
            else:
                row = remembered
                read.begin(*settings)
            request = with_query_defaults(request, row)
            # compiled once the collection is known to exist (and within the filter limits)
            where = self.compiled_filter(request.filter) if request.filter else None
            lap("plan")
            wants_embedding = (
                request.vector is None
                and request.mode in ("vector", "hybrid")
                and bool(request.text)
                and row.embedder is not None
            )
            if not wants_embedding:
                return self._answer(read, key, row, request, request.vector, where, remembered)
            embedder = self.embedders.get(row)
            read.finish()
        # embed outside a transaction: a model call must not hold a connection
        assert embedder is not None and request.text
        lap("commit")
        query_vector = self.embedders.embed(embedder, [request.text])[0]
        lap("embed")
        with self.db.reading(consistency=request.consistency, after=request.after) as read:
            read.begin(*settings)
            lap("connect")
            return self._answer(read, key, row, request, query_vector, where, remembered)

    def _scan_settings(self, request: QueryRequest) -> Statement:
        return scan_settings(
            self.depth(request),
            request.ef_search or self.settings.hnsw_ef_search,
            self.settings.hnsw_max_scan_tuples,
        )

    def _answer(
        self,
        read: ReadTransaction,
        key: tuple[str, str],
        row: catalog.CollectionRow,
        request: QueryRequest,
        query_vector: Any,
        where: CompiledFilter | None,
        remembered: catalog.CollectionRow | None,
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

        if request.mode == "vector" and vector is not None and not row.chunked:
            one_trip = self._vector_in_one_round_trip(
                read, key, row, request, vector, where, remembered is not None
            )
            if one_trip is not None:
                return one_trip
        depth = self.depth(request)
        bm25_hits: list[tuple[int, float]] = []
        vector_hits: list[tuple[int, float]] = []
        exhaustive = True
        served_by: Literal["faiss", "hnsw", "exact"] | None = None
        # each index's watermark first, then what changed since the oldest, in one read
        index = self.text_indexes.get(row.id) if run_bm25 else None
        served = self.ann.get(row.id) if vector is not None else None
        strong = request.consistency == "strong"
        if index is not None and request.after is not None:
            if index.watermark <= token_xid(request.after):
                strong = True  # the index has not reached that commit: merge what it lacks
        bm25_watermark = index.watermark if index is not None else 0
        watermarks = [bm25_watermark] if index is not None and strong else []
        if served is not None:
            watermarks.append(served.watermark)
        # one round trip where it can; a chunked collection's hits read their chunks too
        one_trip_bm25 = request.mode == "bm25" and not row.chunked
        if one_trip_bm25 and index is not None and request.text and where is None:
            one_trip = self._bm25_in_one_round_trip(
                read, key, row, request, index, watermarks, remembered is not None
            )
            if one_trip is not None:
                return one_trip
        # the outbox read and a pgvector statement (it needs no changes) in one round trip
        ahead: list[Statement] = []
        if watermarks:
            ahead += [Changes.statement(row, min(watermarks)), HORIZON_STATEMENT]
        use_hnsw = row.vector_index == "hnsw"
        if vector is not None and served is None:
            if not use_hnsw:
                self.hnsw.schedule(read, row)
            ahead.append(nearest(row, vector, depth, where, indexed=use_hnsw))
        searched: list[tuple[int, float]] | None = None
        results: list[list[tuple[Any, ...]]] = []
        if ahead and index is not None and request.text and where is None:
            # the index searches while the database works; used unless something is masked
            def search_index(text: str = request.text) -> None:
                nonlocal searched
                searched = index.search(text, limit=depth)

            results = read.first(*ahead, meanwhile=search_index)
        elif ahead:
            results = read.first(*ahead)
        if watermarks:
            self._check_horizon(results[1], watermarks)
        changes = Changes(results[0] if watermarks else [])
        if watermarks:
            lap("delta")
        if vector is not None:
            vector_hits, served_by = self._vector_hits(
                read,
                row,
                vector,
                depth,
                where,
                served,
                changes,
                results[-1] if served is None else None,
                ef_search=request.ef_search,
            )
            exhaustive = served_by == "exact"
            lap("vector")
        if index is not None and request.text:
            # against the watermark read before the search ran: a newer one could hide what
            # the searcher used lacks
            masked = changes.since(bm25_watermark) if strong else set()
            bm25_hits = bm25_search(
                read,
                row,
                index,
                request.text,
                limit=depth,
                where=where,
                masked=masked,
                searched=searched,
            )
            lap("bm25")
        ranked = fuse(request, bm25_hits, vector_hits, depth=depth)[: request.k]
        lap("fuse")
        # the hits' rows (and chunks), the collection's row as it is now, and COMMIT: one
        # round trip
        with_passages = bool(ranked) and row.chunked and request.passages > 0
        reads = [hits.statement(row, ranked, with_version=with_passages)] if ranked else []
        if with_passages:
            reads.append(passages.statement(row, [doc_key for doc_key, _ in ranked], vector))
        *hit_rows, current = read.finish(*reads, catalog.lookup(row.name))
        self.collections.check(key, row, current, remembered is not None)
        found = hits.build(
            hit_rows[0] if hit_rows else [], ranked, dict(bm25_hits), dict(vector_hits)
        )
        if with_passages:
            passages.attach(
                found,
                hit_rows[0],
                hit_rows[1],
                collection=row,
                text=request.text,
                index=index,
                limit=request.passages,
            )
        elif row.chunked:
            for hit in found:
                hit.passages = []
        lap("hydrate")
        return QueryResponse(hits=found, exhaustive=exhaustive, vector_index=served_by)

    def _check_horizon(self, rows: list[tuple[Any, ...]], watermarks: list[int]) -> None:
        """Raise IndexBehind if the outbox is pruned past an answering index's watermark:
        the changes it lacks are gone (a process silent past the stale limit)."""
        horizon = int(rows[0][0]) if rows else 0
        built = [w for w in watermarks if w > 0]  # an unbuilt index counts every row changed
        if built and min(built) < horizon:
            self.text_indexes.behind(horizon)  # and remembered: FAISS snapshots below it too
            raise IndexBehind

    def _bm25_in_one_round_trip(
        self,
        read: ReadTransaction,
        key: tuple[str, str],
        row: catalog.CollectionRow,
        request: QueryRequest,
        index: Bm25Index,
        watermarks: list[int],
        remembered: bool,
    ) -> QueryResponse | None:
        """A BM25 query without a filter: the index's answer, its hits' rows, the
        collection check and (strong) the outbox read since the index's watermark, in one
        round trip. None when documents changed since then, for the general path to mask
        them and score them from their rows."""
        assert request.text
        searched = index.search(request.text, limit=request.k)
        lap("bm25")
        ranked = fuse(request, searched, [], depth=request.k)[: request.k]
        statements: list[Statement] = (
            [Changes.statement(row, min(watermarks))] if watermarks else []
        )
        statements += [HORIZON_STATEMENT] if watermarks else []
        statements += [hits.statement(row, ranked)] if ranked else []
        *results, current = read.finish(*statements, catalog.lookup(row.name))
        self.collections.check(key, row, current, remembered)
        if watermarks:
            changed, horizon, *results = results
            self._check_horizon(horizon, watermarks)
            if changed:
                read.begin()  # the general path reads afresh
                return None
            note_changed(0)
            lap("delta")
        found = hits.build(results[0] if results else [], ranked, dict(searched), {})
        lap("hydrate")
        return QueryResponse(hits=found, exhaustive=True, vector_index=None)

    def _vector_in_one_round_trip(
        self,
        read: ReadTransaction,
        key: tuple[str, str],
        row: catalog.CollectionRow,
        request: QueryRequest,
        vector: Any,
        where: CompiledFilter | None,
        remembered: bool,
    ) -> QueryResponse | None:
        """A vector query pgvector answers (no FAISS snapshot), as one statement that reads
        the hits' rows too, sent with the collection check in one round trip; None when
        the HNSW walk came up short or FAISS serves the collection, for the general path."""
        if self.ann.get(row.id) is not None:
            return None
        use_index = row.vector_index == "hnsw"
        if not use_index:
            self.hnsw.schedule(read, row)
        nearest = nearest_with_rows(row, vector, request.k, where, indexed=use_index)
        found, current = read.finish(nearest, catalog.lookup(row.name))
        self.collections.check(key, row, current, remembered)
        if use_index and len(found) < request.k:
            read.begin(self._scan_settings(request))  # the general path reads afresh
            return None  # short of k after the walk: the exact path fills it
        lap("vector")
        vector_hits = [(doc_key, scored(row, distance)) for doc_key, distance, *_ in found]
        ranked = fuse(request, [], vector_hits, depth=request.k)[: request.k]
        rows = [(doc_key, doc_id, text, metadata) for doc_key, _, doc_id, text, metadata in found]
        hit_list = hits.build(rows, ranked, {}, dict(vector_hits))
        lap("hydrate")
        return QueryResponse(
            hits=hit_list, exhaustive=not use_index, vector_index="hnsw" if use_index else "exact"
        )

    def _vector_hits(
        self,
        conn: Executor,
        row: catalog.CollectionRow,
        vector: Any,
        k: int,
        where: CompiledFilter | None,
        served: Served | None,
        changes: Changes,
        nearest_rows: list[tuple[Any, ...]] | None,
        *,
        ef_search: int | None = None,
    ) -> tuple[list[tuple[int, float]], Literal["faiss", "hnsw", "exact"]]:
        """The vector retriever's hits and what served them. ``nearest_rows``: what the
        pgvector statement already sent answered (no FAISS snapshot served)."""
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
                changed=changes.since(served.watermark),
                ef_search=ef_search,
            )
            if found is not None:
                if row.pgvector_hnsw and row.hnsw_valid is None:
                    self.hnsw.schedule(conn, row)  # opted in: built whoever answers
                return found, "faiss"
        use_index = row.vector_index == "hnsw"
        if nearest_rows is None and not use_index:
            self.hnsw.schedule(conn, row)
        found, exhaustive = vector_search(
            conn,
            row,
            vector,
            k=k,
            where=where,
            use_index=use_index,
            found=nearest_rows,
        )
        return found, "exact" if exhaustive else "hnsw"

    def compiled_filter(self, spec: dict[str, Any]) -> CompiledFilter:
        """A metadata filter as SQL on the documents alias ``d``."""
        return compile_filter(
            spec,
            column=sql.SQL("d.metadata"),
            max_depth=self.settings.max_filter_depth,
            max_conditions=self.settings.max_filter_conditions,
            max_in_values=self.settings.max_filter_in_values,
        )
