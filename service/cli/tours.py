"""``unidb eval`` and ``unidb quickstart``: measuring retrieval quality, and the first tour."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from unidb.models import DEFAULT_ALPHA, DEFAULT_FUSION, ChunkerSpec, Fusion
from unidb.service.cli.common import backend_for, settings_from, with_database


def cmd_eval(args: argparse.Namespace) -> int:
    from unidb.models import QueryMode
    from unidb.service.cli.evaluation import evaluate, sweep

    modes: list[QueryMode] = ["bm25", "vector", "hybrid"] if args.mode == "all" else [args.mode]
    chunker = parse_chunker(args.chunker)
    backend, owner = backend_for(args)
    try:
        if args.sweep:
            results = sweep(backend, Path(args.beir_dir), qrels_file=args.qrels,
                            collection=args.collection, reuse=args.reuse,
                            chunker=chunker)  # fmt: skip
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
                chunker=chunker,
            )
    finally:
        owner.close()
    if args.json:
        chunking = {"chunker": args.chunker or "none"}
        for result in results:
            print(json.dumps({"dataset": Path(args.beir_dir).name, **chunking, **result.as_dict()}))
    else:
        _print_results(results)
    if args.sweep and not args.json:
        from unidb.service.cli.evaluation import best_setting

        best = best_setting(results)
        alpha = f" alpha {best.alpha}" if best.alpha is not None else ""
        print(f"best nDCG@10 on {args.qrels}: {best.fusion}{alpha} ({best.ndcg_at_10:.4f})")
    return 0


def _print_results(results: list[Any]) -> None:
    print(f"{'mode':<8} {'fusion':<14} {'nDCG@10':>8} {'R@100':>8} {'MRR@10':>8} {'QPS':>8}")
    for r in results:
        fusion = (
            "" if r.fusion is None else r.fusion + (f" a={r.alpha}" if r.alpha is not None else "")
        )
        print(
            f"{r.mode:<8} {fusion:<14} {r.ndcg_at_10:>8.4f} {r.recall_at_100:>8.4f}"
            f" {r.mrr_at_10:>8.4f} {r.qps:>8.1f}"
        )


def cmd_tune(args: argparse.Namespace) -> int:
    from unidb.service.cli.evaluation import tune

    qrels = Path(args.qrels)
    queries = Path(args.queries) if args.queries else qrels.parent / "queries.jsonl"
    backend, owner = backend_for(args)
    try:
        results, best = tune(
            backend, args.collection, queries_file=queries, qrels_file=qrels, store=not args.dry_run
        )
    finally:
        owner.close()
    if args.json:
        for result in results:
            print(json.dumps({"collection": args.collection, **result.as_dict()}))
        return 0
    _print_results(results)
    alpha = f" alpha {best.alpha}" if best.alpha is not None else ""
    verb = "best" if args.dry_run else "stored as the collection's query defaults"
    print(f"{verb}: {best.fusion}{alpha} (nDCG@10 {best.ndcg_at_10:.4f} on {qrels.name})")
    return 0


def parse_chunker(text: str | None) -> ChunkerSpec | None:
    """``tokens:SIZE:OVERLAP``, ``sentences:SIZE`` or ``none`` as a chunker."""
    if text is None or text == "none":
        return None
    kind, *numbers = text.split(":")
    try:
        values = [int(n) for n in numbers]
        if kind == "tokens" and len(values) == 2:
            return ChunkerSpec(kind="tokens", size=values[0], overlap=values[1])
        if kind == "sentences" and len(values) == 1:
            return ChunkerSpec(kind="sentences", size=values[0], overlap=0)
    except ValueError as exc:
        raise SystemExit(f"unidb eval: --chunker {text}: {exc}") from exc
    raise SystemExit(
        f"unidb eval: --chunker {text}: give tokens:SIZE:OVERLAP, sentences:SIZE or none"
    )


def cmd_quickstart(args: argparse.Namespace) -> int:
    from unidb.service.cli.quickstart import run

    return run(
        settings_from(args),
        data=args.data,
        limit=args.limit,
        keep_serving=not args.exit,
        log_level=args.log_level,
    )


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
        "--chunker",
        help="split documents on load: tokens:SIZE:OVERLAP or sentences:SIZE (default none)",
    )
    evaluation.add_argument(
        "--sweep",
        action="store_true",
        help="hybrid over a grid: rrf, then weighted, relative and dbsf at alpha 0.1..0.9 "
        "(choose on --qrels qrels-train.tsv, report on test)",
    )
    with_database(evaluation)
    evaluation.set_defaults(run=cmd_eval)
    tuning = commands.add_parser(
        "tune",
        help="sweep hybrid fusion and alpha on judgments and store the best as the "
        "collection's query defaults",
    )
    tuning.add_argument("collection")
    tuning.add_argument(
        "--qrels", required=True, help="judgments (BEIR qrels TSV); tune on train, report on test"
    )
    tuning.add_argument(
        "--queries", help="the queries (BEIR queries.jsonl; default: beside the judgments)"
    )
    tuning.add_argument("--dry-run", action="store_true", help="print the best, store nothing")
    tuning.add_argument("--json", action="store_true", help="one JSON object per setting")
    with_database(tuning)
    tuning.set_defaults(run=cmd_tune)
    quick = commands.add_parser(
        "quickstart",
        help="serve on embedded Postgres, load unidb's documentation (bundled), run a hybrid "
        "query, a fresh write and a context prompt, keep serving",
    )
    quick.add_argument(
        "--data", type=Path, help="a BEIR folder to load instead (../shared/data/scifact, say)"
    )
    quick.add_argument(
        "--limit", type=int, default=500, help="with --data: documents to load (default 500)"
    )
    quick.add_argument("--port", type=int)
    quick.add_argument("--host")
    quick.add_argument("--exit", action="store_true", help="stop after printing the hits")
    with_database(quick, url=False)
    quick.set_defaults(run=cmd_quickstart)
