"""``unidb serve``, ``unidb migrate`` and ``unidb mcp``: running the service."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from unidb.service.cli.common import backend_for, settings_from, with_database


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


def cmd_migrate(args: argparse.Namespace) -> int:
    from unidb.service.engine import Engine

    engine = Engine.start(settings_from(args), take_over_jobs=False)
    engine.close()
    print("schema unidb is at the head revision")
    return 0


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
    with_database(serve, url=False)
    serve.set_defaults(run=cmd_serve)
    migrate = commands.add_parser(
        "migrate", help="bring the database schema to the latest revision"
    )
    with_database(migrate, url=False)
    migrate.set_defaults(run=cmd_migrate)
    mcp = commands.add_parser("mcp", help="serve unidb's agent tools over MCP on stdio")
    with_database(mcp)
    mcp.set_defaults(run=cmd_mcp)
