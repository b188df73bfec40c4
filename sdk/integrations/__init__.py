"""unidb inside other frameworks: ``unidb.integrations.langchain`` (extra ``langchain``) and
``unidb.integrations.llamaindex`` (extra ``llamaindex``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._sync_client import Client
from ..errors import NotFound

# documents per upsert request, sent one after another so a later duplicate id wins
_BATCH = 500


def write_documents(client: Client, collection: str, documents: Sequence[dict[str, Any]]) -> None:
    """Upsert ``documents``, creating the collection first, with the dimension of their
    embeddings, when it is missing."""
    if not documents:
        return
    first = documents[0].get("embedding")
    if first is not None:
        try:
            client.get_collection(collection)
        except NotFound:
            client.create_collection(collection, dim=len(first))
    client.ingest(collection, documents, batch_size=_BATCH, concurrency=1)
