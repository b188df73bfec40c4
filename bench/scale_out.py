"""Scale-out on one machine, loopback only: what more processes, a replica and Ray cost or give.

    python bench/scale_out.py [--seconds 20] [--clients 16] [--writers 4] [--ray-docs 1000]

Prints one JSON line per figure, each beside its peer from the same run:
- query_qps: hybrid queries (a SciFact claim's text plus a random 384-d vector, k=10) from
  closed-loop aiohttp clients against one `unidb serve` process, then spread over two
  processes on the same Postgres and shared data directory (the peer is the one process);
- replica_lag: under transactional upserts from --writers clients through `unidb serve`,
  the time from each commit's acknowledgement until a streaming standby (pg_basebackup on
  loopback) has replayed its commit token's LSN, polled every millisecond; beside it, the
  acknowledged commits' own latency on the primary;
- ray_ingest: the first --ray-docs SciFact abstracts embedded with MiniLM and written
  through `unidb serve`: on Ray actors (a local Ray with this machine's CPUs) against the
  same file in one process. Both count their model loads.
On a 2-core machine every process shares the same two cores (clients, servers, Postgres,
Ray workers): the figures show correctness and overhead, not speedup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psycopg

import unidb
from unidb.service.db.embedded import EmbeddedPostgres, EmbeddedStandby
from unidb.service.store.commit_tokens import token_lsn

sys.path.insert(0, str(Path(__file__).parent))
from ingest import free_port, wait_healthy  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
DIM = 384
COLLECTION = "scale"


def _emit(figure: dict[str, Any]) -> None:
    print(json.dumps({"bench": "scale", **figure}), flush=True)


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else float("nan")


@contextmanager
def _serve(database_url: str, data_dir: Path, name: str) -> Iterator[str]:
    port = free_port()
    log = (data_dir.parent / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "unidb.service.cli", "serve", "--port", str(port),
         "--data-dir", str(data_dir)],
        env={**os.environ, "UNIDB_DATABASE_URL": database_url},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url
    finally:
        process.terminate()
        process.wait(60)
        log.close()


def _unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _load_corpus(url: str) -> None:
    corpus = [json.loads(line) for line in (DATA / "corpus.jsonl").open()]
    vectors = _unit_vectors(len(corpus), seed=3)
    with unidb.Client(url) as client:
        client.create_collection(COLLECTION, dim=DIM)
        client.ingest(
            COLLECTION,
            ({"id": row["_id"], "text": f"{row.get('title', '')} {row['text']}",
              "embedding": vector} for row, vector in zip(corpus, vectors, strict=True)),
            batch_size=1000,
        )  # fmt: skip


async def _query_load(urls: list[str], clients: int, seconds: float) -> dict[str, Any]:
    queries = [json.loads(line)["text"] for line in (DATA / "queries.jsonl").open()]
    vectors = _unit_vectors(1024, seed=5)
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def client(number: int, http: aiohttp.ClientSession) -> None:
        nonlocal errors
        rng = random.Random(number)
        target = urls[number % len(urls)]  # each client keeps to one process, as behind a balancer
        while time.monotonic() < deadline:
            body = {"text": rng.choice(queries), "k": 10, "mode": "hybrid",
                    "vector": vectors[rng.randrange(len(vectors))].tolist()}  # fmt: skip
            began = time.perf_counter()
            async with http.post(f"{target}/v1/collections/{COLLECTION}/query", json=body) as r:
                await r.read()
                if r.status == 200:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(n, http) for n in range(clients)))
        elapsed = time.perf_counter() - began
    return {
        "qps": round(len(latencies) / elapsed, 1),
        "p50_ms": _ms(latencies, 50),
        "p99_ms": _ms(latencies, 99),
        "queries": len(latencies),
        "errors": errors,
    }


def _replica_lag(url: str, standby_url: str, writers: int, seconds: float) -> dict[str, Any]:
    """Commit acknowledgements (time, LSN) from writer threads; a poller on the standby
    notes when replay passes each LSN."""
    acks: list[tuple[float, int, float]] = []  # (acknowledged at, lsn, commit latency)
    acks_lock = threading.Lock()
    stop = threading.Event()
    replayed: list[tuple[float, int]] = []

    def write(number: int) -> None:
        rng = random.Random(number)
        with unidb.Client(url) as client:
            n = 0
            while not stop.is_set():
                began = time.perf_counter()
                with client.transaction() as tx:
                    tx.upsert(COLLECTION, [
                        {"id": f"lag-{number}-{n}-{i}", "text": f"write load {rng.random()}",
                         "embedding": _unit_vectors(1, seed=n)[0]} for i in range(10)
                    ])  # fmt: skip
                acknowledged = time.perf_counter()
                lsn = token_lsn(tx.commit_token)
                assert lsn is not None
                high, low = lsn.split("/")
                with acks_lock:
                    acks.append((acknowledged, (int(high, 16) << 32) + int(low, 16),
                                 acknowledged - began))  # fmt: skip
                n += 1

    def poll() -> None:
        with psycopg.connect(standby_url, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").fetchone()
                replayed.append((time.perf_counter(), int(row[0]) if row else 0))
                time.sleep(0.001)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    threads.append(threading.Thread(target=poll))
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()

    times = np.array([t for t, _ in replayed])
    positions = np.maximum.accumulate(np.array([p for _, p in replayed]))
    lags = []
    for acknowledged, lsn, _ in acks:
        index = int(np.searchsorted(positions, lsn))  # the first poll that saw it replayed
        if index < len(times):
            lags.append(max(0.0, float(times[index]) - acknowledged))
    commits = [latency for _, _, latency in acks]
    return {
        "commits": len(acks),
        "replayed": len(lags),
        "lag_p50_ms": _ms(lags, 50),
        "lag_p99_ms": _ms(lags, 99),
        "peer": "the acknowledged commit's own latency on the primary",
        "commit_p50_ms": _ms(commits, 50),
        "commit_p99_ms": _ms(commits, 99),
    }


def _ray_ingest(url: str, docs: int, workdir: Path) -> None:
    from unidb.indexing.embedders import get_embedder
    from unidb.service.ingest import ingest_file
    from unidb.service.jobs.distributed import connect, embed_on_ray

    corpus = workdir / "corpus.jsonl"
    with (DATA / "corpus.jsonl").open("rb") as source, corpus.open("wb") as target:
        for _, line in zip(range(docs), source, strict=False):
            target.write(line)
    figures = {}
    with unidb.Client(url) as client:
        began = time.perf_counter()
        report = ingest_file(client.backend, corpus, collection="scale_single", batch_size=500,
                             embedder=get_embedder("minilm"), show_progress=False)  # fmt: skip
        figures["single_process"] = (report.written, time.perf_counter() - began)
        began = time.perf_counter()
        ray = connect(None)
        workers = int(ray.cluster_resources().get("CPU", 1))
        report = ingest_file(client.backend, corpus, collection="scale_ray", batch_size=500,
                             embed_groups=embed_on_ray(ray, "minilm"), dim=DIM,
                             show_progress=False)  # fmt: skip
        figures["ray"] = (report.written, time.perf_counter() - began)
        ray.shutdown()
    (single, single_s), (on_ray, ray_s) = figures["single_process"], figures["ray"]
    _emit({
        "figure": "ray_ingest", "documents": docs, "ray_workers": workers,
        "ray_rows_per_s": round(on_ray / ray_s, 1), "ray_seconds": round(ray_s, 1),
        "peer": "single process", "single_rows_per_s": round(single / single_s, 1),
        "single_seconds": round(single_s, 1), "cpus": os.cpu_count(),
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--ray-docs", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="unidb-scale-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o777)  # the Postgres system user writes the standby's directory here
        primary = EmbeddedPostgres(root / "primary")
        database_url = primary.start()
        shared = root / "shared"
        standby: EmbeddedStandby | None = None
        try:
            with (
                _serve(database_url, shared, "a") as url_a,
                _serve(database_url, shared, "b") as url_b,
            ):
                _load_corpus(url_a)
                for urls in ([url_a], [url_a, url_b]):
                    asyncio.run(_query_load(urls, args.clients, 3))  # warm both
                one = asyncio.run(_query_load([url_a], args.clients, args.seconds))
                two = asyncio.run(_query_load([url_a, url_b], args.clients, args.seconds))
                _emit({"figure": "query_qps", "clients": args.clients, "seconds": args.seconds,
                       "processes": 2, **two, "peer": "1 process", "peer_qps": one["qps"],
                       "peer_p50_ms": one["p50_ms"], "peer_p99_ms": one["p99_ms"],
                       "peer_errors": one["errors"], "cpus": os.cpu_count()})  # fmt: skip

                standby = EmbeddedStandby(primary, root / "standby", free_port())
                standby_url = standby.start()
                lag = _replica_lag(url_a, standby_url, args.writers, args.seconds)
                _emit({"figure": "replica_lag", "writers": args.writers, **lag})

                _ray_ingest(url_a, args.ray_docs, root)
        finally:
            if standby is not None:
                standby.stop()
            primary.stop()


if __name__ == "__main__":
    main()
