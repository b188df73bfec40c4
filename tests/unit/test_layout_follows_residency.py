"""Layouts that follow what the engines hold: the reuse walk over cached blocks, and a
session that starts a compact prefix when its grown one was evicted."""

from __future__ import annotations

from typing import Any

from unidb.models import ContextRequest
from unidb.service.context import builder as builder_module
from unidb.service.context.builder import ContextBuilder, SessionTurn
from unidb.service.context.hashing import BlockHasher, event_key
from unidb.service.context.kv_events import KvEvent, Residency
from unidb.service.context.prompt import Chunk, Piece

BLOCK = 16
HEAD = list(range(1, 41))  # two whole blocks and a partial one
HASHER = BlockHasher()


def _piece(name: str, start: int, length: int = 50) -> Piece:
    chunk = Chunk(key=start, id=name, version=1, text=name, title="")
    return Piece(chunk, name, list(range(start, start + length)))


A, B, C, X, Y = (_piece(n, s) for n, s in [("a", 1000), ("b", 2000), ("c", 3000),
                                            ("x", 4000), ("y", 5000)])  # fmt: skip


def _builder(residency: Residency) -> ContextBuilder:
    tokenizers: Any = None  # the layout decisions never tokenize
    return ContextBuilder(tokenizers, HASHER, residency, follows_engines=True)


def _held(
    residency: Residency,
    *laid: Piece,
    head: list[int] = HEAD,
    salt: str | None = None,
    upto: int | None = None,
    engine: str = "engine",
) -> None:
    """The engine stores the prompt head + ``laid`` (its first ``upto`` blocks), and unidb
    has followed it from its first event."""
    tokens = head + [t for p in laid for t in p.token_ids]
    keys = [event_key(h) for h in HASHER.chain(tokens, block_size=BLOCK, salt=salt)][:upto]
    residency.apply(engine, [KvEvent("BlockStored", keys, "GPU")])
    residency.mark_complete(engine, True)


def _walk(residency: Residency, chosen: list[Piece], **options: Any) -> list[Piece]:
    head = options.pop("head", HEAD)
    return _builder(residency)._walk_resident(head, chosen, block_size=BLOCK, **options)


def test_a_chain_continues_from_its_parent() -> None:
    tokens = list(range(100, 180))
    whole = HASHER.chain(tokens, block_size=BLOCK, salt="s")
    first = HASHER.chain(tokens[:32], block_size=BLOCK, salt="s")
    rest = HASHER.chain(tokens[32:], block_size=BLOCK, salt="s", parent=first[-1])
    assert first + rest == whole
    # the salt goes with block 0 only: a continued chain never takes it
    assert HASHER.chain(tokens[32:], block_size=BLOCK, salt="other", parent=first[-1]) == rest


def test_reuse_walks_the_blocks_an_engine_holds() -> None:
    residency = Residency()
    assert _walk(residency, [A, B, C], salt=None) == []

    _held(residency, B, A)  # an earlier prompt laid out b, then a
    assert _walk(residency, [A, B, C], salt=None) == [B, A]
    assert _walk(residency, [C, A, B], salt=None) == [B, A]
    # held under another salt, the blocks are not this prompt's
    assert _walk(residency, [A, B, C], salt="t") == []

    # a run that ends inside a chunk ends the walk there
    cut = Residency()
    _held(cut, C, A, upto=4)  # the head's two blocks, then two of c's three
    assert _walk(cut, [A, B, C], salt=None) == [C]
    # nor does the walk start where the head itself is gone
    headless = Residency()
    _held(headless, A)
    first = event_key(HASHER.chain(HEAD, block_size=BLOCK)[0])
    headless.apply("engine", [KvEvent("BlockRemoved", [first], "GPU")])
    assert _walk(headless, [A], salt=None) == []

    # a head shorter than a block: the first chunk's first block is block 0, salted
    short = Residency()
    _held(short, B, head=[1, 2, 3], salt="t")
    assert _walk(short, [A, B], head=[1, 2, 3], salt="t") == [B]
    assert _walk(short, [A, B], head=[1, 2, 3], salt=None) == []


