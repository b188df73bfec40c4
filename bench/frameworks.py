"""unidb through LangChain beside langchain-postgres' PGVector: SciFact nDCG@10 and latency.

    python bench/frameworks.py [--beir ../shared/data/scifact] [--queries 300]

One embedded Postgres holds both: unidb's collection and PGVector's tables, filled with
the same MiniLM vectors of SciFact's 5,183 abstracts (title and text; embedded once and
cached under ~/.cache/unidb-bench). The same test queries, embedded once beforehand so
that latency is the retrieval path alone, go through LangChain retrievers, k=10:
- unidb_hybrid: `UnidbRetriever` (BM25 + vectors fused in unidb, default fusion);
- unidb_similarity: `UnidbVectorStore.as_retriever()` (vectors only);
- pgvector_langchain: `PGVector.as_retriever()` (vectors only; PGVector has no BM25).
Both stores scan exactly at this size (no HNSW). Prints one JSON line per retriever with
nDCG@10 (pytrec_eval) and p50/p99 latency, then one line comparing them.
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
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_postgres import PGVector

import unidb
from unidb.indexing.embedders import MiniLM
from unidb.integrations.langchain import UnidbRetriever, UnidbVectorStore
from unidb.service.cli.evaluation import read_qrels, read_queries

sys.path.insert(0, str(Path(__file__).parent))
from search import load_corpus, ndcg10, percentile  # noqa: E402

CACHE = Path.home() / ".cache" / "unidb-bench"


class KnownQueries(Embeddings):
    """The queries' MiniLM vectors, computed before the clock starts."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.vectors[text] for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.vectors[text]


def corpus_vectors(corpus: list[dict[str, Any]]) -> np.ndarray:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"scifact-abstracts-minilm-{len(corpus)}.npy"
    if path.exists():
        cached: np.ndarray = np.load(path)
        return cached
    print(f"embedding {len(corpus)} abstracts with MiniLM (cached afterwards)", file=sys.stderr)
    vectors = MiniLM().embed_documents([f"{d.get('title', '')} {d['text']}" for d in corpus])
    np.save(path, vectors)
    return vectors


def run(
    retriever: BaseRetriever, queries: dict[str, str]
) -> tuple[dict[str, list[str]], list[float]]:
    ranked: dict[str, list[str]] = {}
    latencies = []
    for query_id, text in queries.items():
        began = time.perf_counter()
        documents = retriever.invoke(text)
        latencies.append(time.perf_counter() - began)
        ranked[query_id] = [d.id or "" for d in documents]
    return ranked, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--beir", type=Path, default=Path(__file__).parents[2] / "shared/data/scifact"
    )
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    corpus = load_corpus(args.beir)
    qrels = read_qrels(args.beir / "qrels-test.tsv")
    all_queries = read_queries(args.beir / "queries.jsonl")
    queries = {q: all_queries[q] for q in sorted(qrels)[: args.queries] if q in all_queries}
    qrels = {q: qrels[q] for q in queries}
    vectors = corpus_vectors(corpus)
    query_vectors = MiniLM().embed_documents(list(queries.values()))
    known = KnownQueries(
        {t: [float(x) for x in v] for t, v in zip(queries.values(), query_vectors, strict=True)}
    )

    with tempfile.TemporaryDirectory(prefix="unidb-frameworks-") as tmp:
        client = unidb.Client.embedded(Path(tmp), max_batch_documents=2000)
        try:
            client.create_collection("scifact", dim=MiniLM.dim)
            rows = [
                {
                    "id": d["_id"],
                    "text": d["text"],
                    "metadata": {"title": d.get("title", "")},
                    "embedding": [float(x) for x in vectors[i]],
                }
                for i, d in enumerate(corpus)
            ]
            for start in range(0, len(rows), 1000):
                client.upsert("scifact", rows[start : start + 1000])
            dsn = client.backend.admin_dsn  # type: ignore[attr-defined]
            pgvector = PGVector(
                known,
                connection=dsn.replace("postgresql://", "postgresql+psycopg://", 1),
                collection_name="scifact",
                embedding_length=MiniLM.dim,
            )
            pgvector.add_embeddings(
                texts=[f"{d.get('title', '')} {d['text']}" for d in corpus],
                embeddings=[[float(x) for x in v] for v in vectors],
                metadatas=[{"title": d.get("title", "")} for d in corpus],
                ids=[d["_id"] for d in corpus],
            )
            retrievers: dict[str, BaseRetriever] = {
                "unidb_hybrid": UnidbRetriever(
                    client=client, collection="scifact", embedding=known, k=10
                ),
                "unidb_similarity": UnidbVectorStore(client, "scifact", known).as_retriever(
                    search_kwargs={"k": 10}
                ),
                "pgvector_langchain": pgvector.as_retriever(search_kwargs={"k": 10}),
            }
            results = {}
            for name, retriever in retrievers.items():
                run(retriever, dict(list(queries.items())[:20]))  # warm both paths alike
                ranked, latencies = run(retriever, queries)
                results[name] = {
                    "bench": "frameworks",
                    "retriever": name,
                    "queries": len(queries),
                    "ndcg_at_10": round(ndcg10(qrels, ranked), 4),
                    "p50_ms": round(percentile(latencies, 50) * 1000, 2),
                    "p99_ms": round(percentile(latencies, 99) * 1000, 2),
                }
                print(json.dumps(results[name]))
        finally:
            client.close()
    unidb_line, peer = results["unidb_hybrid"], results["pgvector_langchain"]
    print(
        json.dumps(
            {
                "bench": "frameworks_vs_pgvector",
                "ndcg_gain": round(unidb_line["ndcg_at_10"] - peer["ndcg_at_10"], 4),
                "p50_ratio": round(unidb_line["p50_ms"] / peer["p50_ms"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
