"""The LlamaIndex vector store: a VectorStoreIndex on SciFact queried through LlamaIndex's
retriever, and the store's filters, modes, deletes and async methods."""

from __future__ import annotations

import asyncio
import csv
import json
from typing import Any

import pytest
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

import unidb
from unidb.indexing.embedders import MiniLM
from unidb.integrations.llamaindex import UnidbVectorStore, to_unidb_filter
from unidb.service.engine import Engine

from .conftest import SCIFACT, scifact


class MiniLMEmbedding(BaseEmbedding):
    """unidb's packaged MiniLM as a LlamaIndex embedding model (nothing downloads)."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return [float(x) for x in MiniLM().embed_query(query)]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_query_embedding(text)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in MiniLM().embed_documents(texts)]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def _node(
    node_id: str, text: str, source: str, embedding: list[float], **metadata: Any
) -> TextNode:
    return TextNode(
        id_=node_id,
        text=text,
        metadata=metadata,
        embedding=embedding,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=source)},
    )


@pytest.fixture
def store(engine: Engine, collection: str) -> UnidbVectorStore:
    store = UnidbVectorStore(unidb.Client(backend=engine), collection)
    store.add(
        [
            _node("a1", "aspirin lowers fever", "paper-a", [1.0, 0.0, 0.0], year=2019, lab="x"),
            _node("a2", "aspirin thins blood", "paper-a", [0.9, 0.1, 0.0], year=2021, lab="y"),
            _node(
                "b1", "statins lower cholesterol", "paper-b", [0.0, 1.0, 0.0], year=2022, lab="x"
            ),
            _node("c1", "exercise improves sleep", "paper-c", [0.0, 0.0, 1.0], year=2023, lab="z"),
        ]
    )
    return store


def _ids(store: UnidbVectorStore, **query: Any) -> list[str]:
    return store.query(VectorStoreQuery(**query)).ids or []


def test_modes_filters_and_deletes(store: UnidbVectorStore) -> None:
    assert _ids(store, query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2) == ["a1", "a2"]
    bm25 = _ids(
        store, query_str="cholesterol", mode=VectorStoreQueryMode.SPARSE, similarity_top_k=2
    )
    assert bm25 == ["b1"]
    hybrid = store.query(
        VectorStoreQuery(
            query_str="sleep",
            query_embedding=[1.0, 0.0, 0.0],
            mode=VectorStoreQueryMode.HYBRID,
            alpha=0.2,
            similarity_top_k=1,
        )
    )
    assert (
        hybrid.ids == ["c1"]
        and hybrid.nodes
        and hybrid.nodes[0].get_content() == "exercise improves sleep"
    )
    assert hybrid.nodes[0].ref_doc_id == "paper-c"

    recent_x = MetadataFilters(
        filters=[
            MetadataFilter(key="year", value=2020, operator=FilterOperator.GT),
            MetadataFilter(key="lab", value="x"),
        ]
    )
    assert _ids(store, query_embedding=[1.0, 0.0, 0.0], similarity_top_k=4, filters=recent_x) == [
        "b1"
    ]
    either = MetadataFilters(
        filters=[
            MetadataFilter(key="lab", value=["y", "z"], operator=FilterOperator.IN),
            MetadataFilters(
                filters=[MetadataFilter(key="year", value=2020, operator=FilterOperator.GTE)],
                condition=FilterCondition.NOT,
            ),
        ],
        condition=FilterCondition.OR,
    )
    assert to_unidb_filter(either) == {
        "$or": [{"lab": {"$in": ["y", "z"]}}, {"$not": {"year": {"$gte": 2020}}}]
    }
    assert set(
        _ids(store, query_embedding=[0.0, 0.0, 1.0], similarity_top_k=4, filters=either)
    ) == {
        "a1",
        "a2",
        "c1",
    }
    in_paper = _ids(store, query_embedding=[0.0, 1.0, 0.0], similarity_top_k=4, doc_ids=["paper-a"])
    assert set(in_paper) == {"a1", "a2"}
    with pytest.raises(ValueError, match="contains"):
        store.query(
            VectorStoreQuery(
                query_embedding=[1.0, 0.0, 0.0],
                filters=MetadataFilters(
                    filters=[MetadataFilter(key="lab", value="x", operator=FilterOperator.CONTAINS)]
                ),
            )
        )

    (fetched,) = store.get_nodes(["b1"])
    assert fetched.get_content() == "statins lower cholesterol" and fetched.embedding == [
        0.0,
        1.0,
        0.0,
    ]
    store.delete("paper-a")  # every node of that source document
    assert set(_ids(store, query_embedding=[1.0, 0.0, 0.0], similarity_top_k=4)) == {"b1", "c1"}
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="lab", value="z")]))
    assert _ids(store, query_embedding=[1.0, 0.0, 0.0], similarity_top_k=4) == ["b1"]


def test_async_methods(store: UnidbVectorStore) -> None:
    async def scenario() -> list[str]:
        await store.async_add([_node("d1", "coffee and alertness", "paper-d", [0.5, 0.5, 0.0])])
        found = await store.aquery(
            VectorStoreQuery(query_embedding=[0.5, 0.5, 0.0], similarity_top_k=1)
        )
        await store.adelete("paper-d")
        return found.ids or []

    assert asyncio.run(scenario()) == ["d1"]
    assert "d1" not in _ids(store, query_embedding=[0.5, 0.5, 0.0], similarity_top_k=5)


@pytest.mark.slow
def test_vector_store_index_on_scifact(engine: Engine, collection: str) -> None:
    """VectorStoreIndex over 300 SciFact abstracts, queried through LlamaIndex's retriever."""
    scifact()
    with (SCIFACT / "corpus.jsonl").open() as stream:
        corpus = [json.loads(line) for line, _ in zip(stream, range(300), strict=False)]
    ids = {row["_id"] for row in corpus}
    with (SCIFACT / "qrels-test.tsv").open() as stream:
        relevant: dict[str, set[str]] = {}
        for row in csv.DictReader(stream, delimiter="\t"):
            if row["corpus-id"] in ids:
                relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    with (SCIFACT / "queries.jsonl").open() as stream:
        queries = {q["_id"]: q["text"] for q in map(json.loads, stream) if q["_id"] in relevant}
    assert len(queries) >= 10

    nodes = [
        TextNode(
            id_=row["_id"],
            text=row["text"],
            metadata={"title": row["title"]},
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=row["_id"])},
        )
        for row in corpus
    ]
    store = UnidbVectorStore(unidb.Client(backend=engine), collection)
    index = VectorStoreIndex(
        nodes,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=MiniLMEmbedding(),
    )
    assert unidb.Client(backend=engine).get_collection(collection).documents == 300

    def recall(mode: str) -> float:
        retriever = index.as_retriever(similarity_top_k=10, vector_store_query_mode=mode)
        found = 0
        for query_id, text in queries.items():
            hits = {n.node.node_id for n in retriever.retrieve(text)}
            found += bool(hits & relevant[query_id])
        return found / len(queries)

    vector, hybrid = recall("default"), recall("hybrid")
    assert vector >= 0.7 and hybrid >= 0.7, (vector, hybrid)

    title = corpus[0]["title"]
    only = index.as_retriever(
        similarity_top_k=5,
        filters=MetadataFilters(filters=[MetadataFilter(key="title", value=title)]),
    ).retrieve(corpus[0]["text"][:200])
    assert [n.node.node_id for n in only] == [corpus[0]["_id"]]


def test_empty_metadata_filters_never_delete_everything(store: UnidbVectorStore) -> None:
    everything = {"a1", "a2", "b1", "c1"}
    store.delete_nodes(filters=MetadataFilters(filters=[]))  # LlamaIndex's "no filters"
    nested_empty = MetadataFilters(filters=[MetadataFilters(filters=[])])
    store.delete_nodes(filters=nested_empty)
    assert set(_ids(store, query_embedding=[1.0, 0.0, 0.0], similarity_top_k=10)) == everything
    # ids with an empty filter delete exactly those ids
    store.delete_nodes(node_ids=["a1"], filters=MetadataFilters(filters=[]))
    assert set(_ids(store, query_embedding=[1.0, 0.0, 0.0], similarity_top_k=10)) == {
        "a2",
        "b1",
        "c1",
    }
