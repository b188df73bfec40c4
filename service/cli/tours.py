"""``unidb eval`` and ``unidb quickstart``: measuring retrieval quality, and the first tour."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from unidb.models import DEFAULT_ALPHA, DEFAULT_FUSION, Fusion
from unidb.service.cli.common import backend_for, settings_from, with_database


def cmd_eval(args: argparse.Namespace) -> int:
    from unidb.models import QueryMode
    from unidb.service.cli.evaluation import evaluate, sweep

    modes: list[QueryMode] = ["bm25", "vector", "hybrid"] if args.mode == "all" else [args.mode]
    backend, owner = backend_for(args)
    try:
        if args.sweep:
            results = sweep(backend, Path(args.beir_dir), qrels_file=args.qrels,
                            collection=args.collection, reuse=args.reuse)  # fmt: skip
        else:
            results = evaluate(
                backend,
                Path(args.beir_dir),
                modes=modes,
                fusion=args.fusion,
                alpha=args.alpha,
                qrels_file=args.qrels,
                collection=args.collection,
                reuse=args.reuse,
            )
    finally:
        owner.close()
    if args.json:
        for result in results:
            print(json.dumps({"dataset": Path(args.beir_dir).name, **result.as_dict()}))
    else:
        print(f"{'mode':<8} {'fusion':<14} {'nDCG@10':>8} {'R@100':>8} {'MRR@10':>8} {'QPS':>8}")
        for r in results:
            fusion = (
                ""
                if r.fusion is None
                else r.fusion + (f" a={r.alpha}" if r.alpha is not None else "")
            )
            print(
                f"{r.mode:<8} {fusion:<14} {r.ndcg_at_10:>8.4f} {r.recall_at_100:>8.4f}"
                f" {r.mrr_at_10:>8.4f} {r.qps:>8.1f}"
            )
    if args.sweep and not args.json:
        best = max(results, key=lambda r: r.ndcg_at_10)
        alpha = f" alpha {best.alpha}" if best.alpha is not None else ""
        print(f"best nDCG@10 on {args.qrels}: {best.fusion}{alpha} ({best.ndcg_at_10:.4f})")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from unidb.service.cli.quickstart import run

    return run(settings_from(args), data=args.data, limit=args.limit, keep_serving=not args.exit)


def add_commands(commands: Any) -> None:
    evaluation = commands.add_parser(
        "eval", help="nDCG@10, recall@100, MRR@10 and QPS per mode on a BEIR folder"
    )
    evaluation.add_argument("beir_dir")
    evaluation.add_argument("--mode", default="all", choices=["bm25", "vector", "hybrid", "all"])
    evaluation.add_argument("--fusion", default=DEFAULT_FUSION, choices=get_args(Fusion))
    evaluation.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help="weighted: the vector share"
    )
    evaluation.add_argument(
        "--qrels", default="qrels-test.tsv", help="judgments file in the folder"
    )
    evaluation.add_argument("--collection", help="collection to load into (default eval_<folder>)")
    evaluation.add_argument(
        "--reuse", action="store_true", help="keep a collection that already holds the corpus"
    )
    evaluation.add_argument("--json", action="store_true", help="one JSON object per mode")
    evaluation.add_argument(
        "--sweep",
        action="store_true",
        help="hybrid over a grid: rrf, then weighted, relative and dbsf at alpha 0.1..0.9 "
        "(choose on --qrels qrels-train.tsv, report on test)",
    )
    with_database(evaluation)
    evaluation.set_defaults(run=cmd_eval)
    quick = commands.add_parser(
        "quickstart", help="serve, load SciFact with MiniLM vectors, run a query, keep serving"
    )
    quick.add_argument("--data", type=Path, help="a BEIR folder (default: shared/data/scifact)")
    quick.add_argument("--limit", type=int, default=500, help="documents to load (default 500)")
    quick.add_argument("--port", type=int)
    quick.add_argument("--host")
    quick.add_argument("--exit", action="store_true", help="stop after printing the hits")
    with_database(quick, url=False)
    quick.set_defaults(run=cmd_quickstart)
