"""Every error leaves the API as ``{"error": {"code", "message", "field"}}`` with its status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from unidb.errors import InvalidInput, NotFound, ServerError, UnidbError, field_from_location

log = logging.getLogger("unidb.api")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for status, description in (
        (400, "invalid input"),
        (401, "no API key, or an unknown one"),
        (403, "the API key lacks the scope"),
        (404, "not found"),
        (409, "conflict"),
        (413, "payload too large"),
        (415, "the body is not application/json"),
        (429, "too many failed API key checks"),
        (502, "an upstream (embedder, LLM engine) failed"),
        (503, "unavailable"),
        (504, "an upstream did not answer in time"),
    )
}


def invalid_input_from(exc: ValidationError | RequestValidationError) -> InvalidInput:
    errors = exc.errors()
    if not errors:
        return InvalidInput("invalid request")
    first = errors[0]
    field = field_from_location(first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return InvalidInput(f"{field}: {message}{more}", field=field)


def render(error: UnidbError) -> JSONResponse:
    headers = (
        {"Retry-After": "1"}
        if error.status == 503
        else {"WWW-Authenticate": "Bearer"}
        if error.status == 401
        else None
    )
    return JSONResponse(error.to_dict(), status_code=error.status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(UnidbError)
    async def on_unidb_error(request: Request, exc: UnidbError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return render(invalid_input_from(exc))

    @app.exception_handler(ValidationError)
    async def on_model_error(request: Request, exc: ValidationError) -> JSONResponse:
        return render(invalid_input_from(exc))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return render(NotFound(f"no route {request.method} {request.url.path}"))
        error = (
            InvalidInput(str(exc.detail)) if exc.status_code < 500 else ServerError(str(exc.detail))
        )
        response = render(error)
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return render(ServerError("internal error; see the server log"))
