from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from unidb.models import (
    DeleteCount,
    DeleteResult,
    DeleteWhere,
    QueryRequest,
    QueryResponse,
    StoredDocument,
    UpsertRequest,
    UpsertResult,
)
from unidb.service.api.deps import EngineDep, json_body, parse_body
from unidb.service.api.errors import ERROR_RESPONSES
from unidb.service.api.observe import ADMITTED, ARRIVED
from unidb.service.api.security import READ, WRITE
from unidb.service.query_stages import StageClock, query_clock

router = APIRouter(prefix="/v1/collections/{name}", tags=["documents"], responses=ERROR_RESPONSES)


@router.post("/documents", dependencies=[WRITE], openapi_extra=json_body(UpsertRequest))
async def upsert_documents(name: str, request: Request, engine: EngineDep) -> UpsertResult:
    """Insert or replace documents by id, all in one transaction.

    A document whose text, metadata and embedding equal the stored ones is left as it is.
    """
    # the hot ingest path: pydantic parses the raw JSON bytes in one pass
    body = await parse_body(request, UpsertRequest)
    return await run_in_threadpool(engine.upsert_documents, name, body.documents)


@router.post("/documents/delete", dependencies=[WRITE], openapi_extra=json_body(DeleteWhere))
async def delete_documents(name: str, request: Request, engine: EngineDep) -> DeleteCount:
    """Delete the documents matching ``filter``, among ``ids``, or both, in one transaction.
    An empty filter is refused; ``all: true`` alone deletes every document."""
    body = await parse_body(request, DeleteWhere)
    return await run_in_threadpool(engine.delete_documents, name, body)


@router.get("/documents/{document_id:path}", dependencies=[READ])
def get_document(name: str, document_id: str, engine: EngineDep) -> StoredDocument:
    """One document with its embedding, version and timestamps."""
    return engine.get_document(name, document_id)


@router.delete("/documents/{document_id:path}", dependencies=[WRITE])
def delete_document(name: str, document_id: str, engine: EngineDep) -> DeleteResult:
    """Delete one document."""
    return engine.delete_document(name, document_id)


@router.post(
    "/query",
    dependencies=[READ],
    response_model=QueryResponse,
    openapi_extra=json_body(QueryRequest),
)
async def query(name: str, request: Request, engine: EngineDep) -> Response:
    """Search the collection: ``bm25`` on ``text``, ``vector`` on ``vector`` (or on ``text``
    with a collection embedder), ``hybrid`` fusing both; ``filter`` narrows by metadata
    before ranking."""
    # the hot query path: parse the raw JSON in one pass, answer with the model's own JSON
    clock = StageClock(request.scope.get(ARRIVED))
    if ADMITTED in request.scope:
        clock.lap_at("auth", request.scope[ADMITTED])
    token = query_clock.set(clock)  # copied into the worker thread with the context
    try:
        body = await parse_body(request, QueryRequest)
        clock.lap("parse")
        result = await run_in_threadpool(engine.query, name, body)
        clock.lap("return")
        content = result.model_dump_json()
        clock.lap("serialise")
    finally:
        query_clock.reset(token)
        engine.metrics.observe_stages(clock)
    return Response(content, media_type="application/json")
