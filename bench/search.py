"""Search figures: BM25 quality beside bm25s, query latency per mode over REST, freshness.

    python bench/search.py [--docs 100000] [--queries 300] [--beir ../shared/data/scifact]

Prints one JSON line per figure, each with its peer from the same run:
- bm25_quality: nDCG@10 of unidb's BM25 and of bm25s (Snowball-stemmed, English stop
  words) on the BEIR folder's test queries;
- latency: p50/p99 ms and QPS per mode on SciFact plus filler documents, in process (the
  engine, beside bm25s over the same texts and the same HNSW query sent with psycopg) and
  over REST (the server, beside the same two peers behind a bare FastAPI app,
  bench/peer_server.py); vector mode also reports recall@10 against exact search, and in
  process the peer's p50 for the same statement reading each hit's id, text and metadata
  too (what unidb answers);
- latency_stages: where the server's REST query time went, stage by stage (/metrics).
  Vectors: MiniLM embeddings of the first 1,000 abstracts, the rest mixtures of those
  (see realistic_vectors); queries are the test claims embedded with MiniLM;
- freshness: commit to visible in eventual mode, beside strong mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bm25s
import httpx
import numpy as np
import psycopg
import pytrec_eval
import Stemmer
from pgvector.psycopg import register_vector
from prometheus_client.parser import text_string_to_metric_families

import unidb
from unidb.indexing.embedders import MiniLM
from unidb.models import QueryRequest
from unidb.service.cli.evaluation import read_qrels, read_queries

sys.path.insert(0, str(Path(__file__).parent))
from ingest import free_port, wait_healthy  # noqa: E402

DIM = 384


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def ndcg10(qrels: dict[str, dict[str, int]], run: dict[str, list[str]]) -> float:
    scored = {
        qid: {doc: float(len(docs) - i) for i, doc in enumerate(docs)} for qid, docs in run.items()
    }
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(scored)
    return sum(per_query[q]["ndcg_cut_10"] for q in qrels if q in per_query) / len(qrels)


def load_corpus(folder: Path) -> list[dict[str, Any]]:
    with (folder / "corpus.jsonl").open() as stream:
        return [json.loads(line) for line in stream if line.strip()]


def filler(corpus: list[dict[str, Any]], n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    vocabulary = np.array(sorted({w for d in corpus[:2000] for w in d["text"].split()}))
    return [
        {"_id": f"filler-{i}", "title": "", "text": " ".join(rng.choice(vocabulary, size=60))}
        for i in range(n)
    ]


def realistic_vectors(texts: list[str], n: int, seed: int = 1) -> np.ndarray:
    """MiniLM embeddings of ``texts``, then mixtures of two of them plus a little noise up to
    ``n``: vectors that cluster like real embeddings do (uniform random vectors are the
    worst case for any graph index and say little about real use)."""
    return with_mixtures(MiniLM().embed_documents(texts), n, seed)


def with_mixtures(base: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """``base`` topped up to ``n`` vectors with mixtures of two of them plus a little noise."""
    rng = np.random.default_rng(seed)
    extra = n - len(base)
    if extra <= 0:
        return base[:n]
    first, second = rng.integers(0, len(base), size=(2, extra))
    weight = rng.uniform(0.5, 1.0, size=(extra, 1)).astype(np.float32)
    mixed = weight * base[first] + (1 - weight) * base[second]
    mixed += rng.normal(scale=0.02, size=mixed.shape).astype(np.float32)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return np.concatenate([base, mixed]).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument(
        "--beir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/scifact"
    )
    parser.add_argument("--freshness-trials", type=int, default=50)
    parser.add_argument("--embedded", type=int, default=1000, help="abstracts embedded with MiniLM")
    args = parser.parse_args()

    corpus = load_corpus(args.beir)
    queries = read_queries(args.beir / "queries.jsonl")
    qrels = read_qrels(args.beir / "qrels-test.tsv")
    test_ids = list(qrels)[: args.queries]

    # --- BM25 quality: bm25s beside unidb, same text (title + abstract) ---------------
    stemmer = Stemmer.Stemmer("english")
    bodies = [f"{d['title']} {d['text']}".strip() for d in corpus]
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(bodies, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    query_tokens = bm25s.tokenize(
        [queries[q] for q in qrels], stopwords="en", stemmer=stemmer, show_progress=False
    )
    found, _ = retriever.retrieve(query_tokens, k=10, show_progress=False)
    bm25s_run = {
        qid: [corpus[i]["_id"] for i in row] for qid, row in zip(qrels, found, strict=True)
    }

    everything = corpus + filler(corpus, max(0, args.docs - len(corpus)))
    vectors = realistic_vectors(bodies[: args.embedded], len(everything))
    documents = [
        {"id": d["_id"], "text": d["text"], "metadata": {"title": d["title"]} if d["title"] else {},
         "embedding": vectors[i]}
        for i, d in enumerate(everything)
    ]  # fmt: skip
    model = MiniLM()
    query_vectors = {qid: model.embed_query(queries[qid]) for qid in test_ids}

    with tempfile.TemporaryDirectory(prefix="unidb-search-") as tmp:
        with unidb.Client.embedded(Path(tmp)) as embedded:
            engine: Any = embedded.backend
            embedded.create_collection("bench", dim=DIM)
            embedded.ingest("bench", documents[: len(corpus)])
            engine.text_indexes.refresh(engine_collection_id(engine, "bench"))
            unidb_run = {
                qid: [
                    h.id for h in embedded.query("bench", text=queries[qid], k=10, mode="bm25").hits
                ]
                for qid in qrels
            }
            print(json.dumps({
                "bench": "bm25_quality", "dataset": args.beir.name, "queries": len(qrels),
                "unidb_ndcg10": round(ndcg10(qrels, unidb_run), 4),
                "bm25s_ndcg10": round(ndcg10(qrels, bm25s_run), 4),
            }))  # fmt: skip

            embedded.ingest("bench", documents[len(corpus) :])
            collection_id = engine_collection_id(engine, "bench")
            engine.text_indexes.refresh(collection_id)
            # rebuild the BM25 index from the table: the indexing rate, free of ingest timing
            engine.text_indexes.drop(collection_id)
            began = time.perf_counter()
            engine.text_indexes.get(collection_id)
            unidb_docs_s = len(documents) / (time.perf_counter() - began)
            filler_bodies = [d["text"] for d in documents]
            began = time.perf_counter()
            peer = bm25s.BM25()
            peer.index(
                bm25s.tokenize(filler_bodies, stopwords="en", stemmer=stemmer, show_progress=False),
                show_progress=False,
            )
            bm25s_docs_s = len(filler_bodies) / (time.perf_counter() - began)
            print(json.dumps({
                "bench": "bm25_indexing", "docs": len(filler_bodies),
                "unidb_docs_s": round(unidb_docs_s), "bm25s_docs_s": round(bm25s_docs_s),
                "note": "unidb: rows streamed from Postgres into tantivy; bm25s: in memory",
            }))  # fmt: skip
            began = time.perf_counter()
            engine.build_vector_index("bench")
            print(json.dumps({
                "bench": "hnsw_build", "docs": len(documents), "dim": DIM,
                "pgvector_hnsw_s": round(time.perf_counter() - began, 1),
            }))  # fmt: skip

            corpus_file = Path(tmp) / "peer-corpus.jsonl"
            with corpus_file.open("w") as stream:
                for d in documents:
                    stream.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
            peer_port = free_port()
            peer_server = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("peer_server.py")), "--port",
                 str(peer_port), "--dsn", engine.admin_dsn, "--collection-id", str(collection_id),
                 "--dim", str(DIM), "--corpus", str(corpus_file)],
            )  # fmt: skip
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "unidb.service.cli", "--log-level", "warning", "serve",
                 "--port", str(port), "--data-dir", tmp],
                env=os.environ.copy(),
            )  # fmt: skip
            try:
                url = f"http://127.0.0.1:{port}"
                peer_url = f"http://127.0.0.1:{peer_port}"
                wait_healthy(url)
                wait_healthy(peer_url)
                with (
                    httpx.Client(base_url=url, timeout=60) as http,
                    httpx.Client(base_url=peer_url, timeout=60) as peer_http,
                ):
                    exact = exact_top10(documents, query_vectors)
                    latency(http, peer_http, embedded, engine.admin_dsn, collection_id, peer,
                            stemmer, queries, test_ids, query_vectors, len(documents), exact)  # fmt: skip
                    freshness(http, args.freshness_trials)
            finally:
                server.terminate()
                peer_server.terminate()
                server.wait(60)
                peer_server.wait(60)


def engine_collection_id(engine: Any, name: str) -> int:
    with engine.transaction() as conn:
        row = conn.execute("SELECT id FROM unidb.collections WHERE name = %s", (name,)).fetchone()
    return int(row[0])


def timed(calls: list[Any]) -> tuple[list[float], float]:
    calls[0]()  # warm
    times = []
    started = time.perf_counter()
    for call in calls:
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return times, len(calls) / (time.perf_counter() - started)


def exact_top10(
    documents: list[dict[str, Any]], vectors: dict[str, np.ndarray]
) -> dict[str, list[str]]:
    """Brute-force cosine top 10 per query: the truth the HNSW answers are measured against."""
    matrix = np.stack([d["embedding"] for d in documents])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    ids = [d["id"] for d in documents]
    truth = {}
    for qid, vector in vectors.items():
        scores = matrix @ (vector / np.linalg.norm(vector))
        top = np.argpartition(-scores, 10)[:10]
        truth[qid] = [ids[i] for i in top[np.argsort(-scores[top])]]
    return truth


def recall_at_10(
    answers: list[list[str]], test_ids: list[str], vectors: Any, exact: dict[str, list[str]]
) -> float:
    hits = [
        len(set(found[:10]) & set(exact[qid])) / 10
        for found, qid in zip(answers, test_ids, strict=True)
    ]
    return sum(hits) / len(hits)


def stage_means(http: httpx.Client) -> dict[str, tuple[float, float]]:
    """Each query stage's (seconds summed, count) so far, from the server's /metrics."""
    totals: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name != "unidb_query_stage_seconds":
            continue
        for sample in family.samples:
            stage = totals.setdefault(sample.labels["stage"], [0.0, 0.0])
            if sample.name.endswith("_sum"):
                stage[0] = sample.value
            elif sample.name.endswith("_count"):
                stage[1] = sample.value
    return {name: (value[0], value[1]) for name, value in totals.items()}


def latency(
    http: httpx.Client, peer_http: httpx.Client, embedded: Any, dsn: str, collection_id: int,
    bm25_peer: Any, stemmer: Any, queries: dict[str, str], test_ids: list[str],
    vectors: dict[str, np.ndarray], docs: int, exact: dict[str, list[str]],
) -> None:  # fmt: skip
    """Per mode: unidb in process beside its peers in process (bm25s, pgvector over
    psycopg), then unidb over REST beside the same peers behind a bare FastAPI app
    (bench/peer_server.py), then where unidb's REST time went, stage by stage."""
    bodies: dict[str, list[dict[str, Any]]] = {}
    for mode in ("bm25", "vector", "hybrid"):
        bodies[mode] = []
        for q in test_ids:
            body: dict[str, Any] = {"k": 10, "mode": mode}
            if mode != "vector":
                body["text"] = queries[q]
            if mode != "bm25":
                body["vector"] = vectors[q].tolist()
            bodies[mode].append(body)

    def line(mode: str, via: str, times: list[float], qps: float, peer: str | None,
             peer_run: tuple[list[float], float] | None, **extra: Any) -> None:  # fmt: skip
        figures: dict[str, Any] = {
            "bench": "latency", "mode": mode, "docs": docs, "queries": len(test_ids), "via": via,
            "p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2),
            "qps": round(qps, 1), **extra,
        }  # fmt: skip
        if peer is not None and peer_run is not None:
            peer_times, peer_qps = peer_run
            figures.update({"peer": peer, "peer_p50_ms": round(percentile(peer_times, 50), 2),
                            "peer_p99_ms": round(percentile(peer_times, 99), 2),
                            "peer_qps": round(peer_qps, 1)})  # fmt: skip
        print(json.dumps(figures))

    # --- in process: unidb's engine beside bm25s and pgvector over psycopg ---------------
    peers: dict[str, tuple[str, tuple[list[float], float]]] = {}
    with psycopg.connect(dsn) as conn:
        register_vector(conn)
        conn.execute("SET hnsw.ef_search = 100")

        def pgvector(vector: np.ndarray) -> Any:
            return lambda: conn.execute(
                f"SELECT document_key FROM unidb.chunks c WHERE c.collection_id = {collection_id}"
                f" ORDER BY (c.embedding::vector({DIM})) <=> %s::vector({DIM}) LIMIT 10",
                (vector,),
            ).fetchall()

        def pgvector_with_rows(vector: np.ndarray) -> Any:
            # what unidb answers: each hit's id, text, metadata and distance
            return lambda: conn.execute(
                "SELECT d.id, d.text, d.metadata, n.distance FROM ("
                f"SELECT document_key, (c.embedding::vector({DIM})) <=> %s::vector({DIM})"
                f" AS distance FROM unidb.chunks c WHERE c.collection_id = {collection_id}"
                f" ORDER BY distance LIMIT 10) n JOIN unidb.documents d"
                f" ON d.collection_id = {collection_id} AND d.key = n.document_key"
                " ORDER BY n.distance",
                (vector,),
            ).fetchall()

        peers["vector"] = ("pgvector_sql", timed([pgvector(vectors[q]) for q in test_ids]))
        with_rows, _ = timed([pgvector_with_rows(vectors[q]) for q in test_ids])
    peers["bm25"] = ("bm25s", timed([
        (lambda q=q: bm25_peer.retrieve(bm25s.tokenize([queries[q]], stopwords="en", stemmer=stemmer,
                                                        show_progress=False), k=10, show_progress=False))
        for q in test_ids
    ]))  # fmt: skip
    for mode in ("bm25", "vector", "hybrid"):
        requests = [QueryRequest.model_validate(body) for body in bodies[mode]]
        answers: list[list[str]] = []

        def direct(request: QueryRequest, into: list[list[str]] = answers) -> Any:
            return lambda: into.append(
                [h.id for h in embedded.backend.query("bench", request).hits]
            )

        times, qps = timed([direct(r) for r in requests])
        extra = {}
        if mode == "vector":
            extra["recall_at_10_vs_exact"] = round(
                recall_at_10(answers[1:], test_ids, vectors, exact), 4
            )
            extra["peer_with_rows_p50_ms"] = round(percentile(with_rows, 50), 2)
        peer, run = peers.get(mode, (None, None))
        line(mode, "in_process", times, qps, peer, run, **extra)

    # --- over REST: unidb's server beside the same peers behind a bare FastAPI app -------
    for mode in ("bm25", "vector", "hybrid"):
        answers = []

        def rest(body: dict[str, Any], into: list[list[str]] = answers) -> Any:
            def call() -> None:
                response = http.post("/v1/collections/bench/query", json=body)
                assert response.status_code == 200, response.text
                into.append([hit["id"] for hit in response.json()["hits"]])

            return call

        def peer_rest(path: str, body: dict[str, Any]) -> Any:
            def call() -> None:
                response = peer_http.post(path, json=body)
                assert response.status_code == 200, response.text

            return call

        peer_run = None
        if mode in ("bm25", "vector"):
            peer_run = timed([peer_rest(f"/{mode}", body) for body in bodies[mode]])
        before = stage_means(http)
        times, qps = timed([rest(body) for body in bodies[mode]])
        after = stage_means(http)
        extra = {}
        if mode == "vector":
            extra["recall_at_10_vs_exact"] = round(
                recall_at_10(answers[1:], test_ids, vectors, exact), 4
            )
        line(mode, "rest", times, qps, {"bm25": "bm25s_fastapi", "vector": "pgvector_fastapi"}.get(mode),
             peer_run, **extra)  # fmt: skip
        stages = {
            stage: round((total - before.get(stage, (0.0, 0.0))[0])
                         / max(1.0, count - before.get(stage, (0.0, 0.0))[1]) * 1000, 3)
            for stage, (total, count) in after.items()
            if count > before.get(stage, (0.0, 0.0))[1]
        }  # fmt: skip
        print(json.dumps({"bench": "latency_stages", "mode": mode, "via": "rest",
                          "mean_ms": stages}))  # fmt: skip


def freshness(http: httpx.Client, trials: int) -> None:
    results: dict[str, list[float]] = {"eventual": [], "strong": []}
    for consistency in ("strong", "eventual"):
        for trial in range(trials):
            word = f"fresh{consistency}{trial}x{time.monotonic_ns()}"
            body = {"documents": [{"id": word, "text": word, "embedding": [1.0] * DIM}]}
            response = http.post("/v1/collections/bench/documents", json=body)
            assert response.status_code == 200
            committed = time.perf_counter()
            while True:
                hits = http.post("/v1/collections/bench/query",
                                 json={"text": word, "mode": "bm25", "k": 1, "consistency": consistency}).json()["hits"]  # fmt: skip
                if hits and hits[0]["id"] == word:
                    break
                time.sleep(0.005)
            results[consistency].append((time.perf_counter() - committed) * 1000)
    print(json.dumps({
        "bench": "freshness", "trials": trials,
        "eventual_p50_ms": round(percentile(results["eventual"], 50), 1),
        "eventual_p99_ms": round(percentile(results["eventual"], 99), 1),
        "strong_p50_ms": round(percentile(results["strong"], 50), 1),
        "strong_p99_ms": round(percentile(results["strong"], 99), 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