def test_the_walk_follows_one_engine_at_a_time() -> None:
    residency = Residency()
    _held(residency, A, engine="one")  # head + a on one engine
    _held(residency, A, B, engine="two")  # head + a + b on another
    # the head and a are on both, b only on two: two's walk holds more and wins
    assert _walk(residency, [A, B], salt=None) == [A, B]
    spliced = Residency()
    _held(spliced, A, engine="one")
    two = [event_key(h) for h in HASHER.chain(HEAD + A.token_ids + B.token_ids, block_size=BLOCK)]
    spliced.apply("two", [KvEvent("BlockStored", two[5:], "GPU")])  # b's blocks, not the head
    # no one engine holds head + a + b: the walk does not splice one's blocks onto another's
    assert _walk(spliced, [A, B], salt=None) == [A]


def test_the_walk_hashes_a_bounded_number_of_blocks(monkeypatch: Any) -> None:
    # chunks that all begin alike: every candidate's first blocks are held at every step
    filler = list(range(7000, 7032))
    many = [Piece(Chunk(i, f"p{i}", 1, "", ""), "", filler + [8000 + i] * 20) for i in range(40)]
    residency = Residency()
    _held(residency, *many)
    calls = 0
    chain = BlockHasher.chain

    def counted(self: BlockHasher, *args: Any, **kwargs: Any) -> list[bytes]:
        nonlocal calls
        calls += 1
        return chain(self, *args, **kwargs)

    monkeypatch.setattr(builder_module, "WALK_HASH_BUDGET", 200)
    monkeypatch.setattr(BlockHasher, "chain", counted)
    walked = _walk(residency, many, salt=None)
    assert 0 < len(walked) < len(many)  # the budget ran out before the walk did
    assert calls <= 200 + 1  # the head's chain, then one call per block within the budget


def _compact(residency: Residency, ranked: list[Piece]) -> SessionTurn:
    request = ContextRequest(collection="c", query="q", block_size=BLOCK)
    current = {p.chunk.key: p.chunk for p in (A, B, X, Y)}
    grown = SessionTurn([X, Y, *ranked], reset=False, dropped=[])
    previous = [X.chunk.key, Y.chunk.key]
    return _builder(residency)._compact_if_cheaper(
        grown, previous, current, ranked, 1000, HEAD, [9, 9, 9], request, None
    )


def test_a_session_whose_grown_prefix_was_evicted_starts_a_compact_one() -> None:
    # the engine holds the session's earlier prompt: growing costs a and b alone
    residency = Residency()
    _held(residency, X, Y)
    kept = _compact(residency, [A, B])
    assert [p.chunk.id for p in kept.ordered] == ["x", "y", "a", "b"] and not kept.reset

    # evicted, while this turn's chunks are held from another conversation: compact
    evicted = Residency()
    _held(evicted, B, A)
    compact = _compact(evicted, [A, B])
    assert compact.ordered == [B, A] and compact.reset and compact.dropped == ["x", "y"]

    # an engine followed whole that holds none of it: a compact prompt is shorter
    cold = Residency()
    _held(cold, C)
    compact = _compact(cold, [A, B])
    assert [p.chunk.id for p in compact.ordered] == ["a", "b"] and compact.dropped == ["x", "y"]
    # a turn that retrieved nothing keeps the session
    assert not _compact(cold, []).reset


def test_a_session_grows_without_evidence_that_its_prefix_is_gone() -> None:
    # no engine heard from yet
    assert not _compact(Residency(), [A, B]).reset
    # an engine followed from the middle of its history (a late subscriber without the
    # batches before): a block it lacks may simply be one whose event was missed
    partial = Residency()
    _held(partial, C)
    partial.mark_complete("engine", False)
    assert not _compact(partial, [A, B]).reset
    # one engine followed whole, another not: still no evidence
    mixed = Residency()
    _held(mixed, C)
    mixed.apply("late", [KvEvent("BlockStored", [1], "GPU")])
    assert not _compact(mixed, [A, B]).reset
