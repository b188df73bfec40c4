"""The CPU half of a GPU build: a filled ``IndexHNSWCagra`` (what a CAGRA graph converts
to) keyed by document keys, written as a snapshot, loaded and searched."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from unidb.indexing import faiss_index, snapshots
from unidb.indexing.live_segment import Live


def _filled_graph(vectors: np.ndarray) -> faiss.Index:
    # on the CPU the graph is built by HNSW insertion; searched, as after a GPU build, from
    # its base level only
    graph = faiss.IndexHNSWCagra(vectors.shape[1], 16, faiss.METRIC_L2)
    graph.base_level_only = False
    graph.add(vectors)
    graph.base_level_only = True
    return graph


def test_a_filled_cagra_graph_answers_with_document_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    keys = rng.permutation(1_000_000)[:3000].astype(np.int64) + 10
    graph = _filled_graph(vectors)
    with pytest.raises(RuntimeError):
        faiss.IndexIDMap2(graph)  # what FAISS refuses, and why `keyed` exists
    index = faiss_index.keyed(graph, keys, ef_search=128)

    manifest = snapshots.Manifest(
        file="index-1.faiss", watermark=1, count=int(index.ntotal), kind="cagra",
        device="gpu", metric="l2", dim=16, built_at=0.0, job_id=1,
    )  # fmt: skip
    snapshots.write(tmp_path, index, manifest)
    served = snapshots.load(tmp_path, manifest)
    assert served.ntotal == 3000

    exact = faiss.IndexFlatL2(16)
    exact.add(vectors)
    _, nearest = exact.search(vectors[:50], 10)
    found = 0
    for row in range(50):
        hits = faiss_index.search(served, vectors[row], 10, "l2")
        assert hits[0][0] == keys[row]  # a stored vector finds itself first
        found += len({key for key, _ in hits} & set(keys[nearest[row]].tolist()))
    assert found / 500 >= 0.9

    allowed = keys[1000:1100]
    selector = faiss_index.faiss.IDSelectorBatch(allowed)
    hits = faiss_index.search(served, vectors[1000], 10, "l2", selector=selector)
    assert hits and hits[0][0] == keys[1000]
    assert {key for key, _ in hits} <= set(allowed.tolist())

    # a live segment masks superseded keys in the graph's answers, by document key
    live = Live(watermark=1).applied(2, keys[1000:1001], np.empty(0, np.int64),
                                     np.empty((0, 16), np.float32), "l2")  # fmt: skip
    ready = faiss_index.prepare_query(vectors[1000], "l2")
    masked = live.search(served, ready, 10, search_params={"ef_search": 64}).hits
    assert len(masked) == 10 and keys[1000] not in {key for key, _ in masked}


def test_keys_must_match_the_graph() -> None:
    graph = _filled_graph(np.random.default_rng(4).standard_normal((100, 8)).astype(np.float32))
    with pytest.raises(ValueError, match="99 keys for an index of 100 vectors"):
        faiss_index.keyed(graph, np.arange(99), ef_search=64)
