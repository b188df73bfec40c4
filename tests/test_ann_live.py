"""The FAISS live segment: the follower applies writes made after a build to the served
snapshot, so a query answers them from memory (nothing changed since its watermark read
from Postgres), exactly as Postgres has them; a rebuild swaps in a newer snapshot with the
live entries it lacks carried over."""

from __future__ import annotations

import time

import numpy as np
import pytest

import unidb
from unidb.indexing import outbox
from unidb.models import QueryRequest
from unidb.service.engine import Engine

DIM = 24
N = 3000


def _collection_id(engine: Engine, name: str) -> int:
    with engine.transaction() as conn:
        row = conn.execute("SELECT id FROM unidb.collections WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def _level(engine: Engine, collection_id: int) -> None:
    """Wait until the follower has applied everything committed so far."""
    with engine.background_pool.connection() as conn:
        upto = outbox.safe_watermark(conn)
    deadline = time.monotonic() + 60
    while True:
        served = engine.ann.get(collection_id)
        if served is not None and served.watermark >= upto:
            return
        assert time.monotonic() < deadline, "the FAISS follower did not catch up"
        time.sleep(0.05)


def _exact(current: dict[str, np.ndarray], query: np.ndarray, k: int) -> list[str]:
    ids = sorted(current)
    unit = np.stack([current[i] / np.linalg.norm(current[i]) for i in ids])
    scores = unit @ (query / np.linalg.norm(query))
    return [ids[i] for i in np.argsort(-scores)[:k]]


def _strong(engine: Engine, name: str, query: np.ndarray, k: int) -> tuple[list[str], int | None]:
    answer = engine.query(
        name,
        QueryRequest(vector=query.tolist(), k=k, mode="vector", consistency="strong",
                     explain=True),
    )  # fmt: skip
    assert answer.vector_index == "faiss"
    assert answer.explain is not None
    return [h.id for h in answer.hits], answer.explain.changed_since_index


def test_writes_after_a_build_are_served_from_the_live_segment(
    engine: Engine, collection: str
) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=DIM)
    rng = np.random.default_rng(11)
    current = {f"v{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(N)}
    client.ingest(collection, ({"id": i, "embedding": v} for i, v in current.items()),
                  batch_size=500)  # fmt: skip
    assert client.build_index(collection, timeout=120).status == "done"
    collection_id = _collection_id(engine, collection)
    queries = rng.standard_normal((20, DIM)).astype(np.float32)
    client.query(collection, vector=queries[0], k=5, mode="vector")  # loads the snapshot
    built = engine.ann.get(collection_id)
    assert built is not None and built.live.vectors == 0

    # updates, new documents and deletes, in several transactions
    moved = [f"v{i}" for i in range(0, 600, 3)]
    for start in range(0, len(moved), 50):
        batch = {i: rng.standard_normal(DIM).astype(np.float32) for i in moved[start : start + 50]}
        current.update(batch)
        client.upsert(collection, [{"id": i, "embedding": v} for i, v in batch.items()])
    fresh = {f"new{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(120)}
    current.update(fresh)
    client.upsert(collection, [{"id": i, "embedding": v} for i, v in fresh.items()])
    gone = [f"v{i}" for i in range(1, 300, 9)]  # none of them moved
    for doc_id in gone:
        client.delete(collection, doc_id)
        del current[doc_id]
    _level(engine, collection_id)

    served = engine.ann.get(collection_id)
    assert served is not None and served.manifest == built.manifest  # no rebuild meanwhile
    assert served.live.vectors == len(moved) + len(fresh)
    status = client.get_collection(collection).ann
    assert status is not None and status.live_vectors == len(moved) + len(fresh)
    recalled = 0
    for query in queries:
        found, changed = _strong(engine, collection, query, 10)
        assert changed == 0  # nothing read from Postgres to answer it
        assert not set(found) & set(gone)
        recalled += len(set(found) & set(_exact(current, query, 10)))
    assert recalled / (10 * len(queries)) >= 0.95
    # a moved document is found at its new vector, a new one at its own
    for doc_id in (moved[7], "new5"):
        found, _ = _strong(engine, collection, current[doc_id], 1)
        assert found == [doc_id]

    # a write the follower has not reached is read from Postgres, then leaves the delta
    late = rng.standard_normal(DIM).astype(np.float32)
    client.upsert(collection, [{"id": "late", "embedding": late}])
    found, changed = _strong(engine, collection, late, 1)
    assert found == ["late"]
    _level(engine, collection_id)
    found, changed = _strong(engine, collection, late, 1)
    assert found == ["late"] and changed == 0


def test_a_rebuild_takes_over_the_live_entries_it_lacks(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=DIM)
    rng = np.random.default_rng(12)
    current = {f"v{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(N)}
    client.ingest(collection, ({"id": i, "embedding": v} for i, v in current.items()),
                  batch_size=500)  # fmt: skip
    assert client.build_index(collection, timeout=120).status == "done"
    collection_id = _collection_id(engine, collection)
    client.query(collection, vector=current["v0"], k=5, mode="vector")
    first = engine.ann.get(collection_id)
    assert first is not None

    changed = {f"v{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(0, 400, 2)}
    current.update(changed)
    client.upsert(collection, [{"id": i, "embedding": v} for i, v in changed.items()])
    _level(engine, collection_id)
    assert engine.ann.get(collection_id).live.vectors == len(changed)  # type: ignore[union-attr]

    job = client.build_index(collection, timeout=120)
    assert job.status == "done"
    later = {f"v{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(1, 100, 2)}
    current.update(later)
    client.upsert(collection, [{"id": i, "embedding": v} for i, v in later.items()])
    deadline = time.monotonic() + 60
    while True:  # the follower loads the new snapshot once a query has seen it
        client.query(collection, vector=current["v1"], k=1, mode="vector")
        served = engine.ann.get(collection_id)
        assert served is not None
        if served.manifest.job_id == job.id:
            break
        assert time.monotonic() < deadline, "the new snapshot was never served"
        time.sleep(0.05)
    _level(engine, collection_id)
    served = engine.ann.get(collection_id)
    assert served is not None and served.manifest.job_id == job.id
    # what the new snapshot holds is out of the live segment; what came after is in it
    assert served.live.vectors == len(later)
    for query in [current["v1"], current["v4"], *rng.standard_normal((10, DIM))]:
        found, since = _strong(engine, collection, np.asarray(query, np.float32), 10)
        assert since == 0
        assert len(set(found) & set(_exact(current, np.asarray(query), 10))) >= 9


def test_a_dropped_collection_leaves_the_follower(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=DIM)
    rng = np.random.default_rng(13)
    client.ingest(collection, ({"id": f"v{i}", "embedding": rng.standard_normal(DIM)}
                               for i in range(500)))  # fmt: skip
    assert client.build_index(collection, timeout=120).status == "done"
    collection_id = _collection_id(engine, collection)
    client.query(collection, vector=rng.standard_normal(DIM), k=5, mode="vector")
    assert engine.ann.get(collection_id) is not None
    client.delete_collection(collection)
    with engine.background_pool.connection() as conn:
        engine.ann.follow_once(conn)
    assert collection_id not in engine.ann._served
    with pytest.raises(unidb.NotFound):
        client.query(collection, vector=rng.standard_normal(DIM), k=5, mode="vector")
