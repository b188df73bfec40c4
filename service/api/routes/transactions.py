from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from unidb.models import TransactionRequest, TransactionResult
from unidb.service.api.deps import EngineDep, json_body, parse_body
from unidb.service.api.errors import ERROR_RESPONSES
from unidb.service.api.security import WRITE

router = APIRouter(prefix="/v1/transactions", tags=["transactions"], responses=ERROR_RESPONSES)


@router.post("", dependencies=[WRITE], openapi_extra=json_body(TransactionRequest))
async def transact(request: Request, engine: EngineDep) -> TransactionResult:
    """Apply state and document operations in one Postgres transaction: all or nothing.

    A failing operation answers 4xx naming ``ops[i]`` and leaves everything as it was. The
    ``commit_token``, passed as ``after`` to a query from any client, makes the answer
    include this commit even with ``consistency="eventual"``."""
    body = await parse_body(request, TransactionRequest)
    return await run_in_threadpool(engine.transact, body)
