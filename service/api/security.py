"""API keys on the REST routes and /mcp: 401 without a known key, 403 without the scope.

The key is checked by the request gate (``gate.py``) from the headers, before the body is
read; the routes' dependencies only look at the principal it found. When auth is off
(embedded use, or a service bound to loopback only) every request acts for the default
tenant with every scope. ``/metrics`` answers the operator key alone (``UNIDB_OPERATOR_KEY``),
never a tenant's.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from unidb.errors import Forbidden, Unauthorized
from unidb.service.auth.keys import Principal
from unidb.service.auth.keys import Scope as KeyScope
from unidb.service.auth.tenancy import DEFAULT_TENANT, current_tenant
from unidb.service.engine import Engine

OPEN = Principal(DEFAULT_TENANT, frozenset(("read", "write", "admin")))
PRINCIPAL = "unidb_principal"
# declares the scheme in OpenAPI; the gate does the checking
_bearer = HTTPBearer(auto_error=False, description="an API key from `unidb keys create`")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _bearer_key(authorization: str | None) -> str:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized(
            "an API key is required: send Authorization: Bearer <key>", field="authorization"
        )
    return key.strip()


def remembered(engine: Engine, authorization: str | None) -> Principal | None:
    """The principal of a key that verified lately, or None: never blocks."""
    if not engine.settings.auth_required:
        return OPEN
    try:
        return engine.keys.remembered(_bearer_key(authorization))
    except Unauthorized:
        return None


def authenticate(engine: Engine, authorization: str | None, client: str | None) -> Principal:
    """The principal of a request's ``Authorization`` header (blocking: run it off the loop)."""
    if not engine.settings.auth_required:
        return OPEN
    key = _bearer_key(authorization)
    principal = engine.keys.check(engine.pool.connection, key, client=client)
    if principal is None:
        raise Unauthorized("unknown or revoked API key", field="authorization")
    return principal


def _principal(request: Request) -> Principal:
    if not request.app.state.engine.settings.auth_required:
        return OPEN
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    if not isinstance(principal, Principal):
        # every keyed path passes the gate; a route reached without it is refused
        raise Unauthorized("this request carries no checked API key", field="authorization")
    return principal


def require(scope: KeyScope) -> Any:
    """A route dependency: the caller's key must carry ``scope``."""

    async def check(request: Request, _: BearerDep) -> Principal:
        principal = _principal(request)
        if scope not in principal.scopes:
            raise Forbidden(f"this API key lacks the {scope!r} scope", field="authorization")
        request.state.principal = principal
        # copied into the worker thread that runs the route, and from there to Postgres
        current_tenant.set(principal.tenant)
        return principal

    return Depends(check)


READ, WRITE, ADMIN = require("read"), require("write"), require("admin")


async def _operator(request: Request, _: BearerDep) -> None:
    settings = request.app.state.engine.settings
    if not settings.auth_required:
        return
    key = _bearer_key(request.headers.get("authorization"))
    expected = settings.operator_key.get_secret_value() if settings.operator_key else None
    if expected is None or not hmac.compare_digest(key.encode(), expected.encode()):
        raise Forbidden(
            f"{request.url.path} takes the operator key (UNIDB_OPERATOR_KEY), not a tenant's key",
            field="authorization",
        )


OPERATOR = Depends(_operator)


def mcp_tenant(context: Any) -> str:
    """The tenant of the key on the HTTP request that carried an MCP tool call."""
    request = getattr(context, "request", None)
    state = request.scope.get("state", {}) if request is not None else {}
    principal = state.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        # every /mcp request passes the gate; a call without its principal is refused
        raise Unauthorized("this MCP call carries no API key", field="authorization")
    return principal.tenant
