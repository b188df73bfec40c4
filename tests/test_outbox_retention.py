"""Outbox retention: rows every live follower has read are pruned, a dropped collection's
rows go, a silent follower is not waited on, and an index left below the pruned horizon
rebuilds instead of catching up from changes that are gone.

Each test runs a service of its own on a database of its own, so that no other test's
followers or indexes hold the horizon."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import unidb
from unidb.indexing import outbox
from unidb.models import IndexBuildRequest, QueryRequest
from unidb.service.config import Settings
from unidb.service.context import registry
from unidb.service.engine import Engine

from .conftest import _service_url


def _start(database: str, data_dir: Path) -> Engine:
    settings = Settings(
        database_url=_service_url(database),
        migration_database_url=database,
        data_dir=data_dir,
        outbox_prune_interval_s=3600,  # each test prunes when it says so
    )
    return Engine.start(settings)


@pytest.fixture
def own(scratch_database: str, tmp_path: Path) -> Iterator[Engine]:
    engine = _start(scratch_database, tmp_path / "data")
    try:
        yield engine
    finally:
        engine.close()


def _collection_id(engine: Engine, name: str) -> int:
    with engine.transaction() as conn:
        row = conn.execute("SELECT id FROM unidb.collections WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def _safe_watermark(engine: Engine) -> int:
    with engine.transaction(service_wide=True) as conn:
        return outbox.safe_watermark(conn)


def _rows(engine: Engine, where: str = "TRUE", params: tuple[object, ...] = ()) -> int:
    with engine.transaction(service_wide=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM unidb.changes WHERE {where}", params).fetchone()
    assert row is not None
    return int(row[0])


def _others_caught_up(engine: Engine) -> None:
    """The followers this service runs move past everything committed so far: the BM25
    tailer and the prefix registry."""
    engine.text_indexes.follow_once()
    with engine.transaction(service_wide=True) as conn:
        registry.invalidate(conn)


def test_the_outbox_is_pruned_below_every_live_follower(own: Engine) -> None:
    client = unidb.Client(backend=own)
    for name in ("kept", "idle", "dropped"):
        client.create_collection(name, dim=2)
    client.upsert("kept", [{"id": f"k{i}", "text": f"kept {i}", "embedding": [1, i]}
                           for i in range(5)])  # fmt: skip
    client.upsert("idle", [{"id": "i0", "text": "idle", "embedding": [0, 1]}])
    middle = _safe_watermark(own)
    client.upsert("kept", [{"id": f"k{i}", "text": f"again {i}", "embedding": [1, i]}
                           for i in range(4)])  # fmt: skip
    client.upsert("dropped", [{"id": f"x{i}", "text": "gone", "embedding": [1, i]}
                              for i in range(3)])  # fmt: skip
    dropped_id = _collection_id(own, "dropped")
    client.delete_collection("dropped")
    # another data directory's indexes, which have read everything below `middle` only
    with own.transaction(service_wide=True) as conn:
        outbox.report_follower(conn, "indexes:elsewhere", middle)
    _others_caught_up(own)
    before = _rows(own)

    pruned = own.retention.run_once()

    assert pruned.horizon == middle and pruned.stale == []
    assert _rows(own, "xid < %s::text::xid8", (middle,)) == 0
    kept_id = _collection_id(own, "kept")
    assert _rows(own, "collection_id = %s", (kept_id,)) == 4  # the four after `middle`
    # the dropped collection's changes are gone; its drop record waits for the horizon
    assert _rows(own, "collection_id = %s AND op <> 'drop'", (dropped_id,)) == 0
    assert _rows(own, "collection_id = %s AND op = 'drop'", (dropped_id,)) == 1
    assert pruned.deleted == before - _rows(own) and pruned.deleted >= 5 + 1 + 3
    assert own.horizon.value == middle
    hits = client.query("kept", text="again", mode="bm25", k=10).hits
    assert sorted(h.id for h in hits) == ["k0", "k1", "k2", "k3"]

    # silent past the limit: reported, and no longer waited on
    with own.transaction(service_wide=True) as conn:
        conn.execute(
            "UPDATE unidb.outbox_followers SET seen_at = now() - interval '2 hours'"
            " WHERE name = 'indexes:elsewhere'"
        )
    _others_caught_up(own)
    again = own.retention.run_once()
    assert again.stale == ["indexes:elsewhere"]
    assert again.horizon > middle
    assert _rows(own, "collection_id = %s", (kept_id,)) == 0
    assert _rows(own, "collection_id = %s", (dropped_id,)) == 0


def test_a_bm25_index_left_below_the_horizon_rebuilds_from_the_table(
    scratch_database: str, own: Engine, tmp_path: Path
) -> None:
    client = unidb.Client(backend=own)
    client.create_collection("notes", dim=2)
    client.upsert("notes", [{"id": f"n{i}", "text": f"zebra {i}", "embedding": [1, i]}
                            for i in range(5)])  # fmt: skip
    collection_id = _collection_id(own, "notes")
    own.text_indexes.refresh(collection_id)
    # another data directory holding this index as it is now, not running meanwhile
    away = tmp_path / "away"
    shutil.copytree(own.text_indexes.path(collection_id), away / "indexes" / f"c{collection_id}"
                    / "bm25")  # fmt: skip
    client.upsert("notes", [{"id": "n5", "text": "zebra crossing", "embedding": [1, 5]},
                            {"id": "n1", "text": "giraffe", "embedding": [1, 1]}])  # fmt: skip
    client.delete("notes", "n2")
    _others_caught_up(own)
    pruned = own.retention.run_once()
    assert _rows(own, "collection_id = %s", (collection_id,)) == 0  # all pruned
    assert pruned.horizon > 0

    returned = _start(scratch_database, away)
    try:
        # catching up from its old watermark would miss n5, n1's edit and n2's delete
        answer = unidb.Client(backend=returned).query("notes", text="zebra", mode="bm25", k=10)
        assert sorted(h.id for h in answer.hits) == ["n0", "n3", "n4", "n5"]
        index = returned.text_indexes.get(collection_id)
        assert index.watermark >= pruned.horizon
    finally:
        returned.close()


def test_a_faiss_snapshot_holds_the_horizon_and_is_not_served_below_it(own: Engine) -> None:
    client = unidb.Client(backend=own)
    client.create_collection("vectors", dim=4, metric="l2")
    rng = np.random.default_rng(5)
    client.upsert("vectors", [{"id": f"v{i}", "embedding": rng.standard_normal(4).tolist()}
                              for i in range(300)])  # fmt: skip
    _wait_done(own, own.build_index("vectors", IndexBuildRequest(kind="hnsw")).id)
    manifest = own.ann.get(_collection_id(own, "vectors"))
    assert manifest is not None
    watermark = manifest.manifest.watermark
    client.upsert("vectors", [{"id": "new", "embedding": [9, 9, 9, 9]}])
    near = QueryRequest(vector=[9, 9, 9, 9], mode="vector", k=1)

    _others_caught_up(own)
    pruned = own.retention.run_once()
    assert pruned.horizon <= watermark  # this directory's snapshot needs what follows it
    answer = own.query("vectors", near)
    assert answer.vector_index == "faiss" and [h.id for h in answer.hits] == ["new"]

    # this directory silent (as if its process were gone): the prune passes the snapshot
    with own.transaction(service_wide=True) as conn:
        conn.execute(
            "UPDATE unidb.outbox_followers SET seen_at = now() - interval '2 hours'"
            " WHERE name = %s",
            (own.retention.name,),
        )
    _others_caught_up(own)
    past = own.retention.prune()
    assert past.horizon > watermark and past.stale == [own.retention.name]
    answer = own.query("vectors", near)
    assert answer.vector_index != "faiss" and [h.id for h in answer.hits] == ["new"]


def test_a_snapshot_far_behind_the_outbox_is_rebuilt_once(
    scratch_database: str, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=_service_url(scratch_database),
        migration_database_url=scratch_database,
        data_dir=tmp_path / "data",
        outbox_prune_interval_s=3600,
        ann_rebuild_min_changes=50,
        ann_rebuild_fraction=0.1,
    )
    # no heartbeat checks of its own: each check here is the test's
    engine = Engine.start(settings, take_over_jobs=False)
    try:
        client = unidb.Client(backend=engine)
        client.create_collection("vectors", dim=4, metric="l2")
        rng = np.random.default_rng(6)
        client.upsert("vectors", [{"id": f"v{i}", "embedding": rng.standard_normal(4).tolist()}
                                  for i in range(300)])  # fmt: skip
        first = engine.build_index("vectors", IndexBuildRequest(kind="hnsw", params={"m": 8}))
        _wait_done(engine, first.id)
        collection_id = _collection_id(engine, "vectors")
        assert engine.jobs.rebuild_behind() == []  # nothing changed

        # 49 changes: below the bound (50, over 10 % of 300)
        client.upsert("vectors", [{"id": f"v{i}", "embedding": [9, 9, 9, i]} for i in range(49)])
        assert engine.jobs.rebuild_behind() == []
        client.upsert("vectors", [{"id": "v49", "embedding": [9, 9, 9, 49]}])
        (rebuild,) = engine.jobs.rebuild_behind()
        assert engine.jobs.rebuild_behind() == []  # one build per collection at a time
        job = _wait_done(engine, rebuild)
        assert job.params["rebuild"] is True and job.params["params"]["m"] == 8
        served = engine.ann.get(collection_id)
        assert served is not None and served.manifest.job_id == rebuild
        assert engine.get_collection("vectors").ann.lag == 0  # type: ignore[union-attr]
        answer = engine.query("vectors", QueryRequest(vector=[9, 9, 9, 49], mode="vector", k=1))
        assert answer.vector_index == "faiss" and [h.id for h in answer.hits] == ["v49"]
    finally:
        engine.close()


def _wait_done(engine: Engine, job_id: int) -> Any:
    deadline = time.monotonic() + 60
    while (job := engine.get_job(job_id)).status != "done":
        assert job.status in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.05)
    return job
