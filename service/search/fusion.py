"""Fusing ranked lists: reciprocal rank fusion, or a convex mix of scaled scores (each list
divided by its best, min-max scaled, or scaled by its own distribution)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from unidb.models import QueryRequest

RRF_K = 60


def rrf(rankings: Sequence[Sequence[int]], *, k: int = RRF_K) -> dict[int, float]:
    """Σ 1 / (k + rank) over the lists a key appears in (ranks from 1)."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return fused


def _scaled(scores: Mapping[int, float]) -> dict[int, float]:
    """Scores divided by the best one (min-max when the best is not positive)."""
    if not scores:
        return {}
    high = max(scores.values())
    if high > 0:
        return {key: score / high for key, score in scores.items()}
    low = min(scores.values())
    span = high - low
    return {key: (score - low) / span if span else 1.0 for key, score in scores.items()}


def weighted(
    bm25: Mapping[int, float],
    vector: Mapping[int, float],
    *,
    alpha: float,
    bm25_complete: bool = False,
) -> dict[int, float]:
    """``alpha`` · vector + (1 − alpha) · bm25, each divided by its list's best score.

    A key missing from one list takes that list's lowest scaled score: it ranked below
    every candidate the list returned. (Chosen on SciFact's train judgments over min-max
    and z-score scaling and over zero for missing keys; see the README.) When BM25 returned
    fewer hits than it was asked for (``bm25_complete``), a key missing from it matched no
    query term and takes zero: otherwise the only match of a rare term would score no
    better than every document without it.
    """
    bm25_scaled, vector_scaled = _scaled(bm25), _scaled(vector)
    bm25_floor = 0.0 if bm25_complete else min(bm25_scaled.values(), default=0.0)
    vector_floor = min(vector_scaled.values(), default=0.0)
    return {
        key: alpha * vector_scaled.get(key, vector_floor)
        + (1.0 - alpha) * bm25_scaled.get(key, bm25_floor)
        for key in bm25_scaled.keys() | vector_scaled.keys()
    }


def _min_max(scores: Mapping[int, float]) -> dict[int, float]:
    """Each score's place between its list's lowest (0) and highest (1)."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {key: (score - low) / span if span else 1.0 for key, score in scores.items()}


def _by_distribution(scores: Mapping[int, float]) -> dict[int, float]:
    """Each score's place between the list's mean minus and plus three standard deviations,
    clipped to [0, 1] (a list whose scores are all equal scales to 1)."""
    if not scores:
        return {}
    mean = statistics.fmean(scores.values())
    spread = statistics.pstdev(scores.values()) if len(scores) > 1 else 0.0
    if spread == 0.0:
        return dict.fromkeys(scores, 1.0)
    low, width = mean - 3 * spread, 6 * spread
    return {key: min(1.0, max(0.0, (score - low) / width)) for key, score in scores.items()}


def mixed(
    bm25: Mapping[int, float],
    vector: Mapping[int, float],
    *,
    alpha: float,
    scale: str,
) -> dict[int, float]:
    """``alpha`` · vector + (1 − alpha) · bm25 with each list scaled on its own
    (``relative``: min-max, as Weaviate's relative score fusion; ``dbsf``: by its
    distribution, as Qdrant's), a key missing from a list taking 0 from it."""
    scaler = _min_max if scale == "relative" else _by_distribution
    bm25_scaled, vector_scaled = scaler(bm25), scaler(vector)
    return {
        key: alpha * vector_scaled.get(key, 0.0) + (1.0 - alpha) * bm25_scaled.get(key, 0.0)
        for key in bm25_scaled.keys() | vector_scaled.keys()
    }


def fuse(
    request: QueryRequest,
    bm25_hits: list[tuple[int, float]],
    vector_hits: list[tuple[int, float]],
    *,
    depth: int,
) -> list[tuple[int, float | None]]:
    """Keys best first with their fused score: the request's fusion when both retrievers
    answered; one retriever's own scores when only one did (fused only in hybrid mode).
    ``depth`` is how many hits each retriever was asked for."""
    if not bm25_hits or not vector_hits:
        single = bm25_hits or vector_hits
        fused = request.mode == "hybrid"
        return [(key, score if fused else None) for key, score in single]
    if request.fusion == "rrf":
        scores = rrf([[k for k, _ in bm25_hits], [k for k, _ in vector_hits]])
    elif request.fusion in ("relative", "dbsf"):
        scores = mixed(dict(bm25_hits), dict(vector_hits), alpha=request.alpha,
                       scale=request.fusion)  # fmt: skip
    else:
        scores = weighted(
            dict(bm25_hits),
            dict(vector_hits),
            alpha=request.alpha,
            bm25_complete=len(bm25_hits) < depth,
        )
    return [
        (key, score) for key, score in sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    ]
