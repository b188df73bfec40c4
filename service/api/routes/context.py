from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from unidb.models import (
    ContextRequest,
    ContextResponse,
    EngineChecks,
    PrefixList,
    WarmRequest,
    WarmResult,
)
from unidb.service.api.deps import EngineDep
from unidb.service.api.errors import ERROR_RESPONSES
from unidb.service.api.security import ADMIN, OPERATOR, READ

router = APIRouter(prefix="/v1", tags=["context"], responses=ERROR_RESPONSES)

PrefixKey = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")]


@router.post("/context", dependencies=[READ])
def build_context(request: ContextRequest, engine: EngineDep) -> ContextResponse:
    """Retrieve chunks for ``query`` and lay them out as a prompt whose prefix the LLM
    engine's KV cache reuses: same inputs give a byte-identical prompt, and every full block
    is named by the engine's own block hash (``block_hashes``, and ``block_keys`` as KV
    events name them). Send ``token_ids`` as the prompt and ``cache_salt`` with it."""
    return engine.build_context(request)


@router.get("/prefixes", dependencies=[READ])
def list_prefixes(
    engine: EngineDep,
    collection: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PrefixList:
    """Context prefixes sent so far, most reused first; a prefix leaves when one of its
    documents changes."""
    return engine.list_prefixes(collection, limit=limit)


@router.post("/prefixes/{prefix_key}/warm", dependencies=[ADMIN])
def warm_prefix(prefix_key: PrefixKey, request: WarmRequest, engine: EngineDep) -> WarmResult:
    """Send the prefix to an OpenAI-compatible completions endpoint (``max_tokens=1``) so
    the engine holds it in its KV cache before the first real request. The endpoint is one
    the operator lists (``UNIDB_KV_ENGINES`` with a ``url``, or ``UNIDB_OUTBOUND_URLS``),
    named by ``engine`` or by its exact listed ``engine_url``; any other is a 400."""
    return engine.warm_prefix(prefix_key, request)


@router.get("/engines", dependencies=[OPERATOR])
def check_engines(engine: EngineDep) -> EngineChecks:
    """(The operator's: the engines serve every tenant.) Probe each LLM engine unidb follows (``UNIDB_KV_ENGINES`` with a ``url``): send it
    a short prompt of random tokens, with and without a ``cache_salt``, read the block
    hash its KV events give, and say which hash settings reproduce it, beside the ones
    configured; and whether unidb's tokenizer splits a probe sentence as the engine's
    ``/tokenize`` does."""
    return engine.check_engines()
