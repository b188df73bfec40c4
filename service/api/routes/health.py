from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from unidb.models import Health
from unidb.service.api.deps import EngineDep
from unidb.service.api.security import OPERATOR

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(engine: EngineDep) -> Health:
    """``{"status": "ok"}`` when the service and its database answer."""
    return engine.health()


@router.get(
    "/metrics",
    dependencies=[OPERATOR],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(engine: EngineDep) -> Response:
    """Prometheus metrics: request and query latency, ingest, index lag, jobs, pool, and
    the context prefix-cache hit ratio. With auth on, only the operator key
    (``UNIDB_OPERATOR_KEY``) reads them: they name every tenant's collections."""
    return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)
