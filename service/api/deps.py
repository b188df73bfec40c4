"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from unidb.service.engine import Engine

Model = TypeVar("Model", bound=BaseModel)

# bodies up to this size are parsed on the event loop; a larger one would hold it up
_PARSE_INLINE_BYTES = 64 * 1024


async def get_engine(request: Request) -> Engine:
    # async: a plain function dependency would cost every request a hop to a worker thread
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]


async def parse_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body as ``model``, in one pass over the raw bytes; a large body
    is parsed in a worker thread so that other requests go on meanwhile."""
    body = await request.body()
    if len(body) <= _PARSE_INLINE_BYTES:
        return model.model_validate_json(body)
    return await run_in_threadpool(model.model_validate_json, body)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the body of a route that parses it itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
