"""Each collection's embedder, made once per process, and its failures as the service's errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
        with upstream_errors("embedder", "UNIDB_EMBEDDER"):
            return embedder.embed_documents(texts)


@contextmanager
def upstream_errors(field: str, settings: str) -> Iterator[None]:
    """An outbound server's failures as the service's errors (503 busy, 504 slow, 502
    failed), naming ``field`` and the ``settings`` prefix that bounds them."""
    try:
        yield
    except EmbedderBusy as exc:
        raise Unavailable(f"{exc} ({settings}_CONCURRENCY)", field=field) from exc
    except EmbedderTimeout as exc:
        raise GatewayTimeout(f"{exc} ({settings}_TIMEOUT_S)", field=field) from exc
    except EmbedderError as exc:
        raise BadGateway(str(exc), field=field) from exc
