"""Queries served from the FAISS snapshot: recall against exact search, filters, and every
write made after (or during) the build answered as Postgres has it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

import unidb
from unidb.models import Document, IndexBuildRequest
from unidb.service.engine import Engine
from unidb.service.writes import Embedded

DIM = 32
N = 6000


def _clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((60, DIM)).astype(np.float32)
    return (centers[rng.integers(0, 60, n)] + 0.35 * rng.standard_normal((n, DIM))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def indexed(engine: Engine) -> Iterator[tuple[str, np.ndarray]]:
    name = "ann_search_module"
    client = unidb.Client(backend=engine)
    client.create_collection(name, dim=DIM)
    vectors = _clustered(N, 1)
    client.ingest(
        name,
        ({"id": f"v{i}", "embedding": v, "metadata": {"half": i % 2, "rare": i % 100 == 0}}
         for i, v in enumerate(vectors)),
        batch_size=500,
    )  # fmt: skip
    job = client.build_index(name, timeout=120)
    assert job.status == "done", job
    try:
        yield name, vectors
    finally:
        engine.delete_collection(name)


def _exact(vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray) -> list[str]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    scores[~allowed] = -np.inf
    return [f"v{i}" for i in np.argsort(-scores)[:k]]


def test_recall_against_exact(engine: Engine, indexed: tuple[str, np.ndarray]) -> None:
    name, vectors = indexed
    client = unidb.Client(backend=engine)
    queries = _clustered(60, 2)
    everyone = np.ones(N, dtype=bool)
    half = np.arange(N) % 2 == 1
    found = filtered = 0.0
    for query in queries:
        plain = client.query(name, vector=query, k=10, mode="vector")
        assert plain.vector_index == "faiss" and not plain.exhaustive
        found += len({h.id for h in plain.hits} & set(_exact(vectors, query, 10, everyone)))
        some = client.query(name, vector=query, k=10, mode="vector", filter={"half": 1})
        assert some.vector_index == "faiss"
        assert all(h.metadata["half"] == 1 for h in some.hits)
        filtered += len({h.id for h in some.hits} & set(_exact(vectors, query, 10, half)))
    assert found / (10 * len(queries)) >= 0.95
    assert filtered / (10 * len(queries)) >= 0.95

    explained = client.query(name, vector=queries[0], k=10, mode="vector", filter={"half": 1},
                             explain=True).explain  # fmt: skip
    assert explained is not None and explained.vector_plan is not None
    assert explained.vector_plan.startswith("faiss: the filter checked on the snapshot's")

    # a filter admitting 60 documents: answered by an exact scan, exactly
    rare = np.arange(N) % 100 == 0
    few = client.query(name, vector=queries[0], k=10, mode="vector", filter={"rare": True},
                       explain=True)  # fmt: skip
    assert few.vector_index == "exact" and few.exhaustive
    assert [h.id for h in few.hits] == _exact(vectors, queries[0], 10, rare)
    assert few.explain is not None
    assert few.explain.vector_plan == "pgvector: the filter admits at most 2000 documents"


def test_a_narrow_filter_widens_the_snapshots_search_and_never_under_fills(
    engine: Engine, indexed: tuple[str, np.ndarray]
) -> None:
    """A filter admitting more documents than an exact scan should take, but few enough
    that the first round's candidates hold fewer than k of them."""
    name, vectors = indexed
    settings = engine.settings.model_copy(update={"ann_exact_below": 10})
    narrow = Engine(settings, engine.pool, engine.dsn, background_pool=engine.background_pool)
    narrow.planner.text_indexes = engine.text_indexes
    try:
        rare = np.arange(N) % 100 == 0  # 60 documents, over the 10 answered exactly
        widened = 0
        for query in _clustered(20, 3):
            answer = narrow.query(
                name,
                unidb.models.QueryRequest(
                    vector=query.tolist(), k=10, mode="vector", filter={"rare": True},
                    explain=True,
                ),
            )  # fmt: skip
            assert answer.explain is not None and answer.explain.vector_plan is not None
            assert len(answer.hits) == 10 and all(h.metadata["rare"] for h in answer.hits)
            if answer.vector_index == "faiss":
                widened += "rounds" in answer.explain.vector_plan
                found = {h.id for h in answer.hits}
                assert len(found & set(_exact(vectors, query, 10, rare))) >= 8
            else:  # the widest round came up short: pgvector answered (exactly, here)
                assert answer.explain.vector_plan.startswith("pgvector: 4 rounds")
                assert [h.id for h in answer.hits] == _exact(vectors, query, 10, rare)
        assert widened > 0
    finally:
        narrow.text_indexes.close()
        narrow.outbound.close()


def test_writes_after_the_build_are_answered(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=DIM)
    vectors = _clustered(3000, 3)
    client.ingest(collection, ({"id": f"v{i}", "embedding": v} for i, v in enumerate(vectors)),
                  batch_size=500)  # fmt: skip
    query = _clustered(1, 4)[0]
    before = client.query(collection, vector=query, k=5, mode="vector")
    assert before.vector_index != "faiss"

    # a write whose transaction spans the build: the snapshot cannot hold it
    with engine.transaction() as conn:
        during = Embedded([Document(id="during", embedding=query * 3)])
        engine.writes.upsert_into(conn, collection, during)
        job = engine.build_index(collection, IndexBuildRequest())
        deadline = time.monotonic() + 120
        while engine.get_job(job.id).status not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert engine.get_job(job.id).status == "done"
    served = client.query(collection, vector=query, k=5, mode="vector")
    assert served.vector_index == "faiss"
    assert served.hits[0].id == "during" and served.hits[0].score == pytest.approx(1.0, abs=1e-5)
    previous_best = [h.id for h in before.hits]
    assert [h.id for h in served.hits[1:]] == previous_best[:4]

    # after the build: new, deleted and moved documents as Postgres has them
    client.upsert(collection, [{"id": "new", "embedding": query * 2}])
    client.delete(collection, "during")
    moved = previous_best[3]
    client.upsert(collection, [{"id": moved, "embedding": -query}])
    after = client.query(collection, vector=query, k=5, mode="vector")
    assert after.vector_index == "faiss"
    ids = [h.id for h in after.hits]
    assert ids[0] == "new" and "during" not in ids and moved not in ids
    assert ids[1:4] == previous_best[:3]
    far = client.query(collection, vector=-query, k=1, mode="vector")
    assert far.hits[0].id == moved and far.hits[0].score == pytest.approx(1.0, abs=1e-5)

    hybrid = client.query(collection, vector=query, k=3, mode="hybrid")
    assert hybrid.vector_index == "faiss" and hybrid.hits[0].id == "new"
