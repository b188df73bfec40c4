"""unidb in LangChain: a vector store, a hybrid retriever, a key-value store, an LLM cache
and unidb's agent tools (``pip install 'unidb[langchain]'``).

Each works over ``unidb.Client(url)`` and ``unidb.Client.embedded(path)`` alike. Filters are
unidb's filter language (``{"year": {"$gte": 2020}}``). Async methods run the synchronous
client in LangChain's executor.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
from langchain_core._api import LangChainBetaWarning
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.load import Serializable, dumpd, load
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from langchain_core.retrievers import BaseRetriever
from langchain_core.stores import BaseStore
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from pydantic import ConfigDict, Field

from .. import tools as _tools
from .._sync_client import Client
from ..errors import NotFound
from ..models import DEFAULT_ALPHA, DEFAULT_FUSION, Fusion, Hit, QueryMode
from . import write_documents

__all__ = [
    "UnidbCache",
    "UnidbRetriever",
    "UnidbStore",
    "UnidbVectorStore",
    "unidb_tools",
]

# what a cached answer may revive as: another writer of the cache namespace cannot make a
# lookup construct anything else (a model with its own base_url, say)
_CACHED_TYPES: list[type[Serializable]] = [
    Generation,
    GenerationChunk,
    ChatGeneration,
    ChatGenerationChunk,
    AIMessage,
    AIMessageChunk,
]


def _document(hit_id: str, text: str, metadata: dict[str, Any]) -> Document:
    return Document(id=hit_id, page_content=text, metadata=metadata)


class UnidbVectorStore(VectorStore):
    """A LangChain vector store over one unidb collection.

    With ``embedding`` the store embeds texts and queries itself; without it the collection
    must have a server-side embedder (``create_collection(..., embedder={"kind": "minilm"})``).
    A missing collection is created on the first write with the embedding's dimension.
    ``search_type`` is what ``search()`` and ``as_retriever()`` do by default: similarity,
    mmr or hybrid (BM25 and vectors fused by ``fusion``: weighted with ``alpha`` the vector
    share, unidb's default, or rrf).
    """

    def __init__(
        self,
        client: Client,
        collection: str,
        embedding: Embeddings | None = None,
        *,
        search_type: Literal["similarity", "mmr", "hybrid"] = "similarity",
        fusion: Fusion = DEFAULT_FUSION,
        alpha: float = DEFAULT_ALPHA,
    ) -> None:
        self.client = client
        self.collection = collection
        self.embedding = embedding
        self.search_type = search_type
        self.fusion: Fusion = fusion
        self.alpha = alpha

    @property
    def embeddings(self) -> Embeddings | None:
        return self.embedding

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        client: Client | None = None,
        collection: str = "langchain",
        **kwargs: Any,
    ) -> UnidbVectorStore:
        if client is None:
            raise ValueError("from_texts needs client=unidb.Client(...)")
        store = cls(client, collection, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    # -- writes ------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        # LangChain's add_documents passes None for documents without an id
        given: list[str | None] = list(ids) if ids is not None else [None] * len(texts)
        if len(given) != len(texts) or (metadatas is not None and len(metadatas) != len(texts)):
            raise ValueError("texts, metadatas and ids must have the same length")
        assigned = [i if i else str(uuid.uuid4()) for i in given]
        vectors = self.embedding.embed_documents(texts) if self.embedding else None
        documents = [
            {
                "id": assigned[n],
                "text": text,
                "metadata": dict(metadatas[n]) if metadatas else {},
                **({"embedding": vectors[n]} if vectors is not None else {}),
            }
            for n, text in enumerate(texts)
        ]
        write_documents(self.client, self.collection, documents)
        return assigned

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by id (missing ids are fine); without ids, drop the whole collection."""
        if ids is None:
            self.delete_collection()
            return True
        if ids:
            try:
                self.client.delete_where(self.collection, ids=ids)
            except NotFound:  # the collection itself is missing: nothing to delete
                pass
        return True

    def delete_collection(self) -> None:
        self.client.delete_collection(self.collection)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        found = []
        for document_id in ids:
            try:
                stored = self.client.get(self.collection, document_id)
            except NotFound:
                continue
            found.append(_document(stored.id, stored.text, stored.metadata))
        return found

    # -- searches ----------------------------------------------------------------------

    def _hits(
        self,
        query: str | None,
        vector: list[float] | None,
        k: int,
        mode: QueryMode,
        filter: dict[str, Any] | None,
        **options: Any,
    ) -> list[Hit]:
        try:
            return self.client.query(
                self.collection, text=query, vector=vector, k=k, mode=mode, filter=filter, **options
            ).hits
        except NotFound:
            return []  # nothing has been written yet

    def _query_vector(self, query: str) -> list[float] | None:
        return self.embedding.embed_query(query) if self.embedding else None

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Vector similarity; the score is the metric's similarity (cosine: 1 - distance)."""
        vector = self._query_vector(query)
        hits = self._hits(None if vector else query, vector, k, "vector", filter)
        return [(_document(h.id, h.text, h.metadata), h.score) for h in hits]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter)]

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        hits = self._hits(None, embedding, k, "vector", filter)
        return [_document(h.id, h.text, h.metadata) for h in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # hits carry similarities already (cosine in [-1, 1]); map them onto [0, 1]
        return lambda score: (score + 1.0) / 2.0

    def hybrid_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: dict[str, Any] | None = None,
        *,
        fusion: Fusion | None = None,
        alpha: float | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """BM25 and vector search fused in unidb; the score is the fused one."""
        hits = self._hits(
            query,
            self._query_vector(query),
            k,
            "hybrid",
            filter,
            fusion=fusion or self.fusion,
            alpha=self.alpha if alpha is None else alpha,
        )
        return [(_document(h.id, h.text, h.metadata), h.score) for h in hits]

    def hybrid_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.hybrid_search_with_score(query, k, filter, **kwargs)]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        vector = self._query_vector(query)
        if vector is None:
            raise ValueError("mmr needs the store's embedding to compare documents")
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        hits = self._hits(None, embedding, fetch_k, "vector", filter)
        if not hits:
            return []
        stored = [self.client.get(self.collection, h.id) for h in hits]
        chosen = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32),
            [s.embedding or [] for s in stored],
            k=min(k, len(stored)),
            lambda_mult=lambda_mult,
        )
        return [_document(hits[i].id, hits[i].text, hits[i].metadata) for i in chosen]

    def search(self, query: str, search_type: str | None = None, **kwargs: Any) -> list[Document]:
        chosen = search_type or self.search_type
        if chosen == "hybrid":
            return self.hybrid_search(query, **kwargs)
        return super().search(query, chosen, **kwargs)

    def as_retriever(self, **kwargs: Any) -> VectorStoreRetriever | UnidbRetriever:  # type: ignore[override]
        """``search_type="hybrid"`` (the store's default when it was made so) gives a
        `UnidbRetriever`; similarity and mmr give LangChain's own retriever."""
        search_type = kwargs.get("search_type", self.search_type)
        if search_type != "hybrid":
            return super().as_retriever(**{**kwargs, "search_type": search_type})
        options = dict(kwargs.get("search_kwargs", {}))
        return UnidbRetriever(
            client=self.client,
            collection=self.collection,
            embedding=self.embedding,
            k=options.pop("k", 4),
            filter=options.pop("filter", None),
            fusion=options.pop("fusion", self.fusion),
            alpha=options.pop("alpha", self.alpha),
            tags=kwargs.get("tags"),
        )


