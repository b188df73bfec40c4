"""Laying retrieved chunks out as a prompt, token by token.

A prompt is ``system``, then one segment per chunk (``delimiter`` + the chunk), then the
question. Each piece is tokenized on its own and the token ids are concatenated, so a
segment's tokens are the same wherever it sits: a shared prefix of pieces is a shared
prefix of tokens, which is what an engine's prefix cache needs. Callers send
``token_ids`` to the engine as the prompt.

A segment never holds more tokens than the budget leaves for segments (``room``): a longer
one is cut at a word boundary and marked ``truncated``. Its text is cut to
``CHARS_PER_TOKEN`` characters per token of room before it is tokenized, and a request
tokenizes at most ``TOKENIZED_ROOMS`` rooms' worth of characters, so a huge document is
never tokenized whole. Both assume ordinary text, whose tokens average far fewer
characters; a segment that fits the budget whole is laid out exactly as without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Encoding, Tokenizer

from unidb.errors import InvalidInput
from unidb.models import ContextTemplate

# English averages about four characters a token; a segment's text is cut at this many
# characters per token it may hold before it is tokenized
CHARS_PER_TOKEN = 8
# characters one request tokenizes at most, in rooms (room * CHARS_PER_TOKEN characters each)
TOKENIZED_ROOMS = 4


@dataclass(frozen=True, slots=True)
class Chunk:
    """A retrieved document as it stands now."""

    key: int
    id: str
    version: int
    text: str
    title: str


@dataclass(frozen=True, slots=True)
class Piece:
    chunk: Chunk
    text: str
    token_ids: list[int]
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Layout:
    head: list[int]
    pieces: list[Piece]
    tail: list[int]
    head_text: str
    tail_text: str

    @property
    def prefix_token_ids(self) -> list[int]:
        return self.head + [t for piece in self.pieces for t in piece.token_ids]

    @property
    def token_ids(self) -> list[int]:
        return self.prefix_token_ids + self.tail

    @property
    def prompt(self) -> str:
        return self.head_text + "".join(p.text for p in self.pieces) + self.tail_text


def render(template: ContextTemplate, chunk: Chunk) -> str:
    # plain replacement, not str.format: document text must never be read as a template
    body = (
        template.chunk.replace("{id}", chunk.id)
        .replace("{title}", chunk.title)
        .replace("{text}", chunk.text)
    )
    return template.delimiter + body


def _encodings(tokenizer: Tokenizer, texts: Sequence[str]) -> list[Encoding]:
    if not texts:
        return []
    return list(tokenizer.encode_batch(list(texts), add_special_tokens=False))


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in _encodings(tokenizer, texts)]


def _clip(text: str, room: int) -> str:
    return text[: room * CHARS_PER_TOKEN]


def _piece(chunk: Chunk, text: str, clipped: str, encoding: Encoding, room: int) -> Piece:
    """The segment of ``chunk`` whose rendered ``text`` was tokenized as ``clipped``: whole,
    or cut to at most ``room`` tokens at a word boundary (a word cut in two may tokenize
    differently on its own, so the prompt would not tokenize as its pieces do)."""
    ids = encoding.ids
    if len(clipped) == len(text) and len(ids) <= room:
        return Piece(chunk, text, ids)
    words = encoding.word_ids
    kept = min(room, len(ids))
    # the word that the token cap or the character clip cut into: none of it is kept
    cut_word = words[kept] if kept < len(ids) else (words[-1] if ids else None)
    end = kept
    while cut_word is not None and end > 0 and words[end - 1] == cut_word:
        end -= 1
    if end == 0:  # one word longer than the room: cut inside it
        end = kept
    stop = encoding.offsets[end - 1][1] if end else 0
    return Piece(chunk, clipped[:stop], ids[:end], truncated=True)


def pieces(
    tokenizer: Tokenizer, template: ContextTemplate, chunks: Sequence[Chunk], room: int
) -> list[Piece]:
    """Every chunk's segment, each at most ``room`` tokens, while the characters tokenized
    stay within ``TOKENIZED_ROOMS`` rooms (the later chunks are left out past that)."""
    texts: list[tuple[Chunk, str, str]] = []
    spent, allowed = 0, TOKENIZED_ROOMS * room * CHARS_PER_TOKEN
    for chunk in chunks:
        text = render(template, chunk)
        clipped = _clip(text, room)
        spent += len(clipped)
        if spent > allowed:
            break
        texts.append((chunk, text, clipped))
    encodings = _encodings(tokenizer, [clipped for _, _, clipped in texts])
    made = (
        _piece(chunk, text, clipped, encoding, room)
        for (chunk, text, clipped), encoding in zip(texts, encodings, strict=True)
    )
    return [piece for piece in made if _worth_sending(piece)]


def _worth_sending(piece: Piece) -> bool:
    # a chunk cut to nothing (no room at all) is no segment
    return bool(piece.token_ids) or not piece.truncated


def frame(
    tokenizer: Tokenizer, template: ContextTemplate, question: str
) -> tuple[str, list[int], str, list[int]]:
    """The fixed head and the question tail, as text and tokens."""
    tail_text = template.question.replace("{question}", question)
    head, tail = encode(tokenizer, [template.system, tail_text])
    return template.system, head, tail_text, tail


def budget(max_tokens: int, head: list[int], tail: list[int]) -> int:
    """Tokens left for segments under ``max_tokens``; a 400 if the frame alone overflows."""
    left = max_tokens - len(head) - len(tail)
    if left < 0:
        raise InvalidInput(
            f"max_tokens {max_tokens} is below what the template and question take "
            f"({len(head) + len(tail)} tokens)",
            field="max_tokens",
        )
    return left


def fit(
    tokenizer: Tokenizer, template: ContextTemplate, ranked: Sequence[Chunk], room: int
) -> list[Piece]:
    """The best-ranked chunks whose segments fit in ``room`` tokens, in rank order.

    A chunk is tokenized only if its text could fit in what is left, and only while the
    characters tokenized stay within ``TOKENIZED_ROOMS`` rooms."""
    kept: list[Piece] = []
    left = room
    spent, allowed = 0, TOKENIZED_ROOMS * room * CHARS_PER_TOKEN
    for chunk in ranked:
        text = render(template, chunk)
        clipped = _clip(text, room)
        if len(clipped) > left * CHARS_PER_TOKEN or spent + len(clipped) > allowed:
            continue
        spent += len(clipped)
        (encoding,) = _encodings(tokenizer, [clipped])
        piece = _piece(chunk, text, clipped, encoding, room)
        if _worth_sending(piece) and len(piece.token_ids) <= left:
            kept.append(piece)
            left -= len(piece.token_ids)
    return kept


def stable(chosen: Sequence[Piece]) -> list[Piece]:
    """An order that depends only on which chunks were chosen, not on their ranking."""
    return sorted(chosen, key=lambda p: (p.chunk.id, p.chunk.version))
