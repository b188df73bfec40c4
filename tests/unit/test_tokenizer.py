"""Tokenizers by name or by path: paths stay under the allowed directories; the cache is bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from unidb.errors import InvalidInput
from unidb.service.context.tokenizer import UNUSABLE, Tokenizers

from ..test_context import _minilm_file


def test_tokenizer_by_path(tmp_path: Path) -> None:
    source = Tokenizers({}, allow_paths=False).get("minilm")
    path = tmp_path / "tokenizer.json"
    source.save(str(path))
    by_path = Tokenizers({}, allow_paths=True, dirs=[tmp_path]).get(str(path))
    by_name = Tokenizers({"mine": path}, allow_paths=False).get("mine")
    text = "Autophagy declines with age."
    assert by_path.encode(text).ids == by_name.encode(text).ids
    assert isinstance(by_path, Tokenizer)
    with pytest.raises(Exception, match="not allowed"):
        Tokenizers({}, allow_paths=False).get(str(path))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InvalidInput, match=UNUSABLE):
        Tokenizers({}, allow_paths=True, dirs=[tmp_path]).get(str(tmp_path / "bad.json"))


def test_tokenizer_paths_stay_under_the_allowed_dirs(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    inside = _minilm_file(allowed / "tokenizer.json")
    elsewhere = _minilm_file(outside / "tokenizer.json")
    (allowed / "link.json").symlink_to(elsewhere)
    (allowed / "sub").symlink_to(outside, target_is_directory=True)
    tokenizers = Tokenizers({}, allow_paths=True, dirs=[allowed])
    assert isinstance(tokenizers.get(str(inside)), Tokenizer)
    for name in (
        str(elsewhere),
        f"{allowed}/../outside/tokenizer.json",
        str(allowed / "link.json"),
        str(allowed / "sub" / "tokenizer.json"),
    ):
        with pytest.raises(InvalidInput, match="UNIDB_TOKENIZER_DIRS") as refused:
            tokenizers.get(name)
        assert refused.value.field == "tokenizer"
    # allowed, but no directory at all: every path is refused
    with pytest.raises(InvalidInput, match="UNIDB_TOKENIZER_DIRS"):
        Tokenizers({}, allow_paths=True).get(str(inside))


def test_tokenizer_cache_is_bounded(tmp_path: Path) -> None:
    files = [_minilm_file(tmp_path / f"t{i}.json").resolve() for i in range(3)]
    tokenizers = Tokenizers({}, allow_paths=True, dirs=[tmp_path], cache_size=2)
    first = tokenizers.get(str(files[0]))
    for path in files[1:]:
        tokenizers.get(str(path))
    assert tokenizers.loaded_paths() == files[1:]
    tokenizers.get(str(files[1]))  # used again: the other one is now the oldest
    assert tokenizers.get(str(files[0])) is not first  # dropped, so loaded again
    assert tokenizers.loaded_paths() == [files[1], files[0]]
