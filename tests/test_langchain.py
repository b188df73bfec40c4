"""LangChain's own standard suites (langchain-tests), unmodified, against real unidb.

Each suite class only supplies what the suite asks for: an empty store, a retriever's
constructor, a tool. The vector store suite runs twice: over REST (``Client(url)``) and
in-process (the embedded backend).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.caches import BaseCache
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.retrievers import BaseRetriever
from langchain_core.stores import BaseStore
from langchain_core.tools import BaseTool
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import (
    AsyncCacheTestSuite,
    BaseStoreAsyncTests,
    BaseStoreSyncTests,
    RetrieversIntegrationTests,
    SyncCacheTestSuite,
    ToolsIntegrationTests,
    VectorStoreIntegrationTests,
)

import unidb
from unidb.integrations.langchain import (
    UnidbCache,
    UnidbRetriever,
    UnidbStore,
    UnidbVectorStore,
    unidb_tools,
)
from unidb.service.engine import Engine


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rest_client(server_url: str) -> Iterator[unidb.Client]:
    with unidb.Client(server_url) as client:
        yield client


@pytest.fixture
def embedded_client(engine: Engine) -> unidb.Client:
    return unidb.Client(backend=engine)


class TestVectorStoreOverRest(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, rest_client: unidb.Client) -> Iterator[VectorStore]:
        store = UnidbVectorStore(rest_client, _name("lc"), self.get_embeddings())
        try:
            yield store
        finally:
            rest_client.delete_collection(store.collection)


class TestVectorStoreEmbedded(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, embedded_client: unidb.Client) -> Iterator[VectorStore]:
        store = UnidbVectorStore(embedded_client, _name("lc"), self.get_embeddings())
        try:
            yield store
        finally:
            embedded_client.delete_collection(store.collection)


_ABSTRACTS = [
    "Protein folding determines the function of enzymes in the cell.",
    "Misfolded protein aggregates are a hallmark of neurodegenerative disease.",
    "Chaperones assist protein folding under heat stress.",
    "Vaccination lowers the risk of severe influenza in older adults.",
    "Gut microbiota shape immune responses in early life.",
]


@pytest.fixture(scope="module")
def retrieval_collection(engine: Engine) -> Iterator[str]:
    client = unidb.Client(backend=engine)
    name = _name("lc_retriever")
    store = UnidbVectorStore(client, name, DeterministicFakeEmbedding(size=6))
    store.add_texts(_ABSTRACTS, [{"n": i} for i in range(len(_ABSTRACTS))])
    yield name
    client.delete_collection(name)


class TestRetriever(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _collection(self, engine: Engine, retrieval_collection: str) -> None:
        self.client = unidb.Client(backend=engine)
        self.collection = retrieval_collection

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return UnidbRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "collection": self.collection,
            "embedding": DeterministicFakeEmbedding(size=6),
        }

    @property
    def retriever_query_example(self) -> str:
        return "protein folding"


class TestStoreSync(BaseStoreSyncTests[bytes]):
    @pytest.fixture
    def kv_store(self, embedded_client: unidb.Client) -> BaseStore[str, bytes]:
        return UnidbStore(embedded_client, namespace=_name("lc_store"))

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return b"foo", b"bar", b"buzz"


class TestStoreAsync(BaseStoreAsyncTests[bytes]):
    @pytest.fixture
    async def kv_store(self, rest_client: unidb.Client) -> BaseStore[str, bytes]:
        return UnidbStore(rest_client, namespace=_name("lc_store"))

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return b"foo", b"bar", b"buzz"


class TestStoreJsonValues(BaseStoreSyncTests[Any]):
    @pytest.fixture
    def kv_store(self, rest_client: unidb.Client) -> BaseStore[str, Any]:
        return UnidbStore(rest_client, namespace=_name("lc_store"))

    @pytest.fixture
    def three_values(self) -> tuple[Any, Any, Any]:
        return {"plan": ["a", "b"]}, 42, "text"


class TestCacheSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, embedded_client: unidb.Client) -> BaseCache:
        return UnidbCache(embedded_client, namespace=_name("lc_cache"))


class TestCacheAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, rest_client: unidb.Client) -> BaseCache:
        return UnidbCache(rest_client, namespace=_name("lc_cache"))


@pytest.fixture(scope="module")
def tools_collection(engine: Engine) -> Iterator[str]:
    client = unidb.Client(backend=engine)
    name = _name("lc_tools")
    client.create_collection(name, dim=2)
    client.upsert(name, [{"id": "d1", "text": "tools read this note", "embedding": [1.0, 0.0]}])
    yield name
    client.delete_collection(name)


def _tool(client: unidb.Client, name: str) -> BaseTool:
    return next(t for t in unidb_tools(client) if t.name == name)


class _UnidbToolSuite(ToolsIntegrationTests):
    tool_name = ""

    @pytest.fixture(autouse=True)
    def _collection(self, engine: Engine, tools_collection: str) -> None:
        self.client = unidb.Client(backend=engine)
        self.collection = tools_collection

    @property
    def tool_constructor(self) -> BaseTool:
        return _tool(self.client, self.tool_name)


class TestSearchTool(_UnidbToolSuite):
    tool_name = "search"

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"collection": self.collection, "text": "note", "mode": "bm25", "k": 3}


class TestGetDocumentTool(_UnidbToolSuite):
    tool_name = "get_document"

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"collection": self.collection, "id": "d1"}


class TestUpsertDocumentsTool(_UnidbToolSuite):
    tool_name = "upsert_documents"

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        document = {"id": "d2", "text": "written by a tool", "embedding": [0.0, 1.0]}
        return {"collection": self.collection, "documents": [document]}


class TestDeleteDocumentTool(_UnidbToolSuite):
    tool_name = "delete_document"

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"collection": self.collection, "id": "no-such-document"}


class TestPutStateTool(_UnidbToolSuite):
    tool_name = "put_state"

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"namespace": "lc_tools", "key": "step", "value": {"n": 1}}


class TestGetStateTool(_UnidbToolSuite):
    tool_name = "get_state"

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        self.client.put_state("lc_tools", "seen", True)
        return {"namespace": "lc_tools", "key": "seen"}


class TestBuildContextTool(_UnidbToolSuite):
    tool_name = "build_context"

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"collection": self.collection, "query": "note", "k": 1, "mode": "bm25"}
