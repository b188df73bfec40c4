"""Record each REST request's latency by route template, method and status."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# the instants (perf_counter) a request arrived and was let through the gate, for the query
# route's stage timings
ARRIVED = "unidb.arrived"
ADMITTED = "unidb.admitted"


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        scope[ARRIVED] = began
        status = 500  # what the client sees when the app raises before answering

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        finally:
            engine = getattr(scope["app"].state, "engine", None)
            if engine is not None:
                route = scope.get("route")
                # the template, not the path: one series per route, not per document id
                template = getattr(route, "path", None) or "unmatched"
                engine.metrics.requests.labels(template, scope["method"], str(status)).observe(
                    time.perf_counter() - began
                )
