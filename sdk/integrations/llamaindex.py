"""unidb as a LlamaIndex vector store (``pip install 'unidb[llamaindex]'``).

    from llama_index.core import StorageContext, VectorStoreIndex
    store = UnidbVectorStore(unidb.Client("http://127.0.0.1:8000"), "papers")
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store))

Nodes become unidb documents (id = node id, text = node text, metadata = the node's metadata
plus LlamaIndex's own keys such as ``ref_doc_id``). Query modes: default (vector), hybrid
(BM25 and vectors fused in unidb; ``alpha`` given → weighted fusion with that vector share,
else the collection default), sparse and text_search (BM25). LlamaIndex metadata filters
become unidb filters. Async methods run the synchronous client in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from pydantic import PrivateAttr

from .._sync_client import Client
from ..errors import NotFound
from ..models import QueryMode
from . import write_documents

__all__ = ["UnidbVectorStore", "to_unidb_filter"]

_OPERATORS = {
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
}
_MODES: dict[VectorStoreQueryMode, QueryMode] = {
    VectorStoreQueryMode.DEFAULT: "vector",
    VectorStoreQueryMode.HYBRID: "hybrid",
    VectorStoreQueryMode.SPARSE: "bm25",
    VectorStoreQueryMode.TEXT_SEARCH: "bm25",
}


def _condition(item: MetadataFilter) -> dict[str, Any]:
    if item.operator == FilterOperator.EQ:
        return {item.key: {"$eq": item.value}}
    if item.operator == FilterOperator.IS_EMPTY:
        return {item.key: {"$exists": False}}
    operator = _OPERATORS.get(item.operator)
    if operator is None:
        raise ValueError(
            f"unidb filters have no {item.operator.value!r} operator; "
            f"use one of ==, !=, >, >=, <, <=, in, nin, is_empty"
        )
    return {item.key: {operator: item.value}}


def to_unidb_filter(filters: MetadataFilters) -> dict[str, Any]:
    """LlamaIndex metadata filters (nested, with and/or/not) in unidb's filter language."""
    parts = [
        to_unidb_filter(item) if isinstance(item, MetadataFilters) else _condition(item)
        for item in filters.filters
    ]
    parts = [part for part in parts if part]  # an empty group narrows nothing
    if not parts:
        return {}
    if filters.condition == FilterCondition.NOT:
        return {"$not": parts[0] if len(parts) == 1 else {"$and": parts}}
    if len(parts) == 1:
        return parts[0]
    return {"$or" if filters.condition == FilterCondition.OR else "$and": parts}


class UnidbVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over one unidb collection (created on the first ``add``
    with the nodes' embedding dimension when missing)."""

    stores_text: bool = True
    flat_metadata: bool = False
    collection: str

    _client: Client = PrivateAttr()

    def __init__(self, client: Client, collection: str, **kwargs: Any) -> None:
        super().__init__(collection=collection, **kwargs)  # type: ignore[call-arg]  # pydantic fields
        self._client = client

    @classmethod
    def class_name(cls) -> str:
        return "UnidbVectorStore"

    @property
    def client(self) -> Client:
        return self._client

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        documents = []
        for node in nodes:
            embedding = node.get_embedding() if node.embedding is not None else None
            documents.append(
                {
                    "id": node.node_id,
                    "text": node.get_content(metadata_mode=MetadataMode.NONE),
                    "metadata": node_to_metadata_dict(
                        node, remove_text=True, flat_metadata=self.flat_metadata
                    ),
                    **({"embedding": embedding} if embedding is not None else {}),
                }
            )
        write_documents(self._client, self.collection, documents)
        return [node.node_id for node in nodes]

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        try:
            self._client.delete_where(self.collection, filter={"ref_doc_id": ref_doc_id})
        except NotFound:
            pass

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        # empty MetadataFilters narrow nothing; they never mean "delete everything"
        unidb_filter = to_unidb_filter(filters) if filters is not None else None
        if not unidb_filter:
            unidb_filter = None
        if node_ids is None and unidb_filter is None:
            return
        try:
            self._client.delete_where(self.collection, ids=node_ids, filter=unidb_filter)
        except NotFound:
            pass

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        if filters is not None:
            raise ValueError("get_nodes takes node_ids; query with filters instead")
        nodes = []
        for node_id in node_ids or []:
            try:
                stored = self._client.get(self.collection, node_id)
            except NotFound:
                continue
            node = metadata_dict_to_node(stored.metadata, text=stored.text)
            node.embedding = stored.embedding
            nodes.append(node)
        return nodes

    def clear(self) -> None:
        self._client.delete_collection(self.collection)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        mode = _MODES.get(query.mode)
        if mode is None:
            raise ValueError(
                f"unidb answers query modes default, hybrid, sparse and text_search, "
                f"not {query.mode.value!r}"
            )
        if query.node_ids:
            raise ValueError("unidb cannot restrict a query to node ids; use metadata filters")
        conditions = []
        if query.filters is not None:
            conditions.append(to_unidb_filter(query.filters))
        if query.doc_ids:
            conditions.append({"ref_doc_id": {"$in": list(query.doc_ids)}})
        options: dict[str, Any] = {}
        if mode == "hybrid" and query.alpha is not None:
            options = {"fusion": "weighted", "alpha": query.alpha}
        k = (query.hybrid_top_k if mode == "hybrid" else None) or query.similarity_top_k
        try:
            hits = self._client.query(
                self.collection,
                text=query.query_str if mode != "vector" or query.query_embedding is None else None,
                vector=query.query_embedding if mode != "bm25" else None,
                k=k,
                mode=mode,
                filter=(
                    None
                    if not conditions
                    else conditions[0]
                    if len(conditions) == 1
                    else {"$and": conditions}
                ),
                **options,
            ).hits
        except NotFound:
            hits = []
        nodes = [metadata_dict_to_node(hit.metadata, text=hit.text) for hit in hits]
        return VectorStoreQueryResult(
            nodes=nodes, similarities=[hit.score for hit in hits], ids=[hit.id for hit in hits]
        )

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)
