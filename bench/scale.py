"""One machine, many documents, writes flowing: ingest, the FAISS build, vector queries before
and after churn, filters, the outbox and the service's memory, each beside its peer.

    python bench/scale.py --docs 1000000 [--queries 200] [--rest-docs 20000]
    python bench/scale.py --docs 100000          # under 10 minutes on 2 cores

The documents are synthetic so no model is needed: 384-d vectors shaped like embeddings (a
power-law spectrum under a random rotation, unit length) and short texts of random words,
with a metadata field ``b`` = i % 100 for filters. Everything runs on one embedded Postgres:

- ingest: ``Client.embedded(...).ingest`` and REST (JSON float vectors, 1,000-document
  batches, on the first --rest-docs documents) beside a raw binary COPY of the same rows
  into a bare table;
- build: FAISS HNSW (M=16, efConstruction=64) as a job in the ``unidb serve`` process
  beside pgvector HNSW (m=16, ef_construction=64, 2 parallel workers) on the bare table,
  with recall@10 of both against exact search, and the server's peak RSS against the raw
  vector bytes;
- query: vector queries through REST (k=10, one client) beside pgvector over SQL (psycopg,
  ef_search the smallest of 40, 80, 120, 200, 400 reaching recall 0.95): p50, p99, QPS,
  recall; then the same after updating 10 % of the documents with no manual rebuild
  (rebuilds start at 15 % here, so the figure is the live segment's);
- filtered queries at 1 %, 10 % and 50 % selectivity through REST: p50 and recall against
  exact filtered search;
- the outbox's rows before and after pruning, and after a rebuild and another prune.

Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil
import psycopg
from pgvector.psycopg import register_vector

import unidb

sys.path.insert(0, str(Path(__file__).parent))
from ingest import free_port, wait_healthy  # noqa: E402

DIM = 384
CHUNK = 10_000
COLLECTION = "scale"
WORDS = [f"w{i}" for i in range(5000)]
EF_SEARCH_TRIED = (40, 80, 120, 200, 400, 600, 1000)
SELECTIVITY = {"1%": {"b": 0}, "10%": {"b": {"$lt": 10}}, "50%": {"b": {"$lt": 50}}}


def emit(figure: dict[str, Any]) -> None:
    print(json.dumps({"bench": "scale", **figure}), flush=True)


class Corpus:
    """Embedding-shaped vectors, generated chunk by chunk from one seed."""

    def __init__(self, docs: int, seed: int = 0) -> None:
        self.docs = docs
        rng = np.random.default_rng(seed)
        rotation, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
        spectrum = np.arange(1, DIM + 1, dtype=np.float64) ** -0.8  # a power law
        self.basis = (np.sqrt(spectrum)[:, None] * rotation.T).astype(np.float32)
        self.seed = seed
        self.vectors = np.empty((docs, DIM), dtype=np.float32)
        for start in range(0, docs, CHUNK):
            stop = min(start + CHUNK, docs)
            self.vectors[start:stop] = self.sample(stop - start, seed + 1 + start // CHUNK)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((n, DIM)).astype(np.float32) @ self.basis
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)

    def text(self, i: int) -> str:
        rng = np.random.default_rng(i)
        return " ".join(WORDS[w] for w in rng.integers(0, len(WORDS), 8))

    def documents(self, start: int, stop: int) -> Iterator[dict[str, Any]]:
        for i in range(start, stop):
            yield {"id": f"d{i}", "text": self.text(i), "metadata": {"b": i % 100},
                   "embedding": self.vectors[i]}  # fmt: skip


def exact_top10(
    vectors: np.ndarray, queries: np.ndarray, admitted: np.ndarray | None
) -> list[set[int]]:
    best: list[set[int]] = []
    for query in queries:
        scores = vectors @ query
        if admitted is not None:
            scores = np.where(admitted, scores, -np.inf)
        best.append(set(np.argpartition(-scores, 10)[:10].tolist()))
    return best


def recall(found: list[list[int]], truth: list[set[int]]) -> float:
    return round(
        sum(len(set(f) & t) for f, t in zip(found, truth, strict=True)) / (10 * len(truth)), 4
    )


def timed(calls: list[Callable[[], list[int]]]) -> tuple[list[float], list[list[int]], float]:
    for call in calls[:10]:  # warm
        call()
    times, answers = [], []
    began = time.perf_counter()
    for call in calls:
        start = time.perf_counter()
        answers.append(call())
        times.append(time.perf_counter() - start)
    return times, answers, len(calls) / (time.perf_counter() - began)


def ms(times: list[float], q: float) -> float:
    return round(float(np.percentile(times, q)) * 1000, 2)


def copy_rate(dsn: str, corpus: Corpus, table: str, stop: int) -> float:
    """Rows/s of a raw binary COPY of the first ``stop`` documents into a bare table."""
    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(
            f"CREATE TABLE {table} (id bigint, text text, metadata jsonb, embedding vector({DIM}))"
        )
        conn.commit()
        began = time.perf_counter()
        with conn.cursor().copy(f"COPY {table} FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "jsonb", "vector"])
            for i in range(stop):
                copy.write_row(
                    (i, corpus.text(i), orjson.dumps({"b": i % 100}).decode(), corpus.vectors[i])
                )
        conn.commit()
        return stop / (time.perf_counter() - began)


def rest_ingest_rate(url: str, corpus: Corpus, stop: int) -> float:
    name = f"{COLLECTION}_rest"
    with httpx.Client(base_url=url, timeout=300) as http:
        http.post("/v1/collections", json={"name": name, "dim": DIM}).raise_for_status()
        began = time.perf_counter()
        for start in range(0, stop, 1000):
            documents = [{**d, "embedding": d["embedding"].tolist()}
                         for d in corpus.documents(start, min(start + 1000, stop))]  # fmt: skip
            body = orjson.dumps({"documents": documents})
            http.post(f"/v1/collections/{name}/documents", content=body,
                      headers={"content-type": "application/json"}).raise_for_status()  # fmt: skip
        rate = stop / (time.perf_counter() - began)
        http.delete(f"/v1/collections/{name}").raise_for_status()
    return rate


def peak_rss(pid: int) -> int:
    """The largest peak resident set (Linux's VmHWM) among the process and its children:
    `unidb serve` answers with worker processes, and a build runs in one of them."""
    process = psutil.Process(pid)
    return max(_vm(p.pid, "VmHWM") for p in [process, *process.children(recursive=True)])


def rss(pid: int) -> int:
    process = psutil.Process(pid)
    return max(_vm(p.pid, "VmRSS") for p in [process, *process.children(recursive=True)])


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def wait_job(http: httpx.Client, job_id: int) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            assert job["status"] == "done", job
            return job
        time.sleep(0.5)


def rest_query(
    http: httpx.Client,
    vector: np.ndarray,
    where: dict[str, Any] | None = None,
    ef: int | None = None,
) -> Callable[[], list[int]]:
    body = orjson.dumps({"vector": vector.tolist(), "k": 10, "mode": "vector",
                         **({"filter": where} if where else {}),
                         **({"ef_search": ef} if ef else {})})  # fmt: skip

    def call() -> list[int]:
        answer = http.post(f"/v1/collections/{COLLECTION}/query", content=body,
                           headers={"content-type": "application/json"})  # fmt: skip
        answer.raise_for_status()
        return [int(hit["id"][1:]) for hit in answer.json()["hits"]]

    return call


def served_level(http: httpx.Client, probe: np.ndarray) -> tuple[int, str]:
    """(changed documents a strong query scored from Postgres, what served it)."""
    answer = http.post(f"/v1/collections/{COLLECTION}/query", json={
        "vector": probe.tolist(), "k": 10, "mode": "vector", "explain": True}).json()  # fmt: skip
    return int(answer["explain"]["changed_since_index"] or 0), str(answer["vector_index"])


def settled(dsn: str, limit_s: float = 300.0) -> float:
    """Wait until no autovacuum worker has run for two seconds (after a bulk write one
    vacuums and analyses the tables for a while, on the same two cores the queries use);
    the seconds waited."""
    began = quiet_since = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.perf_counter() - began < limit_s:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity"
                               " WHERE backend_type = 'autovacuum worker'").fetchone()  # fmt: skip
            now = time.perf_counter()
            if row is not None and int(row[0]) > 0:
                quiet_since = now
            elif now - quiet_since >= 2.0:
                break
            time.sleep(0.25)
    return round(time.perf_counter() - began, 1)


def stage_profile(http: httpx.Client, queries: np.ndarray, ef: int | None) -> dict[str, float]:
    """Median milliseconds per query stage, from the server's own explain."""
    stages: dict[str, list[float]] = {}
    for query in queries[:50]:
        answer = http.post(f"/v1/collections/{COLLECTION}/query", json={
            "vector": query.tolist(), "k": 10, "mode": "vector", "explain": True,
            **({"ef_search": ef} if ef else {})}).json()  # fmt: skip
        for stage, took in answer["explain"]["stages_ms"].items():
            stages.setdefault(stage, []).append(took)
    return {stage: round(float(np.median(took)), 2) for stage, took in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rest-docs", type=int, default=20_000)
    args = parser.parse_args()
    docs, rest_docs = args.docs, min(args.rest_docs, args.docs)

    began = time.perf_counter()
    corpus = Corpus(docs)
    queries = corpus.sample(args.queries, seed=10**6)
    raw_bytes = docs * DIM * 4
    # both processes report their floors to the outbox every 2 s, so a prune sees them soon
    settings = {"ann_rebuild_fraction": 0.15, "ann_auto_build_rows": 0,
                "outbox_prune_interval_s": 2}  # fmt: skip
    env = {**os.environ, "UNIDB_ANN_REBUILD_FRACTION": "0.15", "UNIDB_ANN_AUTO_BUILD_ROWS": "0",
           "UNIDB_OUTBOX_PRUNE_INTERVAL_S": "2"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="unidb-scale-") as tmp, \
            unidb.Client.embedded(Path(tmp), **settings) as client:  # fmt: skip
        engine: Any = client.backend
        dsn = engine.admin_dsn

        # -- ingest ------------------------------------------------------------------------
        copy_rows_s = copy_rate(dsn, corpus, "scale_raw", docs)
        client.create_collection(COLLECTION, dim=DIM)
        start = time.perf_counter()
        client.ingest(COLLECTION, corpus.documents(0, docs), batch_size=2000)
        embedded_rows_s = docs / (time.perf_counter() - start)
        emit({"figure": "ingest_embedded", "docs": docs, "unidb_rows_s": round(embedded_rows_s),
              "copy_rows_s": round(copy_rows_s), "ratio": round(embedded_rows_s / copy_rows_s, 3),
              "target": 0.6})  # fmt: skip

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "unidb.service.cli", "--log-level", "warning", "serve",
             "--port", str(port), "--data-dir", tmp], env=env,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url)
            rest_rows_s = rest_ingest_rate(url, corpus, rest_docs)
            copy_small_s = copy_rate(dsn, corpus, "scale_raw_small", rest_docs)
            emit({"figure": "ingest_rest_json", "docs": rest_docs, "batch": 1000,
                  "unidb_rows_s": round(rest_rows_s), "copy_rows_s": round(copy_small_s),
                  "ratio": round(rest_rows_s / copy_small_s, 3), "target": 0.3})  # fmt: skip

            with httpx.Client(base_url=url, timeout=3600) as http:
                # -- builds ----------------------------------------------------------------
                before_rss = rss(server.pid)
                job = http.post(f"/v1/collections/{COLLECTION}/index", json={
                    "kind": "hnsw", "params": {"m": 16, "ef_construction": 64}}).json()  # fmt: skip
                faiss_s = wait_job(http, job["id"])["stats"]["seconds"]
                server_peak = peak_rss(server.pid)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("SET maintenance_work_mem = '4GB'")
                    conn.execute("SET max_parallel_maintenance_workers = 2")
                    start = time.perf_counter()
                    conn.execute("CREATE INDEX scale_raw_hnsw ON scale_raw USING hnsw"
                                 " (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)")  # fmt: skip
                    pgvector_s = time.perf_counter() - start
                truth = exact_top10(corpus.vectors, queries, None)
                # -- queries ---------------------------------------------------------------
                settle_s = settled(dsn)
                for unidb_ef in EF_SEARCH_TRIED:  # the smallest efSearch reaching 0.95
                    rest_times, rest_found, rest_qps = timed(
                        [rest_query(http, q, ef=unidb_ef) for q in queries]
                    )
                    if recall(rest_found, truth) >= 0.95:
                        break
                with psycopg.connect(dsn) as conn:
                    register_vector(conn)
                    for ef in EF_SEARCH_TRIED:
                        conn.execute(f"SET hnsw.ef_search = {ef}")

                        def pgvector(q: np.ndarray, conn: Any = conn) -> Callable[[], list[int]]:
                            return lambda: [row[0] for row in conn.execute(
                                "SELECT id FROM scale_raw ORDER BY embedding <=> %s LIMIT 10", (q,),
                                prepare=True).fetchall()]  # fmt: skip

                        pg_times, pg_found, pg_qps = timed([pgvector(q) for q in queries])
                        if recall(pg_found, truth) >= 0.95:
                            break
                faiss_recall = recall(rest_found, truth)
                emit({"figure": "build", "docs": docs, "m": 16, "ef_construction": 64,
                      "faiss_s": faiss_s, "pgvector_s": round(pgvector_s, 1),
                      "speedup": round(pgvector_s / faiss_s, 2), "target": 3.0,
                      "faiss_recall10": faiss_recall, "faiss_ef_search": unidb_ef,
                      "pgvector_recall10": recall(pg_found, truth),
                      "pgvector_ef_search": ef, "pgvector_workers": 2})  # fmt: skip
                emit({"figure": "build_memory", "server_peak_rss_mb": round(server_peak / 2**20),
                      "server_rss_before_build_mb": round(before_rss / 2**20),
                      "raw_vector_mb": round(raw_bytes / 2**20),
                      "peak_vs_raw": round(server_peak / raw_bytes, 2), "target": 2.5})  # fmt: skip
                emit({"figure": "vector_query", "surface": "unidb REST vs pgvector SQL (psycopg)",
                      "unidb_p50_ms": ms(rest_times, 50), "unidb_p99_ms": ms(rest_times, 99),
                      "unidb_qps": round(rest_qps, 1), "unidb_recall10": faiss_recall,
                      "unidb_ef_search": unidb_ef,
                      "pgvector_p50_ms": ms(pg_times, 50), "pgvector_p99_ms": ms(pg_times, 99),
                      "pgvector_qps": round(pg_qps, 1), "pgvector_recall10": recall(pg_found, truth),
                      "pgvector_ef_search": ef, "qps_ratio": round(rest_qps / pg_qps, 2),
                      "unidb_stages_ms": stage_profile(http, queries, unidb_ef),
                      "autovacuum_wait_s": settle_s})  # fmt: skip

                # -- filters ---------------------------------------------------------------
                buckets = np.arange(docs) % 100
                for label, where in SELECTIVITY.items():
                    admitted = buckets == 0 if label == "1%" else buckets < int(label[:-1])
                    times, found, _ = timed([rest_query(http, q, where, unidb_ef) for q in queries])
                    emit({"figure": "filtered_query", "selectivity": label, "ef_search": unidb_ef,
                          "unidb_p50_ms": ms(times, 50), "unidb_p99_ms": ms(times, 99),
                          "unidb_recall10": recall(found, exact_top10(corpus.vectors, queries, admitted))})  # fmt: skip

                # -- churn: 10 % of the documents get new vectors ----------------------------
                rng = np.random.default_rng(5)
                changed = np.sort(rng.choice(docs, size=docs // 10, replace=False))
                fresh = corpus.sample(len(changed), seed=10**6 + 1)
                corpus.vectors[changed] = fresh
                start = time.perf_counter()
                for at in range(0, len(changed), 1000):
                    batch = changed[at : at + 1000]
                    client.upsert(COLLECTION, [{"id": f"d{i}", "text": corpus.text(int(i)),
                                                "metadata": {"b": int(i) % 100},
                                                "embedding": corpus.vectors[i]} for i in batch])  # fmt: skip
                written_s = time.perf_counter() - start
                start = time.perf_counter()
                while True:  # until the server's follower has applied them all
                    behind, served_by = served_level(http, queries[0])
                    if behind == 0 and served_by == "faiss":
                        break
                    time.sleep(0.5)
                level_s = time.perf_counter() - start
                status = http.get(f"/v1/collections/{COLLECTION}").json()["ann"]
                truth = exact_top10(corpus.vectors, queries, None)
                settle_s = settled(dsn)
                times, found, qps = timed([rest_query(http, q, ef=unidb_ef) for q in queries])
                emit({"figure": "vector_query_after_churn", "ef_search": unidb_ef, "updated": len(changed),
                      "upsert_s": round(written_s, 1), "follower_caught_up_s": round(level_s, 1),
                      "live_vectors": status["live_vectors"], "snapshot_job": status["job_id"],
                      "unidb_p50_ms": ms(times, 50), "unidb_p99_ms": ms(times, 99),
                      "unidb_qps": round(qps, 1), "unidb_recall10": recall(found, truth),
                      "no_churn_p50_ms": ms(rest_times, 50),
                      "p50_vs_no_churn": round(ms(times, 50) / ms(rest_times, 50), 2),
                      "target": 1.5, "unidb_stages_ms": stage_profile(http, queries, unidb_ef),
                      "autovacuum_wait_s": settle_s})  # fmt: skip

                # -- the outbox ------------------------------------------------------------
                def outbox_rows() -> int:
                    with psycopg.connect(dsn) as conn:
                        return int(conn.execute("SELECT count(*) FROM unidb.changes").fetchone()[0])  # type: ignore[index]

                before = outbox_rows()
                time.sleep(5)  # both processes report their floors
                engine.retention.run_once()
                after = outbox_rows()
                job = http.post(f"/v1/collections/{COLLECTION}/index", json={
                    "kind": "hnsw", "params": {"m": 16, "ef_construction": 64}}).json()  # fmt: skip
                rebuilt_s = wait_job(http, job["id"])["stats"]["seconds"]
                while served_level(http, queries[0]) != (0, "faiss"):
                    time.sleep(0.5)
                time.sleep(5)  # both processes report their new floors
                engine.retention.run_once()
                emit({"figure": "outbox", "rows_before_prune": before, "rows_after_prune": after,
                      "rows_after_rebuild_and_prune": outbox_rows(), "rebuild_s": rebuilt_s,
                      "note": "after the first prune the snapshot still holds the churn's rows: "
                              "a process loading it afresh needs them"})  # fmt: skip
        finally:
            server.terminate()
            server.wait(60)
    emit({"figure": "wall", "docs": docs, "seconds": round(time.perf_counter() - began)})


if __name__ == "__main__":
    main()
