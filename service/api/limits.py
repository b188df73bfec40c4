"""Refuse request bodies over the configured size before they are read into memory."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unidb.errors import PayloadTooLarge
from unidb.service.api.errors import render


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(
            f"request body is over the limit of {self.max_bytes} bytes", field="body"
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await render(too_large)(scope, receive, send)
                return
        await self.app(scope, limited(receive, self.max_bytes, too_large), send)


def limited(receive: Receive, max_bytes: int, too_large: PayloadTooLarge) -> Receive:
    """``receive`` that raises ``too_large`` once the body passes ``max_bytes``."""
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise too_large
        return message

    return limited_receive
