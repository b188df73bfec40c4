"""Writes against a FAISS snapshot: query latency as changes pile up, with the snapshot
rebuilt when it falls behind beside the same snapshot left as it was, and the outbox
before and after pruning.

    python bench/ann_churn.py [--docs 30000] [--dim 384] [--queries 200]

One embedded Postgres, two collections holding the same vectors (clustered, like
embeddings: bench/search.py's mixtures of random centres plus noise), each with a FAISS
HNSW snapshot. After each round of updates to random documents, vector queries (k=10,
in process, `consistency="strong"`) run on both: `kept` keeps its first snapshot, so every
query masks and re-scores every document changed since; `rebuilt` is rebuilt as a serving
process does when a snapshot falls `UNIDB_ANN_REBUILD_FRACTION` behind (the rebuild is
waited for here, so the figure is the steady state between rebuilds). Then the outbox is
pruned and its rows counted before and after. Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import unidb
from unidb.models import IndexBuildRequest, QueryRequest


def clustered(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((max(8, n // 100), dim)).astype(np.float32)
    picks = rng.integers(0, len(centres), size=n)
    vectors = centres[picks] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def wait(engine: Any, job_id: int) -> None:
    while (job := engine.get_job(job_id)).status in ("queued", "running"):
        time.sleep(0.1)
    assert job.status == "done", job


def p50_ms(engine: Any, name: str, queries: np.ndarray) -> tuple[float, str]:
    for vector in queries[:20]:  # warm
        engine.query(name, QueryRequest(vector=vector.tolist(), mode="vector", k=10))
    times, served = [], set()
    for vector in queries:
        request = QueryRequest(vector=vector.tolist(), mode="vector", k=10)
        began = time.perf_counter()
        answer = engine.query(name, request)
        times.append((time.perf_counter() - began) * 1000)
        served.add(answer.vector_index)
    return round(float(np.percentile(times, 50)), 2), ",".join(sorted(served))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = clustered(args.docs, args.dim, rng)
    queries = clustered(args.queries, args.dim, rng)

    with tempfile.TemporaryDirectory(prefix="unidb-churn-") as tmp:
        # rebuilds are started by this script, not by the heartbeat: figures at known points
        with unidb.Client.embedded(Path(tmp), ann_rebuild_fraction=0.1) as client:
            engine: Any = client.backend
            engine.jobs.take_over = False
            for name in ("kept", "rebuilt"):
                client.create_collection(name, dim=args.dim)
                client.ingest(
                    name, ({"id": f"d{i}", "embedding": v} for i, v in enumerate(vectors))
                )
                wait(engine, engine.build_index(name, IndexBuildRequest(kind="hnsw")).id)
            # only `rebuilt` is looked after: `kept` is the peer left with its first snapshot
            with engine.transaction() as conn:
                (rebuilt_id,) = conn.execute(
                    "SELECT id FROM unidb.collections WHERE name = 'rebuilt'"
                ).fetchone()
            engine.ann.collections = lambda: [rebuilt_id]
            changed_total = 0
            for changed in (0, 1_000, 4_000, 10_000):
                if changed:
                    picks = rng.choice(args.docs, size=changed, replace=False)
                    fresh = clustered(changed, args.dim, rng)
                    for name in ("kept", "rebuilt"):
                        client.ingest(
                            name,
                            (
                                {"id": f"d{i}", "embedding": v}
                                for i, v in zip(picks, fresh, strict=True)
                            ),
                        )
                    changed_total += changed
                    for job_id in engine.jobs.rebuild_behind():
                        wait(engine, job_id)
                kept, kept_by = p50_ms(engine, "kept", queries)
                rebuilt, rebuilt_by = p50_ms(engine, "rebuilt", queries)
                lag = client.get_collection("rebuilt").ann.lag
                print(json.dumps({
                    "bench": "ann_churn", "docs": args.docs, "dim": args.dim,
                    "changes_since_first_build": changed_total,
                    "rebuilt_p50_ms": rebuilt, "rebuilt_served_by": rebuilt_by,
                    "rebuilt_lag": lag, "kept_p50_ms": kept, "kept_served_by": kept_by,
                }), flush=True)  # fmt: skip
            # `kept` holds the outbox from its first build: rebuild it, then prune
            wait(engine, engine.build_index("kept", IndexBuildRequest(kind="hnsw")).id)
            with engine.transaction(service_wide=True) as conn:
                (before,) = conn.execute("SELECT count(*) FROM unidb.changes").fetchone()
            engine.text_indexes.follow_once()
            began = time.perf_counter()
            pruned = engine.retention.run_once()
            seconds = time.perf_counter() - began
            with engine.transaction(service_wide=True) as conn:
                (after,) = conn.execute("SELECT count(*) FROM unidb.changes").fetchone()
            print(json.dumps({
                "bench": "outbox_pruning", "rows_before": before, "rows_after": after,
                "deleted": pruned.deleted, "seconds": round(seconds, 2),
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
