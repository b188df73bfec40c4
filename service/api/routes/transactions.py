from __future__ import annotations

from fastapi import APIRouter

from unidb.models import TransactionRequest, TransactionResult

from ..deps import EngineDep
from ..errors import ERROR_RESPONSES
from ..security import WRITE

router = APIRouter(prefix="/v1/transactions", tags=["transactions"], responses=ERROR_RESPONSES)


@router.post("", dependencies=[WRITE])
def transact(request: TransactionRequest, engine: EngineDep) -> TransactionResult:
    """Apply state and document operations in one Postgres transaction: all or nothing.

    A failing operation answers 4xx naming ``ops[i]`` and leaves everything as it was. The
    ``commit_token``, passed as ``after`` to a query from any client, makes the answer
    include this commit even with ``consistency="eventual"``."""
    return engine.transact(request)
