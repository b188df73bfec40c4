from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from unidb.models import (
    DeleteResult,
    QueryRequest,
    QueryResponse,
    StoredDocument,
    UpsertRequest,
    UpsertResult,
)

from ..deps import EngineDep
from ..errors import ERROR_RESPONSES

router = APIRouter(prefix="/v1/collections/{name}", tags=["documents"], responses=ERROR_RESPONSES)


@router.post(
    "/documents",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": UpsertRequest.model_json_schema()}},
        }
    },
)
async def upsert_documents(name: str, request: Request, engine: EngineDep) -> UpsertResult:
    """Insert or replace documents by id, all in one transaction.

    A document whose text, metadata and embedding equal the stored ones is left as it is.
    """
    # the hot ingest path: pydantic parses the raw JSON bytes in one pass
    body = UpsertRequest.model_validate_json(await request.body())
    return await run_in_threadpool(engine.upsert_documents, name, body.documents)


@router.get("/documents/{document_id:path}")
def get_document(name: str, document_id: str, engine: EngineDep) -> StoredDocument:
    """One document with its embedding, version and timestamps."""
    return engine.get_document(name, document_id)


@router.delete("/documents/{document_id:path}")
def delete_document(name: str, document_id: str, engine: EngineDep) -> DeleteResult:
    """Delete one document."""
    return engine.delete_document(name, document_id)


@router.post("/query")
def query(name: str, request: QueryRequest, engine: EngineDep) -> QueryResponse:
    """Search the collection. ``mode="vector"`` with ``vector``; ``filter`` narrows by metadata."""
    return engine.query(name, request)
