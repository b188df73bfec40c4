"""BM25 as Lucene and bm25s compute it: summed over the query's tokens, so a term the query
repeats weighs as often as it appears. Checked against bm25s on the same tokens, through a
real tantivy index and through the scoring of rows not yet indexed."""

from __future__ import annotations

import random
from pathlib import Path

import bm25s
import pytest

from unidb.indexing.bm25 import K1, B, Bm25Index

WORDS = ["river", "stone", "maple", "copper", "lantern", "harbor", "violet", "meadow",
         "falcon", "ember", "glacier", "orchard", "thistle", "canyon", "willow", "quartz"]  # fmt: skip
QUERY = "copper lantern copper harbor copper lantern"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bm25Index, dict[int, str]]:
    draw = random.Random(7)
    # short documents: tantivy stores lengths under 40 exactly, so scores can be compared
    bodies = {key: " ".join(draw.choice(WORDS) for _ in range(draw.randint(4, 30)))
              for key in range(1, 301)}  # fmt: skip
    index = Bm25Index(Path(tmp_path_factory.mktemp("bm25")))
    index.apply(bodies.items(), [], watermark=1)
    return index, bodies


def _bm25s_top(index: Bm25Index, bodies: dict[int, str], query: str) -> list[tuple[int, float]]:
    keys = list(bodies)
    retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
    retriever.index([index.analyze(bodies[k]) for k in keys], show_progress=False)
    found, scores = retriever.retrieve([index.analyze(query)], k=10, show_progress=False)
    # tantivy keeps BM25's (k1 + 1) factor, which Lucene's (and bm25s') formula drops: the
    # same ranking, every score that constant times larger
    return [(keys[int(i)], float(s) * (K1 + 1)) for i, s in zip(found[0], scores[0], strict=True)]


def test_repeated_query_terms_weigh_as_in_bm25s(corpus: tuple[Bm25Index, dict[int, str]]) -> None:
    index, bodies = corpus
    expected = _bm25s_top(index, bodies, QUERY)
    found = index.search(QUERY, limit=10)
    assert [key for key, _ in found] == [key for key, _ in expected]
    assert [score for _, score in found] == pytest.approx([s for _, s in expected], rel=1e-4)

    # counting each term once gives other scores: the repeats are what is being weighed
    once = index.search("copper lantern harbor", limit=10)
    assert [score for _, score in once] != pytest.approx([s for _, s in expected], rel=1e-2)


def test_rows_not_yet_indexed_score_alike(corpus: tuple[Bm25Index, dict[int, str]]) -> None:
    index, bodies = corpus
    indexed = dict(index.search(QUERY, limit=10))
    rescored = dict(index.score_unindexed(QUERY, {key: bodies[key] for key in indexed}))
    assert rescored == pytest.approx(indexed, rel=1e-4)


def test_a_key_filter_leaves_scores_as_they_are(corpus: tuple[Bm25Index, dict[int, str]]) -> None:
    """A filtered search scores each admitted document exactly as the unfiltered one does:
    the filter admits, it adds nothing (rows scored outside the index are compared with
    these scores, and hybrid fusion scales them)."""
    index, _ = corpus
    unfiltered = dict(index.search(QUERY, limit=300))
    admitted = sorted(unfiltered)[::3]
    filtered = index.search(QUERY, limit=10, keys=admitted)
    assert filtered
    assert {key for key, _ in filtered} <= set(admitted)
    assert dict(filtered) == pytest.approx({key: unfiltered[key] for key, _ in filtered}, rel=1e-6)
