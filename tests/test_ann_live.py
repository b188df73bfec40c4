"""The FAISS live segment: the follower applies writes made after a build to the served
snapshot, so a query answers them from memory (nothing changed since its watermark read
from Postgres), exactly as Postgres has them; a rebuild swaps in a newer snapshot with the
live entries it lacks carried over."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

import unidb
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
    """Wait until the follower has applied everything committed so far: every change
    below a transaction id taken now. (The snapshot xmin would not do: a transaction left
    open elsewhere holds it below this test's own writes.)"""
    with engine.background_pool.connection() as conn:
        row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert row is not None
        upto = int(row[0])
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


def _indexed(
    client: unidb.Client, collection: str, n: int, seed: int, **build: object
) -> tuple[np.random.Generator, dict[str, np.ndarray], int]:
    """A collection of ``n`` random vectors with a FAISS snapshot: (the generator, the
    vectors by id, the build's job id)."""
    client.create_collection(collection, dim=DIM)
    rng = np.random.default_rng(seed)
    current = {f"v{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(n)}
    client.ingest(collection, ({"id": i, "embedding": v} for i, v in current.items()),
                  batch_size=500)  # fmt: skip
    job = client.build_index(collection, timeout=120, **build)  # type: ignore[arg-type]
    assert job.status == "done", job
    return rng, current, job.id


def test_writes_after_a_build_are_served_from_the_live_segment(
    engine: Engine, collection: str
) -> None:
    client = unidb.Client(backend=engine)
    rng, current, _ = _indexed(client, collection, N, 11)
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
    rng, current, _ = _indexed(client, collection, N, 12)
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


def test_ef_search_widens_the_vector_search(
    engine: Engine, collection: str, api: TestClient
) -> None:
    client = unidb.Client(backend=engine)
    rng, current, _ = _indexed(client, collection, N, 14, params={"m": 4, "ef_construction": 8})
    queries = rng.standard_normal((30, DIM)).astype(np.float32)

    def recalled(ef_search: int) -> float:
        found = 0
        for query in queries:
            answer = client.query(collection, vector=query, k=10, mode="vector",
                                  ef_search=ef_search)  # fmt: skip
            assert answer.vector_index == "faiss"
            found += len({h.id for h in answer.hits} & set(_exact(current, query, 10)))
        return found / (10 * len(queries))

    narrow, wide = recalled(1), recalled(1000)
    assert wide >= 0.97
    assert narrow < wide - 0.05  # a sparse graph searched narrowly misses true neighbours
    for bad in (0, 1001, "wide"):
        refused = api.post(f"/v1/collections/{collection}/query",
                           json={"vector": queries[0].tolist(), "mode": "vector", "ef_search": bad})  # fmt: skip
        assert refused.status_code in (400, 422), refused.text
        assert refused.json()["error"]["field"] == "ef_search"


def test_a_filtered_query_finds_a_snapshot_hit_nearer_than_a_live_one(
    engine: Engine, collection: str
) -> None:
    """The snapshot's first candidates all fail the filter and the live segment's one passes:
    a passing snapshot document nearer than it, found only by widening, must win."""
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=DIM)
    rng = np.random.default_rng(15)
    query = np.zeros(DIM, dtype=np.float32)
    query[0] = 1.0

    def near(spread: float) -> np.ndarray:
        return (query + spread * rng.standard_normal(DIM)).astype(np.float32)

    docs = [{"id": f"fail{i}", "embedding": near(0.05), "metadata": {"ok": False}}
            for i in range(50)]  # fmt: skip
    docs.append({"id": "nearer", "embedding": near(0.3), "metadata": {"ok": True}})
    docs += [
        {"id": f"far{i}", "embedding": -near(0.3), "metadata": {"ok": True}} for i in range(2500)
    ]  # fmt: skip (past UNIDB_ANN_EXACT_BELOW: FAISS answers)
    client.ingest(collection, docs, batch_size=500)
    assert client.build_index(collection, timeout=120).status == "done"
    collection_id = _collection_id(engine, collection)
    client.query(collection, vector=query, k=1, mode="vector")
    client.upsert(collection, [{"id": "live", "embedding": near(0.9), "metadata": {"ok": True}}])
    _level(engine, collection_id)
    assert engine.ann.get(collection_id).live.vectors == 1  # type: ignore[union-attr]

    answer = client.query(collection, vector=query, k=1, mode="vector", filter={"ok": True},
                          explain=True)  # fmt: skip
    assert answer.vector_index == "faiss"
    assert [h.id for h in answer.hits] == ["nearer"]
    assert answer.explain is not None and answer.explain.vector_plan is not None
    assert "round" in answer.explain.vector_plan


def test_a_live_segment_past_its_bound_waits_for_a_rebuild(
    engine: Engine, collection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = unidb.Client(backend=engine)
    rng, current, first_job = _indexed(client, collection, 1000, 16)
    collection_id = _collection_id(engine, collection)
    client.query(collection, vector=current["v0"], k=1, mode="vector")
    served = engine.ann.get(collection_id)
    assert served is not None  # half the snapshot, at least UNIDB_ANN_MAX_DELTA
    assert engine.ann.live_bound(served) == max(engine.settings.ann_max_delta, 500)
    monkeypatch.setattr(engine.ann, "live_bound", lambda served: 20)
    rebuild_after = engine.jobs.rebuild_after
    monkeypatch.setattr(engine.jobs, "rebuild_after", None)  # no rebuild until asked below

    bulk = {f"v{i}": rng.standard_normal(DIM).astype(np.float32) for i in range(0, 60, 2)}
    current.update(bulk)
    client.upsert(collection, [{"id": i, "embedding": v} for i, v in bulk.items()])
    deadline = time.monotonic() + 60
    while not engine.ann.waits_for_rebuild(collection_id):
        assert time.monotonic() < deadline, "the live segment took in more than its bound"
        time.sleep(0.05)
    served = engine.ann.get(collection_id)
    assert served is not None and served.live.vectors == 0
    # still exact: what the segment lacks is read from Postgres
    for doc_id in ("v0", "v58"):
        found, changed = _strong(engine, collection, current[doc_id], 1)
        assert found == [doc_id] and changed == len(bulk)

    # the heartbeat's check queues a rebuild for it, though 30 changes are few
    monkeypatch.setattr(engine.jobs, "rebuild_after", rebuild_after)
    deadline = time.monotonic() + 60
    while True:
        engine.jobs.rebuild_behind()
        served = engine.ann.get(collection_id)
        assert served is not None
        if served.manifest.job_id != first_job and not engine.ann.waits_for_rebuild(collection_id):
            break
        assert time.monotonic() < deadline, "no rebuild took over"
        time.sleep(0.1)
    _level(engine, collection_id)
    found, changed = _strong(engine, collection, current["v58"], 1)
    assert found == ["v58"] and changed == 0
