"""The FastAPI app: a factory and its lifespan, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import unidb
from unidb.service.api import errors
from unidb.service.api.gate import RequestGate
from unidb.service.api.limits import BodySizeLimit
from unidb.service.api.observe import RequestMetrics
from unidb.service.api.routes import (
    collections,
    context,
    documents,
    health,
    jobs,
    state,
    transactions,
)
from unidb.service.api.security import mcp_tenant
from unidb.service.config import Settings
from unidb.service.engine import Engine
from unidb.service.logs import configure
from unidb.service.mcp_server import build_server


def create_worker_app() -> FastAPI:
    """The app each process of ``unidb serve --workers N`` builds (uvicorn's factory): its
    settings from the environment the parent set, logging as the parent was told to."""
    settings = Settings()
    configure(settings.log_level, settings.log_format)
    return create_app(settings)


def create_app(
    settings: Settings | None = None, *, engine: Engine | None = None, close_engine: bool = False
) -> FastAPI:
    """The unidb REST app.

    Without an ``engine`` the app starts one from ``settings`` on startup and closes it on
    shutdown; a given engine is closed on shutdown only with ``close_engine=True``.
    """
    settings = settings or (engine.settings if engine else Settings())
    # MCP over streamable HTTP at /mcp: the same tools as `unidb mcp`, on this app's engine
    mcp = build_server(lambda: app.state.engine, tenant_of=mcp_tenant)
    mcp_routes = mcp.streamable_http_app(streamable_http_path="/mcp", host=settings.host).routes

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None or close_engine
        app.state.engine = (
            engine if engine is not None else await run_in_threadpool(Engine.start, settings)
        )
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            if owned:
                await run_in_threadpool(app.state.engine.close)

    app = FastAPI(
        title="unidb",
        version=unidb.__version__,
        description="One Postgres schema for app state, documents and embeddings.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # before anything reads a body: host, origin, media type, and the API key
    app.add_middleware(RequestGate, settings=settings)
    app.add_middleware(RequestMetrics)  # outermost: it times refused requests too
    app.include_router(health.router)
    app.include_router(collections.router)
    app.include_router(documents.router)
    app.include_router(state.router)
    app.include_router(transactions.router)
    app.include_router(context.router)
    app.include_router(jobs.router)
    app.router.routes.extend(mcp_routes)
    return app
