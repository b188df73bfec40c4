"""Load: many concurrent clients with mixed reads, writes and queries against `unidb serve`.

    python bench/load.py [--clients 200] [--seconds 60] [--max-requests 1000000]

Loopback only, bounded in time and in requests. The corpus is the BEIR folder's abstracts
(SciFact: 5,183) with random unit 384-d vectors (load does not depend on what the vectors
mean). Each client loops until the time or request budget runs out, choosing per request:
50% hybrid query (a test claim's text plus a vector, k=10), 30% document read by id, 20%
upsert of 10 documents. Prints one JSON line per system:
- unidb: the mix over REST (aiohttp) against `unidb serve` (default pool of 10
  connections), with its process's resident memory before, every 10 s, at peak and after;
- postgres_direct, the peer, in the same run on the same Postgres: the same mix sent
  straight from an asyncio psycopg pool of the same size to a plain table (exact vector
  scan, as unidb runs below UNIDB_HNSW_MIN_ROWS; no BM25 side, no HTTP).
Figures are end-to-end from one client process, which shares the machine's cores with the
server and Postgres.
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
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import psutil
import psycopg
from pgvector.psycopg import register_vector_async
from psycopg_pool import AsyncConnectionPool

from unidb.service.db.embedded import EmbeddedPostgres

sys.path.insert(0, str(Path(__file__).parent))
from ingest import free_port, wait_healthy  # noqa: E402

DIM = 384
POOL = 10
COLLECTION = "load"


def _unit_vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open() as stream:
        return [json.loads(line) for line in stream if line.strip()]


class Workload:
    """The mix, its budget, and what each request took."""

    def __init__(self, corpus: list[dict[str, Any]], queries: list[str], args: Any) -> None:
        self.ids = [row["_id"] for row in corpus]
        self.queries = queries
        self.vectors = _unit_vectors(4096, seed=1)
        self.deadline = 0.0
        self.budget = args.max_requests
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.samples: list[str] = []

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def next_op(self, rng: random.Random) -> str | None:
        if time.monotonic() >= self.deadline or self.budget <= 0:
            return None
        self.budget -= 1
        draw = rng.random()
        return "query" if draw < 0.5 else "read" if draw < 0.8 else "write"

    def vector(self, rng: random.Random) -> list[float]:
        return [float(x) for x in self.vectors[rng.randrange(len(self.vectors))]]

    async def run_client(
        self, client: int, ops: dict[str, Callable[[random.Random, str], Awaitable[None]]]
    ) -> None:
        rng = random.Random(client)
        count = 0
        while (op := self.next_op(rng)) is not None:
            began = time.perf_counter()
            try:
                await ops[op](rng, f"c{client}n{count}")
                self.latencies[op].append(time.perf_counter() - began)
            except Exception as exc:  # every failure is counted, whatever its kind
                self.errors[op] += 1
                if len(self.samples) < 5:
                    self.samples.append(f"{op}: {type(exc).__name__}: {str(exc)[:200]}")
            count += 1

    def summary(self, system: str, clients: int, seconds: float) -> dict[str, Any]:
        every = [x for values in self.latencies.values() for x in values]
        ms = lambda values, q: round(float(np.percentile(values, q)) * 1000, 2)  # noqa: E731
        return {
            "bench": "load",
            "system": system,
            "clients": clients,
            "seconds": round(seconds, 1),
            "requests": len(every),
            "qps": round(len(every) / seconds, 1),
            "p50_ms": ms(every, 50),
            "p99_ms": ms(every, 99),
            "errors": sum(self.errors.values()),
            "per_op": {
                op: {"requests": len(v), "p50_ms": ms(v, 50), "p99_ms": ms(v, 99)}
                for op, v in sorted(self.latencies.items())
            },
            "error_samples": self.samples,
        }


async def _drive(workload: Workload, clients: int, seconds: float, ops: Any) -> float:
    workload.start(seconds)
    began = time.perf_counter()
    await asyncio.gather(*(workload.run_client(c, ops) for c in range(clients)))
    return time.perf_counter() - began


async def load_unidb(url: str, workload: Workload, clients: int, seconds: float) -> float:
    # aiohttp: an httpx client saturates a core of its own at this concurrency
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as http:
        base = f"/v1/collections/{COLLECTION}"

        async def send(method: str, path: str, body: Any = None) -> None:
            async with http.request(method, path, json=body) as response:
                await response.read()
                response.raise_for_status()

        async def query(rng: random.Random, _: str) -> None:
            body = {"text": rng.choice(workload.queries), "vector": workload.vector(rng), "k": 10}
            await send("POST", f"{base}/query", body)

        async def read(rng: random.Random, _: str) -> None:
            await send("GET", f"{base}/documents/{rng.choice(workload.ids)}")

        async def write(rng: random.Random, tag: str) -> None:
            documents = [
                {
                    "id": f"{tag}-{i}",
                    "text": rng.choice(workload.queries),
                    "embedding": workload.vector(rng),
                }
                for i in range(10)
            ]
            await send("POST", f"{base}/documents", {"documents": documents})

        return await _drive(
            workload, clients, seconds, {"query": query, "read": read, "write": write}
        )


async def load_postgres(dsn: str, workload: Workload, clients: int, seconds: float) -> float:
    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await register_vector_async(conn)

    async with AsyncConnectionPool(
        dsn, min_size=POOL, max_size=POOL, configure=configure, timeout=60
    ) as pool:

        async def query(rng: random.Random, _: str) -> None:
            vector = np.asarray(workload.vector(rng), dtype=np.float32)
            async with pool.connection() as conn:
                await (
                    await conn.execute(
                        "SELECT id, text FROM bench_load ORDER BY embedding <=> %s LIMIT 10",
                        (vector,),
                    )
                ).fetchall()

        async def read(rng: random.Random, _: str) -> None:
            async with pool.connection() as conn:
                found = await conn.execute(
                    "SELECT id, text, embedding FROM bench_load WHERE id = %s",
                    (rng.choice(workload.ids),),
                )
                await found.fetchone()

        async def write(rng: random.Random, tag: str) -> None:
            rows = [
                (
                    f"{tag}-{i}",
                    rng.choice(workload.queries),
                    np.asarray(workload.vector(rng), dtype=np.float32),
                )
                for i in range(10)
            ]
            async with pool.connection() as conn, conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO bench_load (id, text, embedding) VALUES (%s, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET text = excluded.text, embedding = excluded.embedding",
                    rows,
                )

        return await _drive(
            workload, clients, seconds, {"query": query, "read": read, "write": write}
        )


def _load_corpus(url: str, dsn: str, corpus: list[dict[str, Any]]) -> None:
    vectors = _unit_vectors(len(corpus), seed=0)
    rows = [
        (row["_id"], f"{row.get('title', '')} {row['text']}".strip(), vectors[i])
        for i, row in enumerate(corpus)
    ]
    with httpx.Client(base_url=url, timeout=300) as http:
        http.post("/v1/collections", json={"name": COLLECTION, "dim": DIM}).raise_for_status()
        for start in range(0, len(rows), 1000):
            documents = [
                {"id": i, "text": text, "embedding": [float(x) for x in vector]}
                for i, text, vector in rows[start : start + 1000]
            ]
            http.post(
                f"/v1/collections/{COLLECTION}/documents", json={"documents": documents}
            ).raise_for_status()
        # opens the BM25 index before the clock starts
        http.post(
            f"/v1/collections/{COLLECTION}/query", json={"text": "cell", "mode": "bm25"}
        ).raise_for_status()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            f"CREATE TABLE bench_load (id text PRIMARY KEY, text text, embedding vector({DIM}))"
        )
        with conn.cursor().copy("COPY bench_load (id, text, embedding) FROM STDIN") as copy:
            for document_id, text, vector in rows:
                copy.write_row(
                    (document_id, text, "[" + ",".join(f"{x:.7f}" for x in vector) + "]")
                )
        conn.execute("ANALYZE bench_load")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="per system")
    parser.add_argument(
        "--beir", type=Path, default=Path(__file__).parents[2] / "shared/data/scifact"
    )
    args = parser.parse_args()
    corpus = _read_jsonl(args.beir / "corpus.jsonl")
    queries = [row["text"] for row in _read_jsonl(args.beir / "queries.jsonl")]

    with tempfile.TemporaryDirectory(prefix="unidb-load-") as tmp:
        data_dir = Path(tmp)
        postgres = EmbeddedPostgres(data_dir / "pg")
        dsn = postgres.start()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "unidb.service.cli", "--log-level", "warning", "serve",
             "--port", str(port), "--data-dir", str(data_dir)],
            env={**os.environ, "UNIDB_POOL_MAX_SIZE": str(POOL)},
        )  # fmt: skip
        try:
            wait_healthy(url)
            _load_corpus(url, dsn, corpus)
            process = psutil.Process(server.pid)
            rss_before = process.memory_info().rss
            peak = rss_before
            workload = Workload(corpus, queries, args)

            every_10s: list[float] = []

            async def watched() -> float:
                nonlocal peak
                task = asyncio.ensure_future(load_unidb(url, workload, args.clients, args.seconds))
                began = time.monotonic()
                while not task.done():
                    rss = process.memory_info().rss
                    peak = max(peak, rss)
                    if time.monotonic() - began >= 10 * (len(every_10s) + 1):
                        every_10s.append(round(rss / (1024 * 1024), 1))
                    await asyncio.sleep(0.5)
                return task.result()

            seconds = asyncio.run(watched())
            rss_after = process.memory_info().rss
            unidb_line = workload.summary("unidb", args.clients, seconds)
            mib = 1024 * 1024
            unidb_line |= {
                "rss_before_mib": round(rss_before / mib, 1),
                "rss_peak_mib": round(peak / mib, 1),
                "rss_after_mib": round(rss_after / mib, 1),
                "rss_growth_mib": round((rss_after - rss_before) / mib, 1),
                "rss_every_10s_mib": every_10s,
            }
            peer = Workload(corpus, queries, args)
            seconds = asyncio.run(load_postgres(dsn, peer, args.clients, args.seconds))
            peer_line = peer.summary("postgres_direct", args.clients, seconds)
        finally:
            server.terminate()
            server.wait(60)
            postgres.stop()
    print(json.dumps(unidb_line))
    print(json.dumps(peer_line))


if __name__ == "__main__":
    main()
