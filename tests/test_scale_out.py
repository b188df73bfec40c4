"""Many service processes on one Postgres: two real `unidb serve` processes share the database
and a snapshot directory; writes through one are searchable through the other, an index one
builds serves in the other, and when the builder is killed mid-build the other takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import unidb
from unidb.models import Job

from .conftest import free_port
from .test_serve import _wait_healthy

pytestmark = pytest.mark.slow

DIM = 32


@contextmanager
def _serving(
    data_dir: Path, database_url: str, name: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `unidb serve` process on the shared database and data directory, logging to a file
    (a pipe nobody reads would fill and stall it)."""
    port = free_port()
    log = data_dir.parent / f"{name}.log"
    env = {
        **os.environ,
        "UNIDB_DATABASE_URL": database_url,
        "UNIDB_JOB_ORPHAN_AFTER_S": "2",
        "UNIDB_TAILER_INTERVAL_S": "0.2",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "unidb.service.cli", "serve", "--port", str(port),
             "--data-dir", str(data_dir)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            _wait_healthy(url, process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()}") from exc
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)


def _wait_for_job(client: unidb.Client, job_id: int, timeout: float = 180) -> Job:
    deadline = time.monotonic() + timeout
    while (job := client.get_job(job_id)).status in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def test_two_processes_share_writes_indexes_and_builds(
    database_url: str, collection: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    rng = np.random.default_rng(11)
    with (
        _serving(shared, database_url, "a") as (url_a, process_a),
        _serving(shared, database_url, "b") as (url_b, _),
        unidb.Client(url_a) as a,
        unidb.Client(url_b) as b,
    ):
        a.create_collection(collection, dim=DIM, metric="l2")

        # a write through A, read through B with A's commit token, every time
        for i in range(20):
            vector = rng.standard_normal(DIM).astype(np.float32)
            with a.transaction() as tx:
                tx.upsert(collection, [{"id": f"w{i}", "text": f"handoff marker{i}",
                                        "embedding": vector}])  # fmt: skip
            after = tx.commit_token
            hits = b.query(collection, text=f"marker{i}", mode="bm25", k=3,
                           consistency="eventual", after=after).hits  # fmt: skip
            assert [hit.id for hit in hits] == [f"w{i}"]
            nearest = b.query(collection, vector=vector, mode="vector", k=1).hits
            assert nearest[0].id == f"w{i}"

        # an index built by A serves in B, loaded from the shared directory, not rebuilt
        vectors = rng.standard_normal((40_000, DIM)).astype(np.float32)
        a.ingest(collection, ({"id": f"v{i}", "embedding": v} for i, v in enumerate(vectors)),
                 batch_size=2000)  # fmt: skip
        built = a.build_index(collection)
        assert built.status == "done" and built.owner is not None
        served = b.query(collection, vector=vectors[123], mode="vector", k=5)
        assert served.vector_index == "faiss" and "v123" in [hit.id for hit in served.hits]
        assert b.get_collection(collection).ann.job_id == built.id  # type: ignore[union-attr]

        # A dies mid-build: B takes the job over once A's heartbeat is silent, and finishes it
        slow = a.build_index(collection, params={"m": 32, "ef_construction": 200}, wait=False)
        deadline = time.monotonic() + 120
        while (job := b.get_job(slow.id)).progress < 0.2:
            assert job.status in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.02)
        process_a.send_signal(signal.SIGKILL)
        process_a.wait(30)
        taken_over = _wait_for_job(b, slow.id)
        assert taken_over.status == "done", taken_over
        assert taken_over.owner != job.owner and taken_over.stats["takeovers"] == 1
        assert taken_over.stats["vectors"] == 40_020
        assert b.get_collection(collection).ann.job_id == slow.id  # type: ignore[union-attr]
        answer = b.query(collection, vector=vectors[7], mode="vector", k=5)
        assert answer.vector_index == "faiss" and "v7" in [hit.id for hit in answer.hits]

        # B now keeps the shared BM25 index itself: an eventual search, which reads only
        # the index, finds a write through B within a few tailer passes
        b.upsert(collection, [{"id": "late", "text": "zeppelin written after the takeover",
                               "embedding": rng.standard_normal(DIM)}])  # fmt: skip
        deadline = time.monotonic() + 30
        while not b.query(collection, text="zeppelin", mode="bm25", consistency="eventual").hits:
            assert time.monotonic() < deadline, "B's BM25 index never caught up"
            time.sleep(0.1)
