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
    """/mcp carries reading and writing tools alike: its key needs read and write.

    The key's principal rides in the request's scope state, where each tool call carried by
    the request finds its tenant (`mcp_tenant`)."""

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
            missing = {"read", "write"} - principal.scopes
            if missing:
                raise Forbidden(
                    f"/mcp needs the read and write scopes; this key lacks {sorted(missing)}",
                    field="authorization",
                )
        except UnidbError as error:
            await render(error)(scope, receive, send)
            return
        scope.setdefault("state", {})[_PRINCIPAL] = principal
        await self.app(scope, receive, send)


_PRINCIPAL = "unidb_principal"


def mcp_tenant(context: Any) -> str:
    """The tenant of the key on the HTTP request that carried an MCP tool call."""
    request = getattr(context, "request", None)
    state = request.scope.get("state", {}) if request is not None else {}
    principal = state.get(_PRINCIPAL)
    if not isinstance(principal, Principal):
        # every /mcp request passes McpKeyGate; a call without its principal is refused
        raise Unauthorized("this MCP call carries no API key", field="authorization")
    return principal.tenant
