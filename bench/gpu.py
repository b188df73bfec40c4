"""The GPU build path, ready to run on a machine with an NVIDIA GPU and `unidb[gpu]`.

    python bench/gpu.py [--docs 1000000] [--queries 200]

Builds, through unidb's own builder (`unidb.indexing.faiss_index.Builder`), on the same
embedding-shaped vectors as bench/scale.py:
- CAGRA on the GPU, converted to `IndexHNSWCagra` and keyed by document keys, served on the
  CPU;
- IVF-Flat trained on the GPU, served on the CPU;
- beside both, HNSW on the CPU (M=16, efConstruction=64), the peer, in the same run.
Prints one JSON line per index: build seconds, the speed-up over the CPU HNSW build, and
recall@10 against exact search (CPU serving, k=10), plus one line naming the machine.
Exits 2 with a message where FAISS sees no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from scale import Corpus, exact_top10, recall  # noqa: E402

from unidb.indexing.faiss_index import Builder, gpus, plan, search  # noqa: E402


def emit(figure: dict[str, Any]) -> None:
    print(json.dumps({"bench": "gpu", **figure}), flush=True)


def build(
    kind: str, device: str, vectors: np.ndarray, params: dict[str, Any]
) -> tuple[Any, float, dict[str, Any]]:
    chosen = plan(kind, device, len(vectors), params)
    builder = Builder(vectors.shape[1], "cosine", chosen, len(vectors))
    keys = np.arange(len(vectors), dtype=np.int64)
    began = time.perf_counter()
    for start in range(0, len(vectors), 100_000):
        builder.add(keys[start : start + 100_000], vectors[start : start + 100_000])
    index = builder.finish()
    return index, time.perf_counter() - began, builder.search_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    if gpus() == 0:
        print("bench/gpu.py: FAISS sees no GPU here (install unidb[gpu] on a machine with an "
              "NVIDIA GPU)", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    corpus = Corpus(args.docs)
    queries = corpus.sample(args.queries, seed=10**6)
    truth = exact_top10(corpus.vectors, queries, None)
    emit({"figure": "machine", "gpus": gpus(), "cpus": os.cpu_count(), "docs": args.docs})

    _, cpu_s, _ = build("hnsw", "cpu", corpus.vectors, {"m": 16, "ef_construction": 64})
    emit({"figure": "cpu_hnsw", "build_s": round(cpu_s, 1)})
    for kind, params in (("cagra", {"graph_degree": 32}), ("ivf", {})):
        index, seconds, search_params = build(kind, "gpu", corpus.vectors, params)
        found = [
            [key for key, _ in search(index, q, 10, "cosine", search_params=search_params)]
            for q in queries
        ]
        emit({"figure": f"gpu_{kind}", "build_s": round(seconds, 1),
              "cpu_hnsw_build_s": round(cpu_s, 1), "speedup": round(cpu_s / seconds, 2),
              "served_on": "cpu", "recall10": recall(found, truth),
              "search": search_params})  # fmt: skip


if __name__ == "__main__":
    main()
