"""The exceptions unidb raises, on the server and in the SDK alike.

    UnidbError                  base; carries ``code``, ``message``, ``field`` and ``status``
    ├── InvalidInput            400  bad request body, parameter or filter
    ├── Unauthorized            401
    ├── Forbidden               403
    ├── NotFound                404  unknown collection or document
    ├── Conflict                409  already exists, or a version check failed
    ├── PayloadTooLarge         413  request body or batch over the configured limit
    ├── UnsupportedMediaType    415  a body that is not application/json
    ├── TooManyRequests         429  too many failed key checks; retry after a while
    ├── Unavailable             503  database unreachable, pool or embedder slots exhausted
    │   ├── BadGateway          502  an upstream (embedder, LLM engine) failed or answered badly
    │   └── GatewayTimeout      504  an upstream did not answer in time
    └── ServerError             500  anything unexpected

The server renders each as ``{"error": {"code", "message", "field"}}`` with its status;
the SDK turns such a response back into the same class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "UnidbError",
    "InvalidInput",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "TooManyRequests",
    "Unavailable",
    "BadGateway",
    "GatewayTimeout",
    "ServerError",
    "error_from_response",
    "field_from_location",
]


class UnidbError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return {"error": body}

    def __str__(self) -> str:
        return f"{self.message} (field: {self.field})" if self.field else self.message


class InvalidInput(UnidbError):
    status = 400
    code = "invalid_input"


class Unauthorized(UnidbError):
    status = 401
    code = "unauthorized"


class Forbidden(UnidbError):
    status = 403
    code = "forbidden"


class NotFound(UnidbError):
    status = 404
    code = "not_found"


class Conflict(UnidbError):
    status = 409
    code = "conflict"


class PayloadTooLarge(UnidbError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(UnidbError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(UnidbError):
    status = 429
    code = "too_many_requests"


class Unavailable(UnidbError):
    status = 503
    code = "unavailable"


class BadGateway(Unavailable):
    status = 502
    code = "bad_gateway"


class GatewayTimeout(Unavailable):
    status = 504
    code = "gateway_timeout"


class ServerError(UnidbError):
    status = 500
    code = "server_error"


_BY_CODE: dict[str, type[UnidbError]] = {
    cls.code: cls
    for cls in (
        InvalidInput,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        TooManyRequests,
        Unavailable,
        BadGateway,
        GatewayTimeout,
        ServerError,
    )
}
_BY_STATUS: dict[int, type[UnidbError]] = {cls.status: cls for cls in _BY_CODE.values()}


def error_from_response(status: int, body: Any) -> UnidbError:
    """The exception a server response with a non-2xx ``status`` stands for."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        cls = _BY_CODE.get(str(error.get("code")))
        if cls is None:
            cls = _BY_STATUS.get(status, InvalidInput if 400 <= status < 500 else ServerError)
        return cls(str(error.get("message", "")), field=error.get("field"))
    cls = _BY_STATUS.get(status, InvalidInput if 400 <= status < 500 else ServerError)
    return cls(f"HTTP {status}: {body!r}"[:500])


def field_from_location(location: Sequence[int | str], *, root: str = "") -> str:
    """A pydantic error location as a field name: ``("body", "documents", 3, "embedding")``
    → ``documents[3].embedding``; ``root`` goes in front of what the location names."""
    parts = list(location)
    if parts and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    text = root
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"
