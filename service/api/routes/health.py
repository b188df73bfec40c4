from __future__ import annotations

from fastapi import APIRouter

from unidb.models import Health

from ..deps import EngineDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(engine: EngineDep) -> Health:
    """``{"status": "ok"}`` when the service and its database answer."""
    return engine.health()
