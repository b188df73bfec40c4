"""Ingest throughput: unidb (embedded and REST) beside raw binary COPY, same server, same rows.

    python bench/ingest.py [--rows 100000] [--dim 384] [--batch 2000]

Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from pgvector.psycopg import register_vector

import unidb

WORDS = (
    "retrieval vector index query postgres search cache token prefix model embedding "
    "document chunk hybrid fusion filter metadata latency recall commit"
).split()


def make_rows(
    n: int, dim: int, seed: int = 0
) -> tuple[list[str], list[str], list[dict[str, Any]], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"doc-{i}" for i in range(n)]
    words = rng.integers(0, len(WORDS), size=(n, 30))
    texts = [" ".join(WORDS[w] for w in row) for row in words]
    metadata = [{"source": f"s{i % 50}", "year": 2000 + i % 25} for i in range(n)]
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return ids, texts, metadata, vectors


def bench_copy(dsn: str, rows: tuple[Any, ...], dim: int) -> float:
    ids, texts, metadata, vectors = rows
    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        conn.execute("DROP TABLE IF EXISTS bench_raw_copy")
        conn.execute(
            f"CREATE TABLE bench_raw_copy (id text, text text, metadata jsonb, embedding vector({dim}))"
        )
        conn.commit()
        start = time.perf_counter()
        with conn.cursor().copy(
            "COPY bench_raw_copy (id, text, metadata, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["text", "text", "jsonb", "vector"])
            for row in zip(ids, texts, metadata, vectors, strict=True):
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - start
        conn.execute("DROP TABLE bench_raw_copy")
        conn.commit()
    return len(ids) / elapsed


def documents(rows: tuple[Any, ...], start: int, stop: int) -> list[dict[str, Any]]:
    ids, texts, metadata, vectors = rows
    return [
        {"id": ids[i], "text": texts[i], "metadata": metadata[i], "embedding": vectors[i]}
        for i in range(start, stop)
    ]


def bench_client(
    client: unidb.Client, name: str, rows: tuple[Any, ...], dim: int, batch: int
) -> float:
    client.delete_collection(name)
    client.create_collection(name, dim=dim)
    n = len(rows[0])
    # the caller's documents, as an application holds them: dicts with numpy vectors
    docs = documents(rows, 0, n)
    began = time.perf_counter()
    result = client.ingest(name, docs, batch_size=batch)
    elapsed = time.perf_counter() - began
    assert result.written == n
    assert client.get_collection(name).documents == n
    client.delete_collection(name)
    return n / elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    args = parser.parse_args()

    rows = make_rows(args.rows, args.dim)
    copy_runs: list[float] = []
    embedded_runs: list[float] = []
    rest_runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="unidb-bench-") as tmp:
        data_dir = Path(tmp)
        with unidb.Client.embedded(data_dir, max_batch_documents=args.batch) as embedded:
            dsn = embedded.backend.admin_dsn  # type: ignore[attr-defined]
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "unidb.service.cli", "--log-level", "warning", "serve",
                 "--port", str(port), "--data-dir", str(data_dir)],
                env={**os.environ, "UNIDB_MAX_BATCH_DOCUMENTS": str(args.batch)},
            )  # fmt: skip
            try:
                url = f"http://127.0.0.1:{port}"
                wait_healthy(url)
                with unidb.Client(url, timeout=300) as rest:
                    # rounds interleave the three paths so a noisy spell hits them alike
                    for _ in range(args.repeat):
                        copy_runs.append(bench_copy(dsn, rows, args.dim))
                        embedded_runs.append(
                            bench_client(embedded, "bench_embedded", rows, args.dim, args.batch)
                        )
                        rest_runs.append(
                            bench_client(rest, "bench_rest", rows, args.dim, args.batch)
                        )
            finally:
                server.terminate()
                server.wait(60)

    copy_rows_s = statistics.median(copy_runs)
    embedded_rows_s = statistics.median(embedded_runs)
    rest_rows_s = statistics.median(rest_runs)
    print(
        json.dumps(
            {
                "bench": "ingest",
                "rows": args.rows,
                "dim": args.dim,
                "batch": args.batch,
                "rounds": args.repeat,
                "copy_rows_s": round(copy_rows_s),
                "unidb_embedded_rows_s": round(embedded_rows_s),
                "unidb_rest_rows_s": round(rest_rows_s),
                "embedded_vs_copy": round(embedded_rows_s / copy_rows_s, 3),
                "rest_vs_copy": round(rest_rows_s / copy_rows_s, 3),
            }
        )
    )


def wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


if __name__ == "__main__":
    main()
