from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from unidb.models import DeleteResult, StateEntry, StateList, StatePut
from unidb.service.api.deps import EngineDep, json_body, parse_body
from unidb.service.api.errors import ERROR_RESPONSES
from unidb.service.api.security import READ, WRITE

router = APIRouter(prefix="/v1/state", tags=["state"], responses=ERROR_RESPONSES)

# no control characters: a name must be reachable by its URL path (see unidb.models)
Namespace = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f/]+$")]
Key = Annotated[str, Path(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]


@router.get("/{namespace}", dependencies=[READ])
def list_state(
    namespace: Namespace,
    engine: EngineDep,
    prefix: Annotated[str, Query(max_length=256)] = "",
    after: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> StateList:
    """Entries of a namespace in key order, optionally only keys starting with ``prefix``;
    pass the answer's ``next_after`` as ``after`` for the next page."""
    return engine.list_state(namespace, prefix=prefix, after=after, limit=limit)


@router.get("/{namespace}/{key:path}", dependencies=[READ])
def get_state(namespace: Namespace, key: Key, engine: EngineDep) -> StateEntry:
    """One value with its version."""
    return engine.get_state(namespace, key)


@router.put("/{namespace}/{key:path}", dependencies=[WRITE], openapi_extra=json_body(StatePut))
async def put_state(
    namespace: Namespace, key: Key, request: Request, engine: EngineDep
) -> StateEntry:
    """Store a JSON value. ``if_version`` makes it a compare-and-set: 409 unless the stored
    version is that number (0: unless the key is new)."""
    body = await parse_body(request, StatePut)
    return await run_in_threadpool(engine.put_state, namespace, key, body)


@router.delete("/{namespace}/{key:path}", dependencies=[WRITE])
def delete_state(
    namespace: Namespace,
    key: Key,
    engine: EngineDep,
    if_version: Annotated[int | None, Query(ge=1)] = None,
) -> DeleteResult:
    """Delete a value; with ``if_version``, only that version (409 otherwise)."""
    return engine.delete_state(namespace, key, if_version)
