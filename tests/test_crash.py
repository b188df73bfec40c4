"""`kill -9` of `unidb serve` during bulk ingest: nothing acknowledged is lost, nothing is half.

Each trial ingests batches from several clients into a new collection, kills the service
(and, in some trials, its embedded Postgres too) at a random moment, restarts it and
compares what the clients were told with what Postgres and the BM25 index hold.
bench/crash.py runs more trials and prints the counts.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from unidb.indexing.bm25 import Bm25Index
from unidb.service.db.embedded import EmbeddedPostgres

from .conftest import free_port
from .test_serve import _start_serve, _stop, _wait_healthy

pytestmark = pytest.mark.slow

_WORDS = "protein cell gene tumor virus immune dose trial risk brain heart blood".split()
BATCH = 200
DIM = 8


@dataclass
class TrialResult:
    killed_after_s: float
    killed_postgres: bool
    acknowledged_batches: int
    acknowledged_documents: int
    lost: int  # acknowledged documents missing after the restart
    partial: int  # batches of which some documents are there and some are not
    ghosts: int  # index entries (BM25 keys, vector chunks) without their document row
    unindexed: int  # rows the BM25 index still lacks once it reports no lag


def _batch(name: str, rng: random.Random) -> dict[str, Any]:
    return {
        "documents": [
            {
                "id": f"{name}-{i}",
                "text": " ".join(rng.choices(_WORDS, k=12)),
                "metadata": {"batch": name},
                "embedding": [rng.uniform(-1, 1) for _ in range(DIM)],
            }
            for i in range(BATCH)
        ]
    }


def _ingest(url: str, collection: str, writer: int, acknowledged: list[str]) -> None:
    """Send batches until the service stops answering; note each batch it acknowledged."""
    rng = random.Random(writer)
    with httpx.Client(base_url=url, timeout=30) as http:
        for n in range(1_000_000):
            name = f"w{writer}b{n}"
            try:
                response = http.post(
                    f"/v1/collections/{collection}/documents", json=_batch(name, rng)
                )
            except httpx.HTTPError:
                return
            if response.status_code != 200:
                return
            acknowledged.append(name)


def _kill_postmaster(pgdata: Path) -> None:
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


class CrashRig:
    """`unidb serve` on an embedded Postgres under ``data_dir``, killed and restarted."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        server = _start_serve(self.data_dir, self.port)
        _wait_healthy(self.url, server, timeout=120)
        return server

    def trial(self, number: int, rng: random.Random, *, kill_postgres: bool) -> TrialResult:
        collection = f"crash{number}"
        response = httpx.post(f"{self.url}/v1/collections", json={"name": collection, "dim": DIM})
        assert response.status_code == 201, response.text
        acknowledged: list[str] = []
        writers = [
            threading.Thread(
                target=_ingest, args=(self.url, collection, number * 10 + w, acknowledged)
            )
            for w in range(4)
        ]
        for writer in writers:
            writer.start()
        killed_after = rng.uniform(0.3, 2.5)
        time.sleep(killed_after)
        self.server.kill()
        if kill_postgres:
            _kill_postmaster(self.data_dir / "pg")
        self.server.wait(30)
        for writer in writers:
            writer.join(60)
        self.server = self._start()
        return TrialResult(
            killed_after_s=round(killed_after, 2),
            killed_postgres=kill_postgres,
            acknowledged_batches=len(acknowledged),
            acknowledged_documents=len(acknowledged) * BATCH,
            **self._check(collection, acknowledged),
        )

    def _check(self, collection: str, acknowledged: list[str]) -> dict[str, int]:
        # a BM25 query opens the collection's index; then it follows the outbox to no lag
        query = {"text": "protein", "mode": "bm25", "k": 1}
        assert httpx.post(f"{self.url}/v1/collections/{collection}/query", json=query).is_success
        deadline = time.monotonic() + 60
        while (info := httpx.get(f"{self.url}/v1/collections/{collection}").json())["bm25"][
            "lag"
        ] and time.monotonic() < deadline:
            time.sleep(0.1)
        postgres = EmbeddedPostgres(self.data_dir / "pg")
        try:
            with psycopg.connect(postgres.start()) as conn:
                collection_id, rows = _rows(conn, collection)
                orphan_chunks = conn.execute(
                    """SELECT count(*) FROM unidb.chunks c WHERE c.collection_id = %s
                       AND NOT EXISTS (SELECT 1 FROM unidb.documents d WHERE d.key = c.document_key)""",
                    (collection_id,),
                ).fetchone()
        finally:
            postgres.stop()  # attached, not owned: the service's Postgres keeps running
        assert orphan_chunks is not None and info["documents"] == len(rows)
        indexed = Bm25Index(self.data_dir / "indexes" / f"c{collection_id}" / "bm25").keys()
        present = {document_id for document_id, _ in rows}
        per_batch = Counter(document_id.rsplit("-", 1)[0] for document_id in present)
        keys = {key for _, key in rows}
        return {
            "lost": sum(
                f"{name}-{i}" not in present for name in acknowledged for i in range(BATCH)
            ),
            "partial": sum(count != BATCH for count in per_batch.values()),
            "ghosts": len(indexed - keys) + int(orphan_chunks[0]),
            "unindexed": len(keys - indexed),
        }

    def close(self) -> None:
        if self.server.poll() is None:
            _stop(self.server, signal.SIGTERM)


def _rows(conn: psycopg.Connection[Any], collection: str) -> tuple[int, list[tuple[str, int]]]:
    found = conn.execute("SELECT id FROM unidb.collections WHERE name = %s", (collection,))
    row = found.fetchone()
    assert row is not None
    rows = conn.execute(
        "SELECT id, key FROM unidb.documents WHERE collection_id = %s", (row[0],)
    ).fetchall()
    return int(row[0]), [(str(document_id), int(key)) for document_id, key in rows]


def run_trials(data_dir: Path, trials: int, seed: int = 0) -> list[TrialResult]:
    """``trials`` kills during ingest; every second one kills the embedded Postgres too."""
    rng = random.Random(seed)
    rig = CrashRig(data_dir)
    try:
        return [rig.trial(n, rng, kill_postgres=n % 2 == 1) for n in range(trials)]
    finally:
        rig.close()


def test_kill_during_ingest_loses_nothing_acknowledged(tmp_path: Path) -> None:
    results = run_trials(tmp_path / "data", trials=int(os.environ.get("UNIDB_CRASH_TRIALS", "3")))
    for result in results:
        assert result.acknowledged_batches > 0, asdict(result)  # the kill landed mid-ingest
        assert (result.lost, result.partial, result.ghosts, result.unindexed) == (0, 0, 0, 0), (
            asdict(result)
        )
    # the restarted service adopted the Postgres its killed predecessor left running, and
    # stopped it on the way out
    assert not (tmp_path / "data" / "pg" / "postmaster.pid").exists()
