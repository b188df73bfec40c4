"""Filtered vector queries on a FAISS snapshot: p50 and recall@10 at 1 %, 10 % and 50 %
selectivity (and without a filter), beside the exact filtered scan in Postgres on the same rows.

    python bench/ann_filters.py [--docs 100000] [--dim 384] [--queries 100]

One embedded Postgres, one collection of embedding-shaped vectors (a power-law variance
spectrum under a random rotation) whose metadata holds `bucket` = i % 100, with a FAISS HNSW snapshot. A filter
`{"bucket": {"$lt": p}}` admits p % of the documents. Per selectivity, in process, k=10:
unidb's query (its plan from `explain.vector_plan`), then the peer, the exact scan unidb
falls back to (`ORDER BY embedding <=> q` over the admitted rows, over psycopg). Recall is
against numpy's exact top 10 of the admitted documents. Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

import unidb
from unidb.models import IndexBuildRequest, QueryRequest


def embedding_shaped(
    n: int, dim: int, rotation: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Unit vectors whose variance falls off as a power law across directions (as learned
    embeddings' does), under a random rotation."""
    spectrum = (np.arange(1, dim + 1, dtype=np.float32)) ** -0.75
    vectors = (rng.standard_normal((n, dim)).astype(np.float32) * spectrum) @ rotation
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((args.dim, args.dim)))
    rotation = rotation.astype(np.float32)
    vectors = embedding_shaped(args.docs, args.dim, rotation, rng)
    queries = embedding_shaped(args.queries, args.dim, rotation, rng)
    buckets = np.arange(args.docs) % 100

    with tempfile.TemporaryDirectory(prefix="unidb-filters-") as tmp:
        with unidb.Client.embedded(Path(tmp)) as client:
            engine: Any = client.backend
            client.create_collection("filtered", dim=args.dim)
            client.ingest("filtered", ({"id": f"d{i}", "embedding": v,
                                        "metadata": {"bucket": int(buckets[i])}}
                                       for i, v in enumerate(vectors)))  # fmt: skip
            began = time.perf_counter()
            job = engine.build_index("filtered", IndexBuildRequest(kind="hnsw"))
            while (job := engine.get_job(job.id)).status in ("queued", "running"):
                time.sleep(0.2)
            assert job.status == "done", job
            print(json.dumps({"bench": "ann_filters_build", "docs": args.docs, "dim": args.dim,
                              "faiss_hnsw_s": round(time.perf_counter() - began, 1)}))  # fmt: skip
            with engine.transaction() as conn:
                (collection_id,) = conn.execute(
                    "SELECT id FROM unidb.collections WHERE name = 'filtered'"
                ).fetchone()
            with psycopg.connect(engine.admin_dsn) as peer:
                register_vector(peer)
                for percent in (1, 10, 50, 100):
                    admitted = buckets < percent
                    unidb_times, peer_times, found, peer_found = [], [], 0, 0
                    plans: Counter[str] = Counter()
                    for query in queries:
                        truth = np.argsort(-(vectors @ query) + np.where(admitted, 0, 1e9))[:10]
                        truth_ids = {f"d{i}" for i in truth}
                        where = {"bucket": {"$lt": percent}} if percent < 100 else None
                        request = QueryRequest(vector=query.tolist(), k=10, mode="vector",
                                               filter=where, explain=True)  # fmt: skip
                        began = time.perf_counter()
                        answer = engine.query("filtered", request)
                        unidb_times.append((time.perf_counter() - began) * 1000)
                        found += len({h.id for h in answer.hits} & truth_ids)
                        plan = answer.explain.vector_plan or f"{answer.vector_index}: no filter"
                        plans[plan.split(",")[0].split(" (")[0]] += 1
                        began = time.perf_counter()
                        rows = peer.execute(
                            "SELECT d.id FROM unidb.chunks c JOIN unidb.documents d"
                            " ON d.key = c.document_key WHERE c.collection_id = %s"
                            " AND (d.metadata->>'bucket')::int < %s"
                            " ORDER BY c.embedding <=> %s LIMIT 10",
                            (collection_id, percent, query),
                        ).fetchall()
                        peer_times.append((time.perf_counter() - began) * 1000)
                        peer_found += len({row[0] for row in rows} & truth_ids)
                    print(json.dumps({
                        "bench": "ann_filters", "docs": args.docs, "selectivity_pct": percent,
                        "p50_ms": round(float(np.percentile(unidb_times, 50)), 2),
                        "p99_ms": round(float(np.percentile(unidb_times, 99)), 2),
                        "recall_at_10": round(found / (10 * len(queries)), 4),
                        "plans": dict(plans),
                        "peer": "exact_filtered_scan_sql",
                        "peer_p50_ms": round(float(np.percentile(peer_times, 50)), 2),
                        "peer_recall_at_10": round(peer_found / (10 * len(queries)), 4),
                    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
