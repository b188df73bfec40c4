"""The live segment against a brute-force model of the collection: every pass of upserts,
updates and deletes leaves the snapshot plus its pieces answering as the current vectors
do, pieces stay few, and a newer snapshot takes over the entries it lacks."""

from __future__ import annotations

import numpy as np
import pytest

from unidb.indexing import live_segment
from unidb.indexing.faiss_index import faiss, prepare, prepare_query, score
from unidb.indexing.live_segment import Live, best_first

DIM = 16
METRIC = "cosine"


def _snapshot(current: dict[int, np.ndarray]) -> object:
    """An exact snapshot of ``current`` (a flat index keyed by document key)."""
    index = faiss.IndexIDMap2(faiss.IndexFlat(DIM, faiss.METRIC_INNER_PRODUCT))
    if current:
        keys = np.fromiter(current, dtype=np.int64)
        index.add_with_ids(prepare(np.stack([current[k] for k in keys]), METRIC), keys)
    return index


def _applied(live: Live, current: dict[int, np.ndarray], touched: set[int], mark: int) -> Live:
    keys = np.fromiter((k for k in sorted(touched) if k in current), dtype=np.int64)
    vectors = np.stack([current[k] for k in keys]) if len(keys) else np.empty((0, DIM), np.float32)
    return live.applied(
        mark, np.fromiter(touched, np.int64), keys, prepare(vectors, METRIC), METRIC
    )


def _top(live: Live, snapshot: object, query: np.ndarray, k: int) -> list[int]:
    found = live.search(snapshot, prepare_query(query, METRIC), k, search_params=None)
    return [key for key, _ in best_first(found.hits, METRIC)[:k]]


