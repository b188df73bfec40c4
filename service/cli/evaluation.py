"""`unidb eval`: retrieval quality on a BEIR folder, measured with trec_eval (pytrec-eval)."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytrec_eval
from tqdm import tqdm

from unidb import Backend
from unidb.errors import InvalidInput, NotFound
from unidb.models import (
    DEFAULT_ALPHA,
    DEFAULT_FUSION,
    ChunkerSpec,
    CollectionCreate,
    EmbedderSpec,
    Fusion,
    QueryDefaults,
    QueryMode,
    QueryRequest,
)
from unidb.service.ingest import ingest_file

DEPTH = 100
_MEASURES = {"ndcg_cut.10", "recall.100"}


@dataclass(frozen=True, slots=True)
class ModeResult:
    mode: str
    fusion: Fusion | None
    alpha: float | None
    queries: int
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    qps: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "fusion": self.fusion,
            "alpha": self.alpha,
            "queries": self.queries,
            "ndcg@10": round(self.ndcg_at_10, 4),
            "recall@100": round(self.recall_at_100, 4),
            "mrr@10": round(self.mrr_at_10, 4),
            "qps": round(self.qps, 1),
        }


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open() as stream:
        for row in csv.DictReader(stream, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    return qrels


def read_queries(path: Path) -> dict[str, str]:
    with path.open() as stream:
        return {record["_id"]: record["text"] for record in map(json.loads, stream)}


def load(
    backend: Backend,
    folder: Path,
    *,
    collection: str,
    reuse: bool,
    batch_size: int = 256,
    chunker: ChunkerSpec | None = None,
) -> None:
    """A fresh collection holding the folder's corpus, embedded with MiniLM (each chunk,
    with a ``chunker``)."""
    corpus = folder / "corpus.jsonl"
    lines = sum(1 for line in corpus.open("rb") if line.strip())
    try:
        existing = backend.get_collection(collection)
        if reuse and existing.documents == lines and existing.chunker == chunker:
            return
        backend.delete_collection(collection)
    except NotFound:
        pass
    backend.create_collection(
        CollectionCreate(
            name=collection, dim=384, embedder=EmbedderSpec(kind="minilm"), chunker=chunker
        )
    )
    ingest_file(backend, corpus, collection=collection, batch_size=batch_size)


def wait_for_indexes(backend: Backend, collection: str, *, timeout_s: float = 300.0) -> None:
    """Block until the collection's BM25 index holds every committed change."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = backend.get_collection(collection).bm25
        if status is not None and status.lag == 0:
            return
        if time.monotonic() > deadline:
            raise InvalidInput(
                f"the BM25 index still lags after {timeout_s:.0f} s", field="collection"
            )
        time.sleep(0.1)


def run_mode(
    backend: Backend,
    collection: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    mode: QueryMode,
    fusion: Fusion,
    alpha: float,
) -> ModeResult:
    """Every judged query through one mode; the metrics averaged over the judged queries."""
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise InvalidInput(
            f"{len(missing)} judged queries have no text, e.g. {missing[0]}", field="qrels"
        )
    run: dict[str, dict[str, float]] = {}
    # one untimed query first: loading the embedding model is not query time
    first = next(iter(qrels))
    backend.query(
        collection,
        QueryRequest(
            text=queries[first],
            k=DEPTH,
            mode=mode,
            fusion=fusion,
            alpha=alpha,
            rerank=None,
            passages=0,
        ),
    )
    started = time.perf_counter()
    for qid in tqdm(qrels, desc=f"eval {mode}", unit="q", leave=False):
        request = QueryRequest(
            text=queries[qid],
            k=DEPTH,
            mode=mode,
            fusion=fusion,
            alpha=alpha,
            consistency="eventual",
            rerank=None,  # retrieval alone, not a collection's default rerank
            passages=0,  # only the ranking counts
        )
        hits = backend.query(collection, request).hits
        # rank by position: trec_eval re-sorts by score, and fused scores may tie
        run[qid] = {hit.id: float(DEPTH - rank) for rank, hit in enumerate(hits)}
    elapsed = time.perf_counter() - started
    per_query = pytrec_eval.RelevanceEvaluator(qrels, _MEASURES).evaluate(run)
    top10 = {qid: {d: s for d, s in docs.items() if s > DEPTH - 10} for qid, docs in run.items()}
    reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    n = len(qrels)

    def mean(measure: str, table: dict[str, dict[str, float]]) -> float:
        return sum(table[qid][measure] for qid in qrels if qid in table) / n

    fused = mode == "hybrid"
    return ModeResult(
        mode=mode,
        fusion=fusion if fused else None,
        alpha=alpha if fused and fusion != "rrf" else None,
        queries=n,
        ndcg_at_10=mean("ndcg_cut_10", per_query),
        recall_at_100=mean("recall_100", per_query),
        mrr_at_10=mean("recip_rank", reciprocal),
        qps=n / elapsed if elapsed else 0.0,
    )


