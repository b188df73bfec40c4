"""Outbound calls: unidb calls only servers the operator listed, and a tenant picks one.

A request names an entry of ``UNIDB_OUTBOUND_URLS`` (or of ``UNIDB_KV_ENGINES`` with a
``url``), or repeats its URL exactly. The URL called is always the operator's base joined
with a fixed path, so no request text reaches its scheme, host, path or query; a value that
is not on the list is refused before any network call.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from unidb.errors import InvalidInput
from unidb.indexing.embedders import EmbeddingEndpoint
from unidb.service.config import Settings

_NAMES_SHOWN = 20


def api_root(url: str) -> str:
    """``url`` without trailing slashes or ``/v1``: ``http://vllm:8000/v1/`` → ``http://vllm:8000``."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


@dataclass(frozen=True, slots=True)
class Upstream:
    """One operator-listed server: its name and its base URL (without ``/v1``)."""

    name: str
    root: str

    def url(self, path: str) -> str:
        """The URL of ``path``, a fixed path of ours such as ``/v1/completions``."""
        return self.root + path


class Outbound:
    """The operator's list of servers, and one embedding endpoint per listed server."""

    def __init__(
        self,
        entries: Mapping[str, str],
        *,
        embedder_timeout_s: float = 60.0,
        embedder_concurrency: int = 8,
        embedder_wait_s: float = 1.0,
        rerank_timeout_s: float = 10.0,
        rerank_concurrency: int = 4,
        rerank_wait_s: float = 1.0,
    ) -> None:
        self._by_name = {name: Upstream(name, api_root(url)) for name, url in entries.items()}
        self._by_root: dict[str, Upstream] = {}
        for upstream in self._by_name.values():
            self._by_root.setdefault(upstream.root, upstream)
        self._embedder_timeout_s = embedder_timeout_s
        self._embedder_concurrency = embedder_concurrency
        self._embedder_wait_s = embedder_wait_s
        self._rerank_timeout_s = rerank_timeout_s
        self._rerank_concurrency = rerank_concurrency
        self._rerank_wait_s = rerank_wait_s
        self._endpoints: dict[str, EmbeddingEndpoint] = {}
        self._rerankers: dict[str, EmbeddingEndpoint] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Outbound:
        entries = dict(settings.outbound_urls)
        for engine in settings.kv_engines:
            if engine.url is None:
                continue
            listed = entries.setdefault(engine.name, engine.url)
            if api_root(listed) != api_root(engine.url):
                raise ValueError(
                    f"{engine.name!r} names two servers: in UNIDB_OUTBOUND_URLS and in "
                    "UNIDB_KV_ENGINES"
                )
        return cls(
            entries,
            embedder_timeout_s=settings.embedder_timeout_s,
            embedder_concurrency=settings.embedder_concurrency,
            embedder_wait_s=settings.embedder_wait_s,
            rerank_timeout_s=settings.rerank_timeout_s,
            rerank_concurrency=settings.rerank_concurrency,
            rerank_wait_s=settings.rerank_wait_s,
        )

    def resolve(self, value: str, *, field: str) -> Upstream:
        """The listed server that ``value`` names, or whose URL it repeats; else 400."""
        upstream = self._by_name.get(value) or self._by_root.get(api_root(value))
        if upstream is None:
            names = sorted(self._by_name)
            listed = ", ".join(names[:_NAMES_SHOWN]) + (
                ", ..." if len(names) > _NAMES_SHOWN else ""
            )
            raise InvalidInput(
                "not a server the operator lists (UNIDB_OUTBOUND_URLS, UNIDB_KV_ENGINES); "
                + (f"name one of: {listed}" if names else "none is listed"),
                field=field,
            )
        return upstream

    def embedding_endpoint(self, value: str, *, field: str) -> EmbeddingEndpoint:
        """The embedding endpoint of the server ``value`` picks, shared by every collection
        using it (one HTTP client, one bound on calls in flight)."""
        upstream = self.resolve(value, field=field)
        return self._endpoint(self._endpoints, upstream, "/v1/embeddings", "embedder",
                              self._embedder_timeout_s, self._embedder_concurrency,
                              self._embedder_wait_s)  # fmt: skip

    def rerank_endpoint(self, value: str, *, field: str) -> EmbeddingEndpoint:
        """The ``/rerank`` of the server ``value`` picks: one HTTP client and one bound on
        calls in flight per server, apart from its embeddings'."""
        upstream = self.resolve(value, field=field)
        return self._endpoint(self._rerankers, upstream, "/rerank", "reranker",
                              self._rerank_timeout_s, self._rerank_concurrency,
                              self._rerank_wait_s)  # fmt: skip

    def _endpoint(
        self,
        made: dict[str, EmbeddingEndpoint],
        upstream: Upstream,
        path: str,
        role: str,
        timeout_s: float,
        concurrency: int,
        wait_s: float,
    ) -> EmbeddingEndpoint:
        with self._lock:
            endpoint = made.get(upstream.name)
            if endpoint is None:
                endpoint = EmbeddingEndpoint(
                    upstream.name,
                    upstream.url(path),
                    timeout_s=timeout_s,
                    concurrency=concurrency,
                    wait_s=wait_s,
                    role=role,
                )
                made[upstream.name] = endpoint
            return endpoint

    def close(self) -> None:
        with self._lock:
            endpoints = [*self._endpoints.values(), *self._rerankers.values()]
            self._endpoints, self._rerankers = {}, {}
        for endpoint in endpoints:
            endpoint.close()