def _exact(current: dict[int, np.ndarray], query: np.ndarray, k: int) -> list[int]:
    keys = np.fromiter(current, dtype=np.int64)
    unit = prepare(np.stack([current[key] for key in keys]), METRIC)
    scores = unit @ prepare_query(query, METRIC)[0]
    return [int(keys[i]) for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("flat_up_to", [4096, 8])  # flat pieces; HNSW pieces past 8 vectors
def test_passes_of_changes_answer_as_the_current_vectors(
    monkeypatch: pytest.MonkeyPatch, flat_up_to: int
) -> None:
    monkeypatch.setattr(live_segment, "FLAT_UP_TO", flat_up_to)
    rng = np.random.default_rng(7)
    current = {key: rng.standard_normal(DIM).astype(np.float32) for key in range(0, 2000, 2)}
    snapshot = _snapshot(current)
    live = Live(watermark=100)
    next_key = 2001
    for mark in range(101, 161):
        touched: set[int] = set()
        for key in rng.choice(list(current), size=int(rng.integers(1, 12)), replace=False):
            touched.add(int(key))
            if rng.random() < 0.3:
                del current[int(key)]
            else:
                current[int(key)] = rng.standard_normal(DIM).astype(np.float32)
        for _ in range(int(rng.integers(0, 6))):
            current[next_key] = rng.standard_normal(DIM).astype(np.float32)
            touched.add(next_key)
            next_key += 2
        live = _applied(live, current, touched, mark)
        assert live.watermark == mark
        # each document current in at most one place: the snapshot (unmasked) or one piece
        in_pieces = np.concatenate(
            [p.keys[a] for p, a in zip(live.pieces, live.alive, strict=True)] or [np.empty(0)]
        )
        assert len(in_pieces) == len(set(in_pieces.tolist())) == live.vectors
        assert set(in_pieces.tolist()) <= set(current)
        assert len(live.pieces) <= int(np.log2(max(live.vectors, 1))) + 2
    assert live.vectors > 100  # some pieces were merged along the way
    for query in rng.standard_normal((25, DIM)).astype(np.float32):
        found = _top(live, snapshot, query, 10)
        if flat_up_to == 4096:  # every piece flat, the snapshot flat: exact
            assert found == _exact(current, query, 10)
        else:
            assert len(set(found) & set(_exact(current, query, 10))) >= 9
        assert set(found) <= set(current)


def test_advancing_without_changes_keeps_the_segment() -> None:
    live = Live(watermark=5)
    moved = live.advanced(9)
    assert moved.watermark == 9 and moved.pieces == live.pieces
    assert moved.advanced(3).watermark == 9  # never back


def test_a_newer_snapshot_keeps_only_the_entries_it_lacks() -> None:
    rng = np.random.default_rng(3)
    current = {key: rng.standard_normal(DIM).astype(np.float32) for key in range(500)}
    old_snapshot = _snapshot(current)
    live = Live(watermark=10)
    # changes below 20 go into the newer snapshot; those from 20 to 30 are only live
    early = {int(k) for k in rng.choice(500, 40, replace=False)}
    for key in early:
        current[key] = rng.standard_normal(DIM).astype(np.float32)
    live = _applied(live, current, early, 20)
    newer_snapshot = _snapshot(current)
    late = {int(k) for k in rng.choice(500, 30, replace=False)} | {900}
    for key in late:
        current[key] = rng.standard_normal(DIM).astype(np.float32)
    del current[int(next(iter(late - {900})))]
    live = _applied(live, current, late, 30)
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    before = [_top(live, old_snapshot, q, 10) for q in queries]

    rebased = live.rebased(np.fromiter(late, np.int64))
    assert rebased.watermark == 30
    assert rebased.vectors == len(late & set(current))
    after = [_top(rebased, newer_snapshot, q, 10) for q in queries]
    assert after == before == [_exact(current, q, 10) for q in queries]


def test_scores_come_back_as_higher_is_better() -> None:
    rng = np.random.default_rng(1)
    current = {key: rng.standard_normal(DIM).astype(np.float32) for key in range(50)}
    live = _applied(Live(watermark=1), current, {1, 2, 3}, 2)
    query = current[2]
    found = best_first(
        live.search(_snapshot(current), prepare_query(query, METRIC), 3, search_params=None).hits,
        METRIC,
    )
    assert found[0][0] == 2 and score(METRIC, found[0][1]) == pytest.approx(1.0, abs=1e-5)
    assert [score(METRIC, raw) for _, raw in found] == sorted(
        (score(METRIC, raw) for _, raw in found), reverse=True
    )


def test_pieces_are_searched_at_an_ef_scaled_to_their_size() -> None:
    rng = np.random.default_rng(3)
    size = live_segment.FLAT_UP_TO + 904  # past the flat size: an HNSW graph
    vectors = rng.standard_normal((size, DIM)).astype(np.float32)
    keys = np.arange(10**6, 10**6 + size, dtype=np.int64)
    piece = live_segment.Piece.of(keys, prepare(vectors, METRIC), METRIC)
    assert isinstance(piece.index, faiss.IndexHNSWFlat)
    # a quarter of the snapshot's size: half its ef (exponent 0.5)
    scaled = live_segment._scaled_to(piece, 4 * size, {"ef_search": 400, "other": 1})
    assert scaled == {"ef_search": 200, "other": 1}
    assert live_segment._scaled_to(piece, size, {"ef_search": 400}) == {"ef_search": 400}
    flat = live_segment.Piece.of(keys[:10], prepare(vectors[:10], METRIC), METRIC)
    assert live_segment._scaled_to(flat, 4 * size, {"ef_search": 400}) == {"ef_search": 400}

    # searched through the segment at the scaled ef, every vector of the piece is still
    # its own nearest neighbour
    live = Live.made(1, np.empty(0, np.int64), (piece,), (np.ones(size, dtype=bool),))
    snapshot = _snapshot({k: rng.standard_normal(DIM).astype(np.float32) for k in range(4 * size)})
    probes = rng.choice(size, 50, replace=False)
    found = [_top(live, snapshot, vectors[i], 1) for i in probes]
    assert found == [[int(keys[i])] for i in probes]
