"""The cost of row-level security on the query path: each mode with the documents', chunks'
and outbox's policies binding the service (as shipped) beside the same queries with them
off, in one process, rounds interleaved.

    python bench/rls.py [--docs 20000] [--queries 200] [--rounds 4]

In-process on embedded Postgres (engine.query, no HTTP), SciFact abstracts topped up with
filler text, 64-d vectors; modes bm25, vector (exact scan), hybrid and a metadata-filtered
vector query (the GIN index path). Between rounds the three tables switch between FORCE
and NO FORCE ROW LEVEL SECURITY (the service owns them, so NO FORCE lifts its policy).
Prints one JSON line per mode: p50/p99 ms with and without, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.search import filler, load_corpus  # noqa: E402
from unidb import Client  # noqa: E402
from unidb.models import QueryRequest  # noqa: E402
from unidb.service.engine import Engine  # noqa: E402

DIM = 64
TABLES = ("documents", "chunks", "changes")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--beir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/scifact"
    )
    args = parser.parse_args()
    corpus = load_corpus(args.beir)
    everything = (corpus + filler(corpus, max(0, args.docs - len(corpus))))[: args.docs]
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(everything), DIM)).astype(np.float32)
    documents = [
        {"id": d["_id"], "text": d["text"], "metadata": {"lab": f"l{i % 50}"},
         "embedding": vectors[i]}
        for i, d in enumerate(everything)
    ]  # fmt: skip
    words = [d["text"].split()[:6] for d in corpus[: args.queries]]
    query_texts = [" ".join(w) for w in words]
    query_vectors = rng.normal(size=(args.queries, DIM)).astype(np.float32)

    def requests(mode: str) -> list[QueryRequest]:
        made = []
        for text, vector in zip(query_texts, query_vectors, strict=True):
            if mode == "bm25":
                made.append(QueryRequest(text=text, mode="bm25"))
            elif mode == "vector":
                made.append(QueryRequest(vector=vector.tolist(), mode="vector"))
            elif mode == "hybrid":
                made.append(QueryRequest(text=text, vector=vector.tolist(), mode="hybrid"))
            else:
                made.append(
                    QueryRequest(vector=vector.tolist(), mode="vector", filter={"lab": "l7"})
                )
        return made

    modes = ("bm25", "vector", "hybrid", "filtered_vector")
    timings: dict[tuple[str, bool], list[float]] = {
        (m, f): [] for m in modes for f in (True, False)
    }
    with tempfile.TemporaryDirectory(prefix="unidb-rls-") as tmp:
        engine = Engine.open_embedded(Path(tmp))
        try:
            client = Client(backend=engine)
            client.create_collection("bench", dim=DIM)
            client.ingest("bench", documents)
            engine.text_indexes.refresh(_collection_id(engine))
            with psycopg.connect(engine.admin_dsn, autocommit=True) as admin:
                for mode in modes:  # one unmeasured pass warms the caches for both
                    for request in requests(mode):
                        engine.query("bench", request)
                for round_ in range(2 * args.rounds):
                    forced = round_ % 2 == 1
                    for table in TABLES:
                        admin.execute(
                            f"ALTER TABLE unidb.{table} {'' if forced else 'NO '}"
                            "FORCE ROW LEVEL SECURITY"
                        )
                    for mode in modes:
                        batch = requests(mode)
                        engine.query("bench", batch[0])  # plans and caches warm
                        for request in batch:
                            began = time.perf_counter()
                            engine.query("bench", request)
                            timings[mode, forced].append(time.perf_counter() - began)
                for table in TABLES:
                    admin.execute(f"ALTER TABLE unidb.{table} FORCE ROW LEVEL SECURITY")
        finally:
            engine.close()
    for mode in modes:
        on = np.asarray(timings[mode, True]) * 1000
        off = np.asarray(timings[mode, False]) * 1000
        print(json.dumps({
            "bench": "rls", "mode": mode, "docs": len(documents), "queries": len(on),
            "rls_p50_ms": round(float(np.percentile(on, 50)), 3),
            "rls_p99_ms": round(float(np.percentile(on, 99)), 3),
            "no_rls_p50_ms": round(float(np.percentile(off, 50)), 3),
            "no_rls_p99_ms": round(float(np.percentile(off, 99)), 3),
            "p50_ratio": round(float(np.percentile(on, 50) / np.percentile(off, 50)), 3),
        }))  # fmt: skip


def _collection_id(engine: Any) -> int:
    with engine.transaction() as conn:
        row = conn.execute("SELECT id FROM unidb.collections WHERE name = 'bench'").fetchone()
    return int(row[0])


if __name__ == "__main__":
    main()
