"""FAISS index builds as jobs: lifecycle, refusals, cancel, and a build killed mid-way."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient

import unidb
from unidb.indexing import snapshots
from unidb.indexing.faiss_index import plan
from unidb.service.db.pool import open_pool
from unidb.service.engine import Engine
from unidb.service.search.ann_indexes import BuildTask, Cancelled
from unidb.service.store import catalog, jobs

from .conftest import free_port, snapshot
from .test_serve import _start_serve, _wait_healthy

DIM = 16


def _row(engine: Engine, name: str) -> catalog.CollectionRow:
    with engine.transaction() as conn:
        return catalog.get(conn, name)


def _load(engine: Engine, collection: str, n: int, dim: int = DIM) -> np.ndarray:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=dim, metric="l2")
    vectors = np.random.default_rng(7).standard_normal((n, dim)).astype(np.float32)
    documents = ({"id": f"v{i}", "embedding": v} for i, v in enumerate(vectors))
    client.ingest(collection, documents, batch_size=500)  # the test server's batch limit
    return vectors


def _wait(api: TestClient, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        job: dict[str, Any] = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_build_job_lifecycle(api: TestClient, engine: Engine, collection: str) -> None:
    _load(engine, collection, 3000)
    answer = api.post(f"/v1/collections/{collection}/index", json={})
    assert answer.status_code == 202, answer.text
    queued = answer.json()
    assert queued["status"] in ("queued", "running") and queued["collection"] == collection
    job = _wait(api, queued["id"])
    assert job["status"] == "done" and job["progress"] == 1.0 and job["error"] is None
    stats = job["stats"]
    assert stats["vectors"] == 3000 and stats["kind"] == "hnsw" and stats["device"] == "cpu"
    assert stats["note"] == "no GPU visible to FAISS: built on the CPU"
    assert job["started_at"] and job["finished_at"]

    root = engine.ann.path(_row(engine, collection).id)
    manifest = snapshots.read_manifest(root)
    assert manifest is not None and manifest.count == 3000 and manifest.job_id == job["id"]
    assert sorted(p.name for p in root.iterdir()) == [f"index-{job['id']}.faiss", "manifest.json"]
    described = api.get(f"/v1/collections/{collection}").json()["ann"]
    assert described["kind"] == "hnsw" and described["vectors"] == 3000
    assert described["job_id"] == job["id"] and described["lag"] == 0
    api.delete(f"/v1/collections/{collection}/documents/v0")
    assert api.get(f"/v1/collections/{collection}").json()["ann"]["lag"] == 1

    ivf = _wait(api, api.post(f"/v1/collections/{collection}/index",
                              json={"kind": "ivf", "params": {"nlist": 16}}).json()["id"])  # fmt: skip
    assert ivf["status"] == "done" and ivf["stats"]["kind"] == "ivf"
    assert api.get(f"/v1/collections/{collection}").json()["ann"]["lag"] == 0
    # the new snapshot replaced the old one, whose file is gone
    assert sorted(p.name for p in root.iterdir()) == [f"index-{ivf['id']}.faiss", "manifest.json"]

    assert api.get("/v1/jobs/999999999").status_code == 404
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 409  # it ended


def test_a_collection_past_the_threshold_gets_its_first_snapshot_built(
    engine: Engine, collection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine.settings, "ann_auto_build_rows", 400)
    small = f"{collection}_small"
    _load(engine, collection, 400)
    _load(engine, small, 399)
    client = unidb.Client(backend=engine)
    query = np.zeros(DIM, dtype=np.float32)
    try:
        assert client.query(small, vector=query, k=3, mode="vector").vector_index == "exact"
        assert client.query(collection, vector=query, k=3, mode="vector").vector_index == "exact"
        deadline = time.monotonic() + 120
        while client.get_collection(collection).ann is None:
            assert time.monotonic() < deadline, "no snapshot was built"
            time.sleep(0.1)
        # the snapshot is published before its job row is marked done
        while True:
            with engine.transaction() as conn:
                built = conn.execute(
                    "SELECT params->>'auto', status FROM unidb.jobs j"
                    " JOIN unidb.collections c ON c.id = j.collection_id WHERE c.name = %s",
                    (collection,),
                ).fetchall()
            if built != [("true", "running")] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert built == [("true", "done")]
        assert client.query(collection, vector=query, k=3, mode="vector").vector_index == "faiss"
        # a query again within the check interval, or after the snapshot: no second job
        client.query(collection, vector=query, k=3, mode="vector")
        assert engine.jobs.build_first(_row(engine, collection).id) is None
        assert client.get_collection(small).ann is None
    finally:
        client.delete_collection(small)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"device": "gpu"}, "device"),
        ({"kind": "cagra"}, "kind"),
        ({"kind": "annoy"}, "kind"),
        ({"params": {"m": 1}}, "params.m"),
        ({"params": {"colour": "blue"}}, "params.colour"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_builds_are_refused(
    api: TestClient, engine: Engine, collection: str, body: dict[str, Any], field: str
) -> None:
    _load(engine, collection, 10)
    before = snapshot(engine)
    with engine.transaction() as conn:
        jobs_before = conn.execute("SELECT count(*) FROM unidb.jobs").fetchone()
    answer = api.post(f"/v1/collections/{collection}/index", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == field
    assert snapshot(engine) == before
    with engine.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM unidb.jobs").fetchone() == jobs_before
    assert api.post("/v1/collections/no_such/index", json={}).status_code == 404


def test_cancel_queued_and_running(api: TestClient, engine: Engine, collection: str) -> None:
    _load(engine, collection, 2000)
    row = _row(engine, collection)
    task_plan = plan("auto", "auto", 2000, {})

    # cancelled while queued: never starts
    with engine.transaction() as conn:
        queued = jobs.create(conn, collection_id=row.id, collection=row.name,
                             kind="index_build", params={}, owner=engine.jobs.owner)  # fmt: skip
        assert jobs.cancel(conn, queued.id).status == "cancelled"
    engine.jobs.submit(BuildTask(queued.id, row, task_plan))
    # asked to stop once it runs: stops at its first step, no snapshot swapped in
    with engine.transaction() as conn:
        running = jobs.create(conn, collection_id=row.id, collection=row.name,
                              kind="index_build", params={}, owner=engine.jobs.owner)  # fmt: skip
        conn.execute("UPDATE unidb.jobs SET cancel_requested = true WHERE id = %s", (running.id,))
    engine.jobs.submit(BuildTask(running.id, row, task_plan))
    assert _wait(api, running.id)["status"] == "cancelled"
    assert _wait(api, queued.id)["status"] == "cancelled"
    assert _wait(api, queued.id)["started_at"] is None
    assert snapshots.read_manifest(engine.ann.path(row.id)) is None


def test_dropping_a_collection_stops_its_builds(
    api: TestClient, engine: Engine, collection: str
) -> None:
    _load(engine, collection, 300)
    row = _row(engine, collection)
    with engine.transaction() as conn:
        queued = jobs.create(conn, collection_id=row.id, collection=row.name,
                             kind="index_build", params={}, owner=engine.jobs.owner)  # fmt: skip
    assert api.delete(f"/v1/collections/{collection}").status_code == 200
    assert _wait(api, queued.id)["status"] == "cancelled"
    # a build that was past its read when the drop landed leaves no snapshot behind
    with engine.transaction() as conn:
        late = jobs.create(conn, collection_id=row.id, collection=row.name,
                           kind="index_build", params={}, owner=engine.jobs.owner)  # fmt: skip
    with pytest.raises(Cancelled):
        task = BuildTask(late.id, row, plan("auto", "auto", 300, {}))
        engine.ann.build(engine.pool, task, engine.jobs.owner)
    assert not engine.ann.path(row.id).exists()


def test_a_build_outlasts_the_request_statement_timeout(engine: Engine, collection: str) -> None:
    """Requests keep their statement timeout; a build, whose read stays open while FAISS
    adds each chunk, runs under the background one (none by default)."""
    _load(engine, collection, 20_000)
    row = _row(engine, collection)
    settings = engine.settings.model_copy(update={"statement_timeout_ms": 20})
    requests = open_pool(engine.dsn, settings)
    background = open_pool(engine.dsn, settings, background=True)
    try:
        with requests.connection() as conn:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(0.2)")
        with background.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
        with engine.transaction() as conn:
            job = jobs.create(conn, collection_id=row.id, collection=row.name,
                              kind="index_build", params={}, owner=engine.jobs.owner)  # fmt: skip
        began = time.monotonic()
        task = BuildTask(job.id, row, plan("hnsw", "cpu", 20_000, {}))
        stats = engine.ann.build(background, task, engine.jobs.owner)
        assert time.monotonic() - began > 0.02  # longer than a request may run
        assert stats["vectors"] == 20_000
        manifest = snapshots.read_manifest(engine.ann.path(row.id))
        assert manifest is not None and manifest.count == 20_000
    finally:
        requests.close()
        background.close()


@pytest.mark.slow
def test_killed_build_keeps_the_old_snapshot_and_is_resumed(
    database_url: str, engine: Engine, collection: str, tmp_path: Path
) -> None:
    _load(engine, collection, 60_000, dim=64)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"UNIDB_DATABASE_URL": database_url, "UNIDB_JOB_ORPHAN_AFTER_S": "1"}
    server = _start_serve(tmp_path, port, env)
    try:
        _wait_healthy(url, server)
        with unidb.Client(url) as client:
            first = client.build_index(collection, params={"m": 8, "ef_construction": 16})
            assert first.status == "done"
            slow = client.build_index(
                collection, params={"m": 64, "ef_construction": 500}, wait=False
            )
            deadline = time.monotonic() + 120
            while (job := client.get_job(slow.id)).progress <= 0.1:
                assert job.status in ("queued", "running") and time.monotonic() < deadline
                time.sleep(0.02)
            killed_owner = job.owner
            server.send_signal(signal.SIGKILL)
            server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)

    root = tmp_path / "indexes" / f"c{_row(engine, collection).id}" / "ann"
    manifest = snapshots.read_manifest(root)
    assert manifest is not None and manifest.job_id == first.id  # the old snapshot
    assert snapshots.load(root, manifest).ntotal == 60_000

    time.sleep(1.5)  # the dead process's heartbeat goes silent
    server = _start_serve(tmp_path, port, env)
    try:
        _wait_healthy(url, server)
        with unidb.Client(url) as client:
            # the restarted process takes the dead one's job over and runs it again
            resumed = client.get_job(slow.id)
            assert resumed.owner != killed_owner and resumed.stats["takeovers"] == 1
            assert resumed.status in ("queued", "running")
            client.cancel_job(slow.id)
            deadline = time.monotonic() + 60
            while client.get_job(slow.id).status != "cancelled":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            again = client.build_index(collection, params={"m": 8, "ef_construction": 16})
            assert again.status == "done" and again.stats["vectors"] == 60_000
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    manifest = snapshots.read_manifest(root)
    assert manifest is not None and manifest.job_id == again.id


def test_cli_index_build(
    server_url: str, engine: Engine, collection: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from unidb.service.cli.main import main

    _load(engine, collection, 500)
    code = main(["index", "build", collection, "--url", server_url, "--params", '{"m": 16}'])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["status"] == "done" and printed["stats"]["vectors"] == 500
    assert printed["params"]["params"]["m"] == 16
    assert main(["index", "build", collection, "--url", server_url, "--device", "gpu"]) == 2
    assert "FAISS sees no GPU" in capsys.readouterr().err


def test_one_builder_per_collection_and_a_dead_builder_frees_it(
    api: TestClient, engine: Engine, collection: str
) -> None:
    """Another process's build (its advisory lock) holds this one back; when that process's
    connection dies, this build goes ahead."""
    import psycopg

    from unidb.service.jobs.runner import BUILD_LOCK

    _load(engine, collection, 300)
    other_builder = psycopg.connect(engine.dsn, autocommit=True)
    other_builder.execute(
        "SELECT pg_advisory_lock(%s, %s)", (BUILD_LOCK, _row(engine, collection).id)
    )
    try:
        job = api.post(f"/v1/collections/{collection}/index", json={}).json()
        time.sleep(1.5)  # three lock polls
        waiting = api.get(f"/v1/jobs/{job['id']}").json()
        assert waiting["status"] == "running" and waiting["progress"] == 0.0
    finally:
        other_builder.close()  # the other process dies; its lock goes with its connection
    assert _wait(api, job["id"])["status"] == "done"


def test_a_silent_owners_jobs_are_taken_over(
    api: TestClient, engine: Engine, collection: str
) -> None:
    """Jobs whose owner stopped beating: a live process resumes the build, cancels the one
    asked to stop, and cancels the one whose collection is gone."""
    _load(engine, collection, 500)
    row = _row(engine, collection)
    params = {"kind": "hnsw", "device": "auto", "params": {"m": 8}}
    with engine.transaction() as conn:
        made = [
            jobs.create(conn, collection_id=row.id, collection=row.name, kind="index_build",
                        params=params, owner="gone:1:abc")
            for _ in range(3)
        ]  # fmt: skip
        resumed, asked_to_stop, orphaned = (job.id for job in made)
        conn.execute("UPDATE unidb.jobs SET cancel_requested = true WHERE id = %s",
                     (asked_to_stop,))  # fmt: skip
        conn.execute("UPDATE unidb.jobs SET collection_id = -1 WHERE id = %s", (orphaned,))
        conn.execute(
            "UPDATE unidb.jobs SET status = 'running', heartbeat_at = now() - interval '1 hour'"
            " WHERE id = ANY(%s)",
            ([job.id for job in made],),
        )
    engine.jobs.take_over_orphans()  # the heartbeat thread would, within seconds
    done = _wait(api, resumed)
    assert done["status"] == "done" and done["owner"] == engine.jobs.owner
    assert done["stats"]["takeovers"] == 1 and done["stats"]["vectors"] == 500
    assert done["stats"]["params"] == {"m": 8}
    for job_id in (asked_to_stop, orphaned):
        assert _wait(api, job_id)["status"] == "cancelled"
    assert engine.jobs.take_over_orphans() == []
