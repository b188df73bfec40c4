"""What the LangChain integration adds beyond the standard suites: hybrid search, filters,
mmr, retriever scores, the semantic cache, and tools inside a LangChain tool call."""

from __future__ import annotations

import json
import uuid

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import ToolCall
from langchain_core.outputs import Generation

import unidb
from unidb.indexing.embedders import MiniLM
from unidb.integrations.langchain import (
    UnidbCache,
    UnidbRetriever,
    UnidbVectorStore,
    unidb_tools,
)
from unidb.service.engine import Engine

TEXTS = [
    "the heart pumps blood through the arteries",
    "insulin regulates blood sugar in the liver",
    "neurons fire in the brain during sleep",
    "vaccines train the immune system",
]


@pytest.fixture
def store(engine: Engine, collection: str) -> UnidbVectorStore:
    client = unidb.Client(backend=engine)
    # the fake embedding's scores are noise: rank fusion keeps BM25's evidence whatever they are
    store = UnidbVectorStore(
        client, collection, DeterministicFakeEmbedding(size=8), search_type="hybrid", fusion="rrf"
    )
    store.add_texts(
        TEXTS,
        [{"organ": o} for o in ("heart", "liver", "brain", "blood")],
        ids=["h", "l", "b", "v"],
    )
    return store


def test_hybrid_search_and_filters(store: UnidbVectorStore) -> None:
    # the fake embedding knows nothing of meaning: BM25's side of the fusion finds "insulin"
    assert store.hybrid_search("insulin sugar", k=1)[0].id == "l"
    assert store.search("insulin sugar", k=1)[0].id == "l"  # the store's default search_type
    assert [d.id for d in store.hybrid_search("blood", k=4, filter={"organ": "heart"})] == ["h"]
    found = store.similarity_search(TEXTS[2], k=2, filter={"organ": {"$in": ["brain", "heart"]}})
    assert [d.id for d in found] == ["b", "h"]
    weighted = store.hybrid_search_with_score("insulin", k=1, fusion="weighted", alpha=0.0)
    assert weighted[0][0].id == "l" and weighted[0][1] > 0
    scored = store.similarity_search_with_relevance_scores(TEXTS[0], k=1)
    assert scored[0][0].id == "h" and scored[0][1] == pytest.approx(1.0, abs=1e-5)


def test_mmr_prefers_diverse_documents(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(
        collection,
        [
            {"id": "near", "text": "a", "embedding": [1.0, 0.0]},
            {"id": "near-twin", "text": "b", "embedding": [1.0, 0.01]},
            {"id": "other", "text": "c", "embedding": [0.7, 0.7]},
        ],
    )
    store = UnidbVectorStore(client, collection)
    query = [1.0, 0.3]
    plain = [d.id for d in store.similarity_search_by_vector(query, k=2)]
    diverse = [d.id for d in store.max_marginal_relevance_search_by_vector(query, k=2, fetch_k=3)]
    assert plain == ["near-twin", "near"]
    assert diverse == ["near-twin", "other"]


def test_retriever_from_the_store_carries_scores(store: UnidbVectorStore) -> None:
    retriever = store.as_retriever(search_kwargs={"k": 2, "filter": {"organ": {"$ne": "brain"}}})
    assert isinstance(retriever, UnidbRetriever)
    documents = retriever.invoke("blood")
    assert len(documents) == 2 and all(d.metadata["organ"] != "brain" for d in documents)
    scores = documents[0].metadata["scores"]
    assert documents[0].metadata["score"] == scores["fused"] and scores["bm25"] > 0
    similarity = store.as_retriever(search_type="similarity", search_kwargs={"k": 1})
    assert similarity.invoke(TEXTS[3])[0].id == "v"


def test_store_over_a_server_side_embedder(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=MiniLM.dim, embedder={"kind": "minilm"})
    store = UnidbVectorStore(client, collection)  # no LangChain embedding: the server embeds
    store.add_texts(TEXTS, ids=["h", "l", "b", "v"])
    assert store.similarity_search("cardiac circulation", k=1)[0].id == "h"
    assert store.hybrid_search("glucose hormone", k=1)[0].id == "l"


def test_semantic_cache(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=MiniLM.dim, embedder={"kind": "minilm"})
    cache = UnidbCache(
        client, namespace=f"cache_{uuid.uuid4().hex[:8]}", collection=collection, threshold=0.9
    )
    answer = [Generation(text="Paris")]
    cache.update("What is the capital of France?", "model-a", answer)
    assert cache.lookup("What is the capital of France?", "model-a") == answer
    assert cache.lookup("what is the capital of france", "model-a") == answer  # near, not exact
    assert cache.lookup("What is the capital of France?", "model-b") is None  # another model
    assert cache.lookup("How do vaccines work?", "model-a") is None
    cache.clear()
    assert cache.lookup("what is the capital of france", "model-a") is None


def test_tools_run_through_a_tool_call(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    tools = {tool.name: tool for tool in unidb_tools(client)}
    assert set(tools) == {t.name for t in unidb.tools.TOOLS}
    call = ToolCall(
        name="upsert_documents",
        args={
            "collection": collection,
            "documents": [{"id": "n", "text": "kept", "embedding": [1, 0]}],
        },
        id="1",
        type="tool_call",
    )
    assert json.loads(tools["upsert_documents"].invoke(call).content) == {
        "written": 1,
        "unchanged": 0,
    }
    found = json.loads(
        tools["search"].invoke({"collection": collection, "text": "kept", "mode": "bm25"})
    )
    assert [hit["id"] for hit in found["hits"]] == ["n"]
    refused = json.loads(tools["get_document"].invoke({"collection": collection, "id": "missing"}))
    assert refused["error"]["code"] == "not_found"