SWEEP_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SWEEP_FUSIONS: tuple[Fusion, ...] = ("weighted", "relative", "dbsf")


def sweep(
    backend: Backend,
    folder: Path,
    *,
    alphas: tuple[float, ...] = SWEEP_ALPHAS,
    qrels_file: str = "qrels-test.tsv",
    collection: str | None = None,
    reuse: bool = False,
    chunker: ChunkerSpec | None = None,
) -> list[ModeResult]:
    """Hybrid queries over a grid: RRF once, then each score fusion at each ``alpha``
    (the corpus loaded once). Choose on train judgments, report on test."""
    name = _prepare(backend, folder, qrels_file, collection, reuse, chunker)
    queries = read_queries(folder / "queries.jsonl")
    qrels = read_qrels(folder / qrels_file)
    return run_grid(backend, name, queries, qrels, alphas=alphas)


def run_grid(
    backend: Backend,
    collection: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    alphas: tuple[float, ...] = SWEEP_ALPHAS,
) -> list[ModeResult]:
    """Hybrid queries at each setting of the grid: RRF once, then each score fusion at
    each ``alpha``."""
    grid: list[tuple[Fusion, float]] = [("rrf", DEFAULT_ALPHA)]
    grid += [(fusion, alpha) for fusion in SWEEP_FUSIONS for alpha in alphas]
    return [
        run_mode(backend, collection, queries, qrels, mode="hybrid", fusion=fusion, alpha=alpha)
        for fusion, alpha in tqdm(grid, desc="sweep", unit="setting")
    ]


def best_setting(results: list[ModeResult]) -> ModeResult:
    """The setting with the highest nDCG@10 (the first of equals, in grid order)."""
    return max(results, key=lambda r: r.ndcg_at_10)


def tune(
    backend: Backend,
    collection: str,
    *,
    queries_file: Path,
    qrels_file: Path,
    alphas: tuple[float, ...] = SWEEP_ALPHAS,
    store: bool = True,
) -> tuple[list[ModeResult], ModeResult]:
    """Sweep the grid on ``collection`` as it is, on these judgments (train ones: report on
    others), and store the best fusion and alpha as its query defaults."""
    for path in (queries_file, qrels_file):
        if not path.is_file():
            raise InvalidInput(f"no file {path}", field="qrels")
    backend.get_collection(collection)  # NotFound before any work
    queries = read_queries(queries_file)
    qrels = read_qrels(qrels_file)
    if not qrels:
        raise InvalidInput(f"{qrels_file} judges no query", field="qrels")
    wait_for_indexes(backend, collection)
    results = run_grid(backend, collection, queries, qrels, alphas=alphas)
    best = best_setting(results)
    if store:
        assert best.fusion is not None
        note = (
            f"unidb tune: nDCG@10 {best.ndcg_at_10:.4f} on {qrels_file.name} "
            f"({best.queries} queries), {time.strftime('%Y-%m-%d')}"
        )
        # a rerank stage set before is kept
        kept = backend.get_collection(collection).query_defaults
        defaults = QueryDefaults(
            fusion=best.fusion,
            alpha=best.alpha if best.alpha is not None else DEFAULT_ALPHA,
            rerank=kept.rerank if kept is not None else None,
            note=note,
        )
        backend.set_query_defaults(collection, defaults)
    return results, best


def _prepare(
    backend: Backend,
    folder: Path,
    qrels_file: str,
    collection: str | None,
    reuse: bool,
    chunker: ChunkerSpec | None = None,
) -> str:
    for name in ("corpus.jsonl", "queries.jsonl", qrels_file):
        if not (folder / name).exists():
            raise InvalidInput(f"{folder} has no {name}", field="beir_dir")
    name = collection or f"eval_{folder.name}".replace(".", "_")
    load(backend, folder, collection=name, reuse=reuse, chunker=chunker)
    # queries run on the indexes alone (eventual), so let them catch up first
    wait_for_indexes(backend, name)
    return name


def evaluate(
    backend: Backend,
    folder: Path,
    *,
    modes: list[QueryMode],
    fusion: Fusion = DEFAULT_FUSION,
    alpha: float = DEFAULT_ALPHA,
    qrels_file: str = "qrels-test.tsv",
    collection: str | None = None,
    reuse: bool = False,
    chunker: ChunkerSpec | None = None,
) -> list[ModeResult]:
    name = _prepare(backend, folder, qrels_file, collection, reuse, chunker)
    queries = read_queries(folder / "queries.jsonl")
    qrels = read_qrels(folder / qrels_file)
    return [
        run_mode(backend, name, queries, qrels, mode=mode, fusion=fusion, alpha=alpha)
        for mode in modes
    ]
