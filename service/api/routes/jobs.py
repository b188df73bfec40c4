from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from unidb.models import IndexBuildRequest, Job
from unidb.service.api.deps import EngineDep
from unidb.service.api.errors import ERROR_RESPONSES
from unidb.service.api.security import ADMIN, READ

router = APIRouter(prefix="/v1", tags=["jobs"], responses=ERROR_RESPONSES)

JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.post(
    "/collections/{name}/index", dependencies=[ADMIN], status_code=status.HTTP_202_ACCEPTED
)
def build_index(name: str, request: IndexBuildRequest, engine: EngineDep) -> Job:
    """Build the collection's FAISS index from its vectors in Postgres, as a job: on a GPU
    when FAISS sees one (CAGRA, served on the CPU as HNSW), else HNSW on the CPU. Poll
    ``GET /v1/jobs/{id}``; queries use the new snapshot as soon as it is swapped in."""
    return engine.build_index(name, request)


@router.get("/jobs/{job_id}", dependencies=[READ])
def get_job(job_id: JobId, engine: EngineDep) -> Job:
    """A job's status, progress (0..1), error and stats."""
    return engine.get_job(job_id)


@router.delete("/jobs/{job_id}", dependencies=[ADMIN])
def cancel_job(job_id: JobId, engine: EngineDep) -> Job:
    """Cancel a job: at once if queued, at its next step if running (409 if it ended)."""
    return engine.cancel_job(job_id)
