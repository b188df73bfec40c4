"""``unidb ingest``, ``unidb query`` and ``unidb index build``: working with a collection."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from unidb import Client
from unidb.errors import InvalidInput
from unidb.service.cli.common import backend_for, settings_from, with_database


def cmd_ingest(args: argparse.Namespace) -> int:
    from unidb.indexing.embedders import get_embedder
    from unidb.service.ingest import ingest_file
    from unidb.service.store.catalog import MINILM_DIM

    if args.pgvector_hnsw and args.url:
        raise InvalidInput(
            "--pgvector-hnsw builds in the database directly: drop --url and set "
            "UNIDB_DATABASE_URL",
            field="url",
        )
    embed_groups = None
    if args.ray is not None:
        if not args.embed:
            raise InvalidInput(
                "--ray spreads the embedding over Ray workers: give --embed minilm", field="ray"
            )
        from unidb.service.jobs.distributed import connect, embed_on_ray

        embed_groups = embed_on_ray(connect(args.ray), args.embed)
        embedder = None
    else:
        embedder = get_embedder(args.embed) if args.embed else None
    backend, owner = backend_for(args)
    try:
        report = ingest_file(
            backend,
            Path(args.file),
            collection=args.collection,
            batch_size=args.batch_size,
            embedder=embedder,
            embed_groups=embed_groups,
            dim=args.dim or (MINILM_DIM if args.embed else None),
            limit=args.limit,
        )
        built = None
        if args.build_index and report.written:
            built = Client(backend=backend).build_index(
                args.collection, progress=sys.stderr.isatty()
            )
        if args.pgvector_hnsw:
            owner.build_vector_index(args.collection)
    finally:
        owner.close()
    print(
        json.dumps(
            {
                "lines": report.lines,
                "written": report.written,
                "unchanged": report.unchanged,
                "index_job": (
                    {"id": built.id, "status": built.status, "error": built.error}
                    if built is not None
                    else None
                ),
            }
        )
    )
    return 0 if built is None or built.status == "done" else 1


def cmd_query(args: argparse.Namespace) -> int:
    from unidb.models import QueryRequest

    vector = json.loads(args.vector) if args.vector else None
    if args.text and vector is None:
        from unidb.indexing.embedders import get_embedder

        vector = get_embedder(args.embed).embed_query(args.text).tolist()
    request = QueryRequest(
        vector=vector,
        k=args.k,
        mode="vector",
        filter=json.loads(args.filter) if args.filter else None,
    )
    backend, owner = backend_for(args)
    try:
        response = backend.query(args.collection, request)
    finally:
        owner.close()
    print(response.model_dump_json(indent=2))
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    params = json.loads(args.params) if args.params else None
    if args.ray is not None:
        return _index_build_on_ray(args, params)
    backend, owner = backend_for(args)
    try:
        job = Client(backend=backend).build_index(
            args.collection, kind=args.kind, device=args.device, params=params, progress=True
        )
    finally:
        owner.close()
    print(job.model_dump_json(indent=2))
    return 0 if job.status == "done" else 1


def _index_build_on_ray(args: argparse.Namespace, params: dict[str, Any] | None) -> int:
    from unidb.models import IndexBuildRequest
    from unidb.service.engine import Engine
    from unidb.service.jobs.distributed import build_index_on_ray

    if args.url:
        raise InvalidInput(
            "--ray builds from this machine against the database and writes the snapshot "
            "where the service processes load it: set UNIDB_DATABASE_URL and --data-dir "
            "(their shared directory) instead of --url",
            field="url",
        )
    request = IndexBuildRequest.model_validate(
        {"kind": args.kind, "device": args.device, "params": params or {}}
    )
    engine = Engine.start(settings_from(args), take_over_jobs=False)
    try:
        job = build_index_on_ray(
            engine, args.collection, request, address=args.ray or None, shards=args.shards
        )
    finally:
        engine.close()
    print(job.model_dump_json(indent=2))
    return 0 if job.status == "done" else 1


def add_commands(commands: Any) -> None:
    ingest = commands.add_parser("ingest", help="bulk-load a JSONL file into a collection")
    ingest.add_argument("file")
    ingest.add_argument("--collection", required=True)
    ingest.add_argument("--dim", type=int, help="dimension for a new collection")
    ingest.add_argument("--embed", choices=["minilm"], help="embed texts that carry no embedding")
    ingest.add_argument("--batch-size", type=int, default=2000)
    ingest.add_argument("--limit", type=int, help="load only the first N documents")
    ingest.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="embed on Ray workers: a cluster's address, or none for a local Ray",
    )
    ingest.add_argument(
        "--no-build-index",
        dest="build_index",
        action="store_false",
        help="skip building the FAISS index after loading",
    )
    ingest.add_argument(
        "--pgvector-hnsw",
        action="store_true",
        help="also build a pgvector HNSW index, for ANN from plain SQL (it slows later writes)",
    )
    with_database(ingest)
    ingest.set_defaults(run=cmd_ingest)
    query = commands.add_parser("query", help="search a collection")
    query.add_argument("collection")
    query.add_argument("--text", help="query text, embedded with --embed")
    query.add_argument("--vector", help="query vector as a JSON list")
    query.add_argument("--embed", default="minilm", choices=["minilm"])
    query.add_argument("--k", type=int, default=10)
    query.add_argument("--filter", help="metadata filter as JSON")
    with_database(query)
    query.set_defaults(run=cmd_query)
    index = commands.add_parser("index", help="ANN indexes (FAISS)")
    index_commands = index.add_subparsers(dest="index_command", required=True)
    build = index_commands.add_parser(
        "build", help="build a collection's FAISS index as a job, with a progress bar"
    )
    build.add_argument("collection")
    build.add_argument("--kind", default="auto", choices=["auto", "hnsw", "ivf", "cagra"])
    build.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    build.add_argument("--params", help='build parameters as JSON, e.g. {"m": 32}')
    build.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="build IVF shards on Ray workers and merge them: a cluster's address, or none "
        "for a local Ray",
    )
    build.add_argument("--shards", type=int, help="shards of a --ray build (default: Ray's CPUs)")
    with_database(build)
    build.set_defaults(run=cmd_index_build)
