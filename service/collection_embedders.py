"""Each collection's embedder, made once per process, and its failures as the service's errors."""

from __future__ import annotations

import threading
from typing import Any

from unidb.errors import BadGateway, GatewayTimeout, Unavailable
from unidb.indexing.embedders import (
    Embedder,
    EmbedderBusy,
    EmbedderError,
    EmbedderTimeout,
    get_embedder,
)
from unidb.service.outbound import Outbound
from unidb.service.store import catalog


class CollectionEmbedders:
    def __init__(self, outbound: Outbound) -> None:
        self.outbound = outbound
        self._embedders: dict[int, Embedder] = {}
        self._lock = threading.Lock()

    def drop(self, collection_id: int) -> None:
        with self._lock:
            self._embedders.pop(collection_id, None)

    def get(self, row: catalog.CollectionRow) -> Embedder | None:
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

    def embed(self, embedder: Embedder, texts: list[str]) -> Any:
        try:
            return embedder.embed_documents(texts)
        except EmbedderBusy as exc:
            raise Unavailable(f"{exc} (UNIDB_EMBEDDER_CONCURRENCY)", field="embedder") from exc
        except EmbedderTimeout as exc:
            raise GatewayTimeout(f"{exc} (UNIDB_EMBEDDER_TIMEOUT_S)", field="embedder") from exc
        except EmbedderError as exc:
            raise BadGateway(str(exc), field="embedder") from exc
