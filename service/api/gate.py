"""The request gate: what every HTTP request passes before a route reads its body.

In order: the ``Host`` header must name this service (DNS rebinding), a browser's
``Origin`` must be the service's own or a listed one (cross-site requests), a body sent to
``/v1`` must be JSON (a cross-site "simple" ``text/plain`` POST needs no preflight), and
the API key is checked from the headers alone, so a request without a good key is refused
before a byte of its body is read. Requests that need no key (``/healthz``, the docs) may
send a small body at most.
"""

from __future__ import annotations

import ipaddress
import re
import time
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from unidb.errors import (
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
    UnidbError,
    UnsupportedMediaType,
)
from unidb.service.api.errors import render
from unidb.service.api.limits import limited
from unidb.service.api.observe import ADMITTED
from unidb.service.api.security import OPEN, PRINCIPAL, authenticate, remembered
from unidb.service.config import Settings

_LOOPBACK_NAMES = frozenset(("localhost", "127.0.0.1", "::1"))
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """Host names the API answers; None: any (a wildcard bind, or ``*`` listed)."""
    if settings.allowed_hosts:
        if "*" in settings.allowed_hosts:
            return None
        return frozenset(h.lower() for h in settings.allowed_hosts)
    if _is_wildcard(settings.host):
        return None
    names = {settings.host.lower()}
    if _is_loopback(settings.host):
        names |= _LOOPBACK_NAMES
    return frozenset(names)


OPERATOR_PATHS = frozenset({"/v1/engines"})  # besides /metrics, outside /v1
_SINGLE = frozenset(("host", "origin", "content-type", "authorization", "content-length"))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# a name or an IPv4 address, or an IPv6 address in brackets; then an optional port
_HOST = re.compile(r"^(?:\[([0-9a-f:.]+)\]|([a-z0-9._-]+))(?::[0-9]{1,5})?$")


def _host_name(value: str) -> str | None:
    """``example.com:8000`` → ``example.com``; ``[::1]:8000`` → ``::1``; None if malformed."""
    match = _HOST.match(value.strip().lower())
    if match is None:
        return None
    return match.group(1) or match.group(2)


class RequestGate:
    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.hosts = allowed_hosts(settings)
        self.origins = frozenset(o.rstrip("/").lower() for o in settings.allowed_origins)
        self.keyless_cap = settings.max_unauthenticated_body_bytes
        self.keyless_too_large = PayloadTooLarge(
            f"a request without an API key may send at most {self.keyless_cap} bytes "
            "(UNIDB_MAX_UNAUTHENTICATED_BODY_BYTES)",
            field="body",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._admit(scope, receive)
        except UnidbError as error:
            await render(error)(scope, receive, send)
            return
        scope[ADMITTED] = time.perf_counter()
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").lower()
            if name in _SINGLE and name in headers:
                # the gate and the app must read the same value: there is only one
                raise InvalidInput(f"more than one {name} header", field=name)
            headers[name] = raw_value.decode("latin-1")
        if _CONTROL.search(scope["path"]):
            # a route's pattern would match up to a trailing line break and act on the rest
            raise InvalidInput("the path holds a control character", field="path")
        self._check_host(headers.get("host"))
        self._check_origin(headers.get("origin"), headers.get("host"))
        path: str = scope["path"]
        # the operator's paths take the operator key, which the route checks, not a tenant's
        keyed = path.startswith(("/v1/", "/mcp")) and path not in OPERATOR_PATHS
        if path.startswith("/v1/") and scope["method"] in _BODY_METHODS:
            media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                raise UnsupportedMediaType(
                    "send the body as JSON with Content-Type: application/json",
                    field="content-type",
                )
        engine = scope["app"].state.engine
        if not engine.settings.auth_required:
            if keyed:
                scope.setdefault("state", {})[PRINCIPAL] = OPEN
            return receive
        if not keyed:
            return limited(receive, self.keyless_cap, self.keyless_too_large)
        client = scope.get("client")
        authorization = headers.get("authorization")
        principal = remembered(engine, authorization)
        if principal is None:
            principal = await run_in_threadpool(
                authenticate, engine, authorization, client[0] if client else None
            )
        if path.startswith("/mcp"):
            # /mcp carries reading and writing tools alike
            missing = {"read", "write"} - principal.scopes
            if missing:
                raise Forbidden(
                    f"/mcp needs the read and write scopes; this key lacks {sorted(missing)}",
                    field="authorization",
                )
        scope.setdefault("state", {})[PRINCIPAL] = principal
        return receive

    def _check_host(self, host: str | None) -> None:
        if self.hosts is None:
            return
        if host is None or _host_name(host) not in self.hosts:
            raise InvalidInput(
                f"this service does not answer for host {host!r} (UNIDB_ALLOWED_HOSTS)",
                field="host",
            )

    def _check_origin(self, origin: str | None, host: str | None) -> None:
        if origin is None:
            return
        normalised = origin.rstrip("/").lower()
        if normalised in self.origins:
            return
        # same origin: the page was served by this very host and port (the Host header,
        # already checked above)
        parts = urlsplit(normalised)
        if parts.scheme in ("http", "https") and host is not None:
            default_port = ":443" if parts.scheme == "https" else ":80"
            wanted = host.strip().lower()
            netloc = parts.netloc
            if (
                netloc == wanted
                or netloc + default_port == wanted
                or netloc == wanted + default_port
            ):
                return
        raise Forbidden(
            f"requests from origin {origin!r} are refused (UNIDB_ALLOWED_ORIGINS)",
            field="origin",
        )
