"""API keys on the REST routes and /mcp: 401 without a known key, 403 without the scope.

When auth is off (embedded use, or a service bound to loopback only) every request acts for
the default tenant with every scope.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from unidb.errors import Forbidden, Unauthorized, UnidbError

from ..auth import Principal
from ..auth import Scope as KeyScope
from ..engine import Engine
from ..tenancy import DEFAULT_TENANT, current_tenant
from .errors import render

OPEN = Principal(DEFAULT_TENANT, frozenset(("read", "write", "admin")))
_bearer = HTTPBearer(auto_error=False, description="an API key from `unidb keys create`")


async def authenticate(engine: Engine, authorization: str | None) -> Principal:
    if not engine.settings.auth_required:
        return OPEN
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized(
            "an API key is required: send Authorization: Bearer <key>", field="authorization"
        )
    principal = await run_in_threadpool(engine.keys.check, engine.pool.connection, key.strip())
    if principal is None:
        raise Unauthorized("unknown or revoked API key", field="authorization")
    return principal


def require(scope: KeyScope) -> Any:
    """A route dependency: the caller's key must carry ``scope``."""

    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        header = f"Bearer {credentials.credentials}" if credentials else None
        principal = await authenticate(request.app.state.engine, header)
        if scope not in principal.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope", field="authorization")
        request.state.principal = principal
        # copied into the worker thread that runs the route, and from there to Postgres
        current_tenant.set(principal.tenant)
        return principal

    return Depends(check)


READ, WRITE, ADMIN = require("read"), require("write"), require("admin")


class McpKeyGate:
    """/mcp carries reading and writing tools alike: its key needs read and write, and
    belongs to the default tenant."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/mcp"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        try:
            principal = await authenticate(scope["app"].state.engine, authorization)
            if principal.tenant != DEFAULT_TENANT:
                # MCP sessions run their tool calls outside the request that opened them, so
                # the caller's tenant cannot follow them there yet
                raise Forbidden(
                    "/mcp serves the default tenant only; other tenants use REST or the SDK",
                    field="authorization",
                )
            missing = {"read", "write"} - principal.scopes
            if missing:
                raise Forbidden(
                    f"/mcp needs the read and write scopes; this key lacks {sorted(missing)}",
                    field="authorization",
                )
        except UnidbError as error:
            await render(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)
