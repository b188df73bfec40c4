"""Fusing BM25 and vector rankings: reciprocal rank fusion and the weighted mix."""

from __future__ import annotations

import pytest

from unidb.models import QueryRequest
from unidb.service.search.fusion import RRF_K, fuse, rrf, weighted


def test_rrf_sums_reciprocal_ranks_over_the_lists() -> None:
    fused = rrf([[1, 2, 3], [3, 1]])
    assert fused == pytest.approx(
        {
            1: 1 / (RRF_K + 1) + 1 / (RRF_K + 2),
            2: 1 / (RRF_K + 2),
            3: 1 / (RRF_K + 3) + 1 / (RRF_K + 1),
        }
    )
    assert sorted(fused, key=lambda key: -fused[key]) == [1, 3, 2]
    assert rrf([[7, 8]], k=0) == {7: 1.0, 8: 0.5}
    assert rrf([]) == {}


def test_weighted_alpha_picks_a_side() -> None:
    bm25 = {1: 10.0, 2: 5.0, 3: 1.0}
    vector = {3: 0.9, 2: 0.6, 1: 0.3}
    only_vector = weighted(bm25, vector, alpha=1.0)
    only_bm25 = weighted(bm25, vector, alpha=0.0)
    assert sorted(only_vector, key=lambda k: -only_vector[k]) == [3, 2, 1]
    assert sorted(only_bm25, key=lambda k: -only_bm25[k]) == [1, 2, 3]
    # each list divided by its best score, then mixed
    half = weighted(bm25, vector, alpha=0.5)
    assert half == pytest.approx({1: 0.5 * 1 / 3 + 0.5, 2: 0.5 * 2 / 3 + 0.25, 3: 0.5 + 0.05})


def test_weighted_missing_keys_take_the_lists_floor() -> None:
    bm25 = {1: 4.0, 2: 2.0}
    vector = {3: 1.0, 1: 0.5}
    mixed = weighted(bm25, vector, alpha=0.5)
    # 3 is missing from BM25: it takes BM25's lowest scaled score (0.5), 2 the vector's (0.5)
    assert mixed == pytest.approx({1: 0.75, 2: 0.5, 3: 0.75})
    # BM25 returned fewer hits than asked for: a key it lacks matched no query term
    complete = weighted(bm25, vector, alpha=0.5, bm25_complete=True)
    assert complete[3] == pytest.approx(0.5) and complete[1] == pytest.approx(0.75)


def test_scores_that_are_not_positive_are_min_max_scaled() -> None:
    assert weighted({}, {1: -1.0, 2: -3.0, 3: -2.0}, alpha=1.0) == pytest.approx(
        {1: 1.0, 2: 0.0, 3: 0.5}
    )
    assert weighted({5: 0.0, 6: 0.0}, {}, alpha=0.0) == {5: 1.0, 6: 1.0}


def test_fuse_orders_best_first_ties_by_key() -> None:
    request = QueryRequest(text="x", vector=[1.0, 0.0], fusion="rrf")
    # 1 and 2 trade places between the lists: equal scores, the smaller key first
    fused = fuse(request, [(2, 9.0), (1, 3.0)], [(1, 0.9), (2, 0.1)], depth=10)
    assert [key for key, _ in fused] == [1, 2]
    assert fused[0][1] == pytest.approx(fused[1][1])
    weighted_request = QueryRequest(text="x", vector=[1.0, 0.0], fusion="weighted", alpha=0.9)
    mixed = fuse(weighted_request, [(2, 9.0), (1, 3.0)], [(1, 0.9), (2, 0.1)], depth=2)
    assert [key for key, _ in mixed] == [1, 2]


def test_one_retriever_keeps_its_order_and_scores_only_in_hybrid_mode() -> None:
    hits = [(4, 0.8), (2, 0.5)]
    hybrid = QueryRequest(text="x", vector=[1.0, 0.0], mode="hybrid")
    assert fuse(hybrid, [], hits, depth=10) == hits
    assert fuse(hybrid, hits, [], depth=10) == hits
    vector_only = QueryRequest(vector=[1.0, 0.0], mode="vector")
    assert fuse(vector_only, [], hits, depth=10) == [(4, None), (2, None)]
    assert fuse(hybrid, [], [], depth=10) == []


def test_relative_score_fusion_min_max_scales_each_list() -> None:
    from unidb.service.search.fusion import mixed

    bm25 = {1: 12.0, 2: 7.0, 3: 2.0}
    vector = {2: 0.9, 4: 0.5, 3: 0.1}
    fused = mixed(bm25, vector, alpha=0.25, scale="relative")
    # bm25 → 1, 0.5, 0; vector → 1 (2), 0.5 (4), 0 (3); a list's missing key adds 0
    assert fused == pytest.approx({1: 0.75, 2: 0.75 * 0.5 + 0.25, 3: 0.0, 4: 0.25 * 0.5})


def test_distribution_based_fusion_scales_by_mean_and_three_deviations() -> None:
    from unidb.service.search.fusion import mixed

    bm25 = {1: 100.0, 2: 10.0, 3: 9.0, 4: 8.0}  # mean 31.75, σ 39.41
    vector = {2: 0.30, 3: 0.50, 4: 0.40, 5: 0.99}  # mean 0.5475, σ 0.2638
    dbsf = mixed(bm25, vector, alpha=0.5, scale="dbsf")

    def scaled(score: float, values: list[float]) -> float:
        mean = sum(values) / len(values)
        sigma = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        return min(1.0, max(0.0, (score - mean + 3 * sigma) / (6 * sigma)))

    b, v = list(bm25.values()), list(vector.values())
    assert dbsf == pytest.approx({
        1: 0.5 * scaled(100.0, b),  # missing from the vector list: 0 from it
        2: 0.5 * scaled(10.0, b) + 0.5 * scaled(0.30, v),
        3: 0.5 * scaled(9.0, b) + 0.5 * scaled(0.50, v),
        4: 0.5 * scaled(8.0, b) + 0.5 * scaled(0.40, v),
        5: 0.5 * scaled(0.99, v),
    })  # fmt: skip
    # past three deviations a score is clipped: one far outlier scales to 1 at most
    outlier = {k: float(k == 0) * 1e6 for k in range(20)}
    assert mixed(outlier, {}, alpha=0.0, scale="dbsf")[0] == 1.0
    # a list of equal scores scales to 1 under both
    assert mixed({1: 3.0, 2: 3.0}, {}, alpha=0.0, scale="dbsf") == {1: 1.0, 2: 1.0}
    assert mixed({1: 3.0, 2: 3.0}, {}, alpha=0.0, scale="relative") == {1: 1.0, 2: 1.0}
