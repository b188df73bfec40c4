"""Generated from ``_async_client.py`` by ``python sdk/_async_to_sync.py``: edit that file,
not this one, then regenerate."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx

from ._client import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    JOB_POLL_S,
    DocumentLike,
    IngestTally,
    JobWatch,
    auth_headers,
    check_seams,
    collection_spec,
    context_request,
    delete_where_request,
    index_request,
    query_defaults,
    query_request,
    shifted,
    validated_batch,
    warm_request,
)
from ._sync_backend import Backend, _HttpBackend
from ._sync_compat import Pipeline, from_engine, open_embedded, sleep
from ._sync_tool_calls import call_tool
from ._sync_transaction import Transaction
from .errors import NotFound, UnidbError
from .models import (
    ChunkerSpec,
    Collection,
    Consistency,
    ContextOrder,
    ContextResponse,
    ContextTemplate,
    Document,
    EmbedderSpec,
    EngineChecks,
    Fusion,
    Health,
    Job,
    Metric,
    PrefixList,
    QueryMode,
    QueryResponse,
    RerankSpec,
    StateEntry,
    StateList,
    StatePut,
    StoredDocument,
    TransactionRequest,
    TransactionResult,
    UpsertResult,
    WarmResult,
)
from .tools import ToolFormat
from .tools import definitions as tool_definitions


class Client:
    """A unidb client.

    ``Client(url)`` talks to a running ``unidb serve`` (``transport=`` puts an httpx
    transport under it: an app in this process, a proxy); ``Client.embedded(path)``
    runs Postgres and the engine inside this process, with no TCP port;
    ``Client(backend=engine)`` uses an engine already open. An engine's calls block:
    an asynchronous client runs each in a worker thread.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        backend: Backend | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        check_seams(backend, transport)
        self._backend: Backend
        if backend is not None:
            self._backend = from_engine(backend)
        else:
            http = httpx.Client(
                base_url=url,
                timeout=timeout,
                headers=auth_headers(headers, api_key),
                transport=transport,
            )
            self._backend = _HttpBackend(http)

    @classmethod
    def embedded(cls, path: str | Path, **settings: Any) -> Client:
        """Start (or reopen) an embedded unidb under ``path``: Postgres and the engine in-process.

        Extra keyword arguments override ``unidb.service`` settings (for example
        ``pool_max_size=4``). Needs the ``server`` extra.
        """
        return cls(backend=open_embedded(path, **settings))

    @property
    def backend(self) -> Backend:
        """What this client talks to: the HTTP backend, or the engine."""
        return self._backend

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release connections; an embedded client also stops its Postgres."""
        self._backend.close()

    def health(self) -> Health:
        """``{"status": "ok"}`` when the server and its database answer."""
        return self._backend.health()

    def create_collection(
        self,
        name: str,
        *,
        dim: int,
        metric: Metric = "cosine",
        embedder: EmbedderSpec | Mapping[str, Any] | None = None,
        pgvector_hnsw: bool = False,
        chunker: ChunkerSpec | Mapping[str, Any] | None = None,
    ) -> Collection:
        """Create a collection for ``dim``-dimensional vectors compared by ``metric``.

        With an ``embedder`` (``{"kind": "minilm"}``, or ``{"kind": "openai", "url": ...}``)
        documents sent without embeddings are embedded on upsert, and query text on search.
        ``pgvector_hnsw`` also keeps a pgvector HNSW index, for ANN from plain SQL, at the
        cost of slower writes; without it FAISS serves ANN. A ``chunker``
        (``{"kind": "tokens", "size": 256, "overlap": 32}``, or ``"sentences"``) splits each
        document on upsert; hits then carry their best ``passages``.
        """
        return self._backend.create_collection(
            collection_spec(
                name, dim, metric, embedder, pgvector_hnsw=pgvector_hnsw, chunker=chunker
            )
        )

    def get_collection(self, name: str) -> Collection:
        """A collection's settings, document count and index state."""
        return self._backend.get_collection(name)

    def list_collections(self) -> list[Collection]:
        """Every collection, by name."""
        return self._backend.list_collections()

    def set_query_defaults(
        self,
        name: str,
        *,
        fusion: Fusion | None = None,
        alpha: float | None = None,
        rerank: RerankSpec | Mapping[str, Any] | None = None,
        note: str | None = None,
    ) -> Collection:
        """The fusion, ``alpha`` and rerank stage the collection's queries use when they
        name none (``unidb tune`` stores fusion and alpha); with none of them, the
        service's defaults again."""
        if fusion is None and alpha is None and rerank is None:
            return self._backend.set_query_defaults(name, None)
        defaults = query_defaults(fusion, alpha, rerank, note)
        return self._backend.set_query_defaults(name, defaults)

    def delete_collection(self, name: str) -> bool:
        """Drop a collection with its documents; False if there was none."""
        try:
            return (self._backend.delete_collection(name)).deleted
        except NotFound:
            return False

    def upsert(self, collection: str, documents: Sequence[DocumentLike]) -> UpsertResult:
        """Insert or replace documents by id, all in one transaction."""
        return self._backend.upsert_documents(collection, validated_batch(documents))

    def ingest(
        self,
        collection: str,
        documents: Iterable[DocumentLike],
        *,
        batch_size: int = 2000,
        concurrency: int = 2,
        on_batch: Callable[[int, UpsertResult], None] | None = None,
    ) -> UpsertResult:
        """Load many documents as a pipeline of batches, each its own transaction.

        While one batch is written the next is prepared (``concurrency`` batches in
        flight), so Python and the database work at the same time. Batches commit in
        any order; on the first error the rest are not sent and the error is raised, the
        batches already acknowledged staying committed. Re-running is safe: unchanged
        documents are left as they are. ``on_batch(size, result)`` reports progress.
        """
        tally = IngestTally(batch_size, concurrency, on_batch)
        with Pipeline[tuple[int, UpsertResult]](concurrency) as pipeline:
            for offset, batch in tally.batches(documents):
                while pipeline.full:
                    tally.add(*pipeline.receive())
                pipeline.send(self._upsert_batch, collection, batch, offset)
            while pipeline:
                tally.add(*pipeline.receive())
        return tally.total()

    def _upsert_batch(
        self, collection: str, documents: list[Document], offset: int
    ) -> tuple[int, UpsertResult]:
        try:
            return len(documents), self._backend.upsert_documents(collection, documents)
        except UnidbError as exc:
            raise shifted(exc, offset) from exc

    def tools(self, format: ToolFormat = "openai") -> list[dict[str, Any]]:
        """unidb's agent tools as JSON definitions (``openai`` or ``anthropic`` format)."""
        return tool_definitions(format)

    def call_tool(self, name: str, arguments: Mapping[str, Any] | str | None = None) -> Any:
        """Run a tool the model asked for; ``arguments`` as a dict or the model's JSON text.

        Returns JSON-ready data. Errors come back as ``{"error": {"code", "message",
        "field"}}`` rather than raising, so an agent loop can hand them to the model."""
        return call_tool(self._backend, name, arguments)

    def transaction(self) -> Transaction:
        """Collect writes and apply them in one Postgres transaction on leaving the block:

            with client.transaction() as tx:
                tx.put_state("agent", "step", 3, if_version=2)
                tx.upsert("notes", [{"id": "n1", "text": "..."}])
            tx.commit_token   # pass as after= to see this commit from any client

        Nothing is sent if the block raises; a failing operation raises and changes nothing.
        """
        return Transaction(self._backend)

    def transact(self, request: TransactionRequest) -> TransactionResult:
        """Apply a ``TransactionRequest`` (the REST body) in one transaction; ``transaction()``
        builds one from method calls."""
        return self._backend.transact(request)

    def get_state(self, namespace: str, key: str) -> StateEntry:
        """The JSON value at ``namespace/key`` with its version (raises NotFound)."""
        return self._backend.get_state(namespace, key)

    def put_state(
        self, namespace: str, key: str, value: Any, *, if_version: int | None = None
    ) -> StateEntry:
        """Store ``value``. With ``if_version`` it is a compare-and-set: Conflict unless the
        stored version is that number (0: unless the key is new)."""
        body = StatePut(value=value, if_version=if_version)
        return self._backend.put_state(namespace, key, body)

    def delete_state(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        """Delete a value; False if there was none. ``if_version`` as in ``put_state``."""
        try:
            return (self._backend.delete_state(namespace, key, if_version)).deleted
        except NotFound:
            return False

    def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList:
        """A page of a namespace's entries in key order; ``next_after`` continues."""
        return self._backend.list_state(namespace, prefix=prefix, after=after, limit=limit)

    def get(self, collection: str, document_id: str) -> StoredDocument:
        """One document with its version and timestamps (raises NotFound)."""
        return self._backend.get_document(collection, document_id)

    def delete(self, collection: str, document_id: str) -> bool:
        """Delete one document; False if there was none."""
        try:
            return (self._backend.delete_document(collection, document_id)).deleted
        except NotFound:
            return False

    def delete_where(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        ids: Sequence[str] | None = None,
        all: bool = False,
    ) -> int:
        """Delete the documents matching ``filter``, among ``ids``, or both, in one
        transaction; returns how many were deleted. An empty filter is refused
        (``InvalidInput``): ``all=True`` alone deletes every document."""
        request = delete_where_request(filter, ids, all)
        return (self._backend.delete_documents(collection, request)).deleted

    def query(
        self,
        collection: str,
        *,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        mode: QueryMode = "hybrid",
        filter: Mapping[str, Any] | None = None,
        fusion: Fusion | None = None,
        alpha: float | None = None,
        consistency: Consistency = "strong",
        after: str | None = None,
        explain: bool = False,
        ef_search: int | None = None,
        passages: int = 3,
        rerank: RerankSpec | Mapping[str, Any] | Literal[False] | None = None,
        rerank_fallback: bool = False,
    ) -> QueryResponse:
        """Search a collection: ``mode`` bm25 | vector | hybrid (fused by ``fusion``: rrf,
        weighted, relative or dbsf, ``alpha`` the vector share; by default the collection's
        query defaults, else weighted at 0.5); ``rerank`` reorders the fused hits with a
        cross-encoder's ``/rerank`` (``rerank=False``: not even the collection's default). See ``QueryRequest`` for the fields;
        ``explain`` answers where the time went (``QueryResponse.explain``), ``ef_search``
        widens (or narrows) the vector search; in a chunked collection each hit carries its
        ``passages`` best chunks."""
        request = query_request(
            text,
            vector,
            k,
            mode,
            filter,
            fusion,
            alpha,
            consistency,
            after,
            explain,
            ef_search,
            passages,
            rerank,
            rerank_fallback,
        )
        return self._backend.query(collection, request)

    def context(
        self,
        collection: str,
        query: str,
        *,
        k: int = 5,
        order: ContextOrder = "reuse",
        session: str | None = None,
        tokenizer: str | None = None,
        block_size: int = 16,
        salt: str | None = None,
        max_tokens: int | None = None,
        template: ContextTemplate | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> ContextResponse:
        """A prompt for ``query`` built from the collection, laid out so an LLM engine's
        prefix cache reuses it, with the engine's block hashes. Other ``options``: mode,
        filter, consistency, after (see ``ContextRequest``)."""
        fields = {
            "k": k,
            "order": order,
            "session": session,
            "tokenizer": tokenizer,
            "block_size": block_size,
            "salt": salt,
            "max_tokens": max_tokens,
            **({"template": template} if template is not None else {}),
            **options,
        }
        return self._backend.build_context(context_request(collection, query, fields))

    def prefixes(self, collection: str | None = None, *, limit: int = 100) -> PrefixList:
        """Context prefixes sent so far, most reused first."""
        return self._backend.list_prefixes(collection, limit=limit)

    def warm_prefix(
        self, prefix_key: str, engine_url: str, *, model: str | None = None
    ) -> WarmResult:
        """Prefill a registered prefix on an OpenAI-compatible engine (``max_tokens=1``).

        ``engine_url``: the engine's name in the server's UNIDB_KV_ENGINES or
        UNIDB_OUTBOUND_URLS, or the URL listed there."""
        return self._backend.warm_prefix(prefix_key, warm_request(engine_url, model))

    def check_engines(self) -> EngineChecks:
        """Probe each LLM engine the server follows: which block-hash settings reproduce
        the engine's own hashes, whether they are the configured ones, and whether the
        tokenizers agree (``GET /v1/engines``; the operator key when keys are on)."""
        return self._backend.check_engines()

    def build_index(
        self,
        collection: str,
        *,
        kind: str = "auto",
        device: str = "auto",
        params: Mapping[str, Any] | None = None,
        wait: bool = True,
        progress: bool = False,
        timeout: float | None = None,
    ) -> Job:
        """Build the collection's FAISS index as a job (``kind`` auto | hnsw | ivf | cagra,
        ``device`` auto | cpu | gpu). With ``wait`` it returns the ended job (``progress``
        shows a bar); otherwise the queued one, to poll with ``get_job``."""
        job = self._backend.build_index(collection, index_request(kind, device, params))
        if not wait:
            return job
        return self.wait_job(job.id, progress=progress, timeout=timeout)

    def get_job(self, job_id: int) -> Job:
        """A job's status, progress, error and stats."""
        return self._backend.get_job(job_id)

    def cancel_job(self, job_id: int) -> Job:
        """Cancel a queued or running job."""
        return self._backend.cancel_job(job_id)

    def wait_job(self, job_id: int, *, progress: bool = False, timeout: float | None = None) -> Job:
        """Poll until the job ends; raises ``Unavailable`` past ``timeout`` seconds."""
        with JobWatch(job_id, progress=progress, timeout=timeout) as watch:
            while True:
                job = self._backend.get_job(job_id)
                if watch.ended(job):
                    return job
                sleep(JOB_POLL_S)
