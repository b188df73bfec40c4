"""Laying retrieved chunks out as a prompt, token by token.

A prompt is ``system``, then one segment per chunk (``delimiter`` + the chunk), then the
question. Each piece is tokenized on its own and the token ids are concatenated, so a
segment's tokens are the same wherever it sits: a shared prefix of pieces is a shared
prefix of tokens, which is what an engine's prefix cache needs. Callers send
``token_ids`` to the engine as the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from unidb.errors import InvalidInput
from unidb.models import ContextTemplate


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


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def pieces(tokenizer: Tokenizer, template: ContextTemplate, chunks: Sequence[Chunk]) -> list[Piece]:
    texts = [render(template, c) for c in chunks]
    return [
        Piece(c, text, ids)
        for c, text, ids in zip(chunks, texts, encode(tokenizer, texts), strict=True)
    ]


def frame(
    tokenizer: Tokenizer, template: ContextTemplate, question: str
) -> tuple[str, list[int], str, list[int]]:
    """The fixed head and the question tail, as text and tokens."""
    tail_text = template.question.replace("{question}", question)
    head, tail = encode(tokenizer, [template.system, tail_text])
    return template.system, head, tail_text, tail


def budget(max_tokens: int | None, head: list[int], tail: list[int]) -> int | None:
    """Tokens left for segments under ``max_tokens``; a 400 if the frame alone overflows."""
    if max_tokens is None:
        return None
    left = max_tokens - len(head) - len(tail)
    if left < 0:
        raise InvalidInput(
            f"max_tokens {max_tokens} is below what the template and question take "
            f"({len(head) + len(tail)} tokens)",
            field="max_tokens",
        )
    return left


def fit(ranked: Sequence[Piece], room: int | None) -> list[Piece]:
    """The best-ranked pieces that fit in ``room`` tokens, in rank order."""
    if room is None:
        return list(ranked)
    kept: list[Piece] = []
    for piece in ranked:
        if len(piece.token_ids) <= room:
            kept.append(piece)
            room -= len(piece.token_ids)
    return kept


def stable(chosen: Sequence[Piece]) -> list[Piece]:
    """An order that depends only on which chunks were chosen, not on their ranking."""
    return sorted(chosen, key=lambda p: (p.chunk.id, p.chunk.version))
