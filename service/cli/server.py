"""``unidb serve``, ``unidb migrate`` and ``unidb mcp``: running the service."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from unidb.service.cli.common import backend_for, settings_from, with_database
from unidb.service.config import Settings
from unidb.service.logs import LogFormat, library_level, uvicorn_log_config


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from unidb.service.api.main import create_app
    from unidb.service.engine import Engine

    settings = settings_from(args)
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
        if settings.workers > 1:
            serve_with_workers(settings, args.log_level, args.log_format)
            return 0
        # uvicorn turns SIGINT/SIGTERM into a graceful shutdown whose lifespan closes the
        # engine (stopping embedded Postgres), then re-raises the signal to exit
        uvicorn.run(
            create_app(settings, engine=engine, close_engine=True),
            host=settings.host,
            port=settings.port,
            log_config=uvicorn_log_config(args.log_level),
            log_level=library_level(args.log_level),
        )
    finally:
        engine.close()
    return 0


def serve_with_workers(settings: Settings, log_level: str, log_format: LogFormat) -> None:
    """Answer requests with ``settings.workers`` processes on one port (uvicorn's workers),
    each with its own engine on the same database and data directory: this process keeps
    the BM25 indexes and runs build jobs, the workers follow the indexes it writes."""
    import uvicorn

    # the workers read their settings from the environment, the flags included
    os.environ.update(
        UNIDB_HOST=settings.host,
        UNIDB_PORT=str(settings.port),
        UNIDB_DATA_DIR=str(settings.data_dir),
        UNIDB_WORKERS="1",
        UNIDB_LOG_LEVEL=log_level,
        UNIDB_LOG_FORMAT=log_format,
    )
    logging.getLogger("unidb").info("answering with %d worker processes", settings.workers)
    uvicorn.run(
        "unidb.service.api.main:create_worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=uvicorn_log_config(log_level),
        log_level=library_level(log_level),
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    from unidb.service.engine import Engine

    engine = Engine.start(settings_from(args), take_over_jobs=False)
    engine.close()
    print("schema unidb is at the head revision")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from unidb.service.cli.doctor import run

    return run(settings_from(args))


def cmd_mcp(args: argparse.Namespace) -> int:
    import anyio

    from unidb.service.mcp_server import serve_stdio

    backend, owner = backend_for(args)
    try:
        anyio.run(serve_stdio, backend)
    finally:
        owner.close()
    return 0


def add_commands(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the REST API (embedded Postgres by default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--workers", type=int, help="processes answering requests (UNIDB_WORKERS; default: cores)"
    )
    with_database(serve, url=False)
    serve.set_defaults(run=cmd_serve)
    migrate = commands.add_parser(
        "migrate", help="bring the database schema to the latest revision"
    )
    with_database(migrate, url=False)
    migrate.set_defaults(run=cmd_migrate)
    doctor = commands.add_parser(
        "doctor",
        help="check Postgres and pgvector, the data directory and its disk, the index "
        "libraries, embedders and engines: one line per check, exit 1 if one fails",
    )
    with_database(doctor, url=False)
    doctor.set_defaults(run=cmd_doctor)
    mcp = commands.add_parser("mcp", help="serve unidb's agent tools over MCP on stdio")
    with_database(mcp)
    mcp.set_defaults(run=cmd_mcp)
