"""Fusing ranked lists: reciprocal rank fusion, or a convex mix of normalized scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

RRF_K = 60


def rrf(rankings: Sequence[Sequence[int]], *, k: int = RRF_K) -> dict[int, float]:
    """Σ 1 / (k + rank) over the lists a key appears in (ranks from 1)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return fused


def _min_max(scores: Mapping[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high == low:
        return dict.fromkeys(scores, 1.0)
    return {key: (score - low) / (high - low) for key, score in scores.items()}


def weighted(
    bm25: Mapping[int, float], vector: Mapping[int, float], *, alpha: float
) -> dict[int, float]:
    """``alpha`` · vector + (1 − alpha) · bm25, each min-max normalized over its candidates;
    a key missing from one list scores 0 there."""
    bm25_norm, vector_norm = _min_max(bm25), _min_max(vector)
    return {
        key: alpha * vector_norm.get(key, 0.0) + (1.0 - alpha) * bm25_norm.get(key, 0.0)
        for key in bm25_norm.keys() | vector_norm.keys()
    }