class UnidbRetriever(BaseRetriever):
    """Hybrid (BM25 + vector) retrieval from a unidb collection, with filters.

    Each `Document` carries its metadata plus ``score`` (the fused score) and ``scores``
    (``{"bm25", "vector", "fused"}``). ``k`` and ``filter`` may also be given per call:
    ``retriever.invoke("question", k=3)``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: Any = Field(description="a unidb.Client")
    collection: str
    k: int = Field(default=4, ge=1)
    filter: dict[str, Any] | None = None
    mode: QueryMode = "hybrid"
    fusion: Fusion = DEFAULT_FUSION
    alpha: float = Field(default=DEFAULT_ALPHA, ge=0.0, le=1.0)
    embedding: Embeddings | None = Field(
        default=None, description="embeds queries here; else the collection's embedder does"
    )

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        vector = (
            self.embedding.embed_query(query)
            if self.embedding is not None and self.mode != "bm25"
            else None
        )
        try:
            hits = self.client.query(
                self.collection,
                text=query,
                vector=vector,
                k=kwargs.get("k", self.k),
                mode=self.mode,
                filter=kwargs.get("filter", self.filter),
                fusion=self.fusion,
                alpha=self.alpha,
            ).hits
        except NotFound:
            return []
        return [
            _document(
                h.id,
                h.text,
                {**h.metadata, "score": h.score, "scores": h.scores.model_dump()},
            )
            for h in hits
        ]


def _encode(value: Any) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"bytes": base64.b64encode(value).decode("ascii")}
    return {"json": value}


def _decode(stored: Any) -> Any:
    if isinstance(stored, dict) and "bytes" in stored:
        return base64.b64decode(stored["bytes"])
    return stored["json"] if isinstance(stored, dict) else stored


class UnidbStore(BaseStore[str, Any]):
    """A LangChain key-value store in one namespace of unidb state.

    Values are bytes or anything JSON holds; ``mset`` writes all its pairs in one
    transaction.
    """

    def __init__(self, client: Client, namespace: str = "langchain") -> None:
        self.client = client
        self.namespace = namespace

    def mget(self, keys: Sequence[str]) -> list[Any | None]:
        values: list[Any | None] = []
        for key in keys:
            try:
                values.append(_decode(self.client.get_state(self.namespace, key).value))
            except NotFound:
                values.append(None)
        return values

    def mset(self, key_value_pairs: Sequence[tuple[str, Any]]) -> None:
        with self.client.transaction() as tx:
            for key, value in key_value_pairs:
                tx.put_state(self.namespace, key, _encode(value))

    def mdelete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.client.delete_state(self.namespace, key)

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        after: str | None = None
        while True:
            page = self.client.list_state(self.namespace, prefix=prefix or "", after=after)
            for entry in page.entries:
                yield entry.key
            if page.next_after is None:
                return
            after = page.next_after


class UnidbCache(BaseCache):
    """A LangChain LLM cache in unidb state: exact match on (prompt, llm_string).

    With ``collection`` (one with a server-side embedder) a lookup that misses exactly
    falls back to the most similar cached prompt of the same ``llm_string`` whose cosine
    similarity reaches ``threshold``.
    """

    def __init__(
        self,
        client: Client,
        namespace: str = "langchain_cache",
        *,
        collection: str | None = None,
        threshold: float = 0.95,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.collection = collection
        self.threshold = threshold

    @staticmethod
    def _key(prompt: str, llm_string: str) -> str:
        return hashlib.sha256(f"{llm_string}\x00{prompt}".encode()).hexdigest()

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        found = self._stored(self._key(prompt, llm_string))
        if found is None and self.collection is not None:
            found = self._similar(prompt, llm_string)
        return found

    def _stored(self, key: str) -> RETURN_VAL_TYPE | None:
        try:
            entry = self.client.get_state(self.namespace, key)
        except NotFound:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LangChainBetaWarning)  # load() is marked beta
            return [
                load(generation, allowed_objects=_CACHED_TYPES)
                for generation in entry.value["generations"]
            ]

    def _similar(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        assert self.collection is not None
        try:
            hits = self.client.query(
                self.collection,
                text=prompt,
                k=1,
                mode="vector",
                filter={"llm_string": llm_string},
            ).hits
        except NotFound:
            return None
        if not hits or hits[0].score < self.threshold:
            return None
        return self._stored(hits[0].id)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key = self._key(prompt, llm_string)
        with self.client.transaction() as tx:
            value = {"generations": [dumpd(g) for g in return_val]}
            tx.put_state(self.namespace, key, value)
            if self.collection is not None:
                document = {"id": key, "text": prompt, "metadata": {"llm_string": llm_string}}
                tx.upsert(self.collection, [document])

    def clear(self, **kwargs: Any) -> None:
        keys = list(UnidbStore(self.client, self.namespace).yield_keys())
        UnidbStore(self.client, self.namespace).mdelete(keys)
        if self.collection is not None and keys:
            try:
                self.client.delete_where(self.collection, ids=keys)
            except NotFound:
                pass


def unidb_tools(client: Client) -> list[BaseTool]:
    """unidb's agent tools (search, documents, state, build_context) as LangChain tools;
    each answers JSON text, ``{"error": ...}`` when the call is refused."""

    def tool(definition: _tools.Tool) -> BaseTool:
        def run(**arguments: Any) -> str:
            arguments = {k: v for k, v in arguments.items() if v is not None}
            return json.dumps(client.call_tool(definition.name, arguments))

        return StructuredTool.from_function(
            func=run,
            name=definition.name,
            description=definition.description,
            args_schema=definition.arguments,
        )

    return [tool(definition) for definition in _tools.TOOLS]
