from __future__ import annotations

from fastapi import APIRouter, status

from unidb.models import Collection, CollectionCreate, CollectionList, DeleteResult, QueryDefaults
from unidb.service.api.deps import EngineDep
from unidb.service.api.errors import ERROR_RESPONSES
from unidb.service.api.security import ADMIN, READ

router = APIRouter(prefix="/v1/collections", tags=["collections"], responses=ERROR_RESPONSES)


@router.post("", dependencies=[ADMIN], status_code=status.HTTP_201_CREATED)
def create_collection(spec: CollectionCreate, engine: EngineDep) -> Collection:
    """Create a collection of ``dim``-dimensional vectors compared by ``metric``."""
    return engine.create_collection(spec)


@router.get("", dependencies=[READ])
def list_collections(engine: EngineDep) -> CollectionList:
    """Every collection, by name."""
    return CollectionList(collections=engine.list_collections())


@router.get("/{name}", dependencies=[READ])
def get_collection(name: str, engine: EngineDep) -> Collection:
    """A collection's settings, document count and vector index state."""
    return engine.get_collection(name)


@router.delete("/{name}", dependencies=[ADMIN])
def delete_collection(name: str, engine: EngineDep) -> DeleteResult:
    """Drop a collection with all its documents."""
    return engine.delete_collection(name)


@router.put("/{name}/query-defaults", dependencies=[ADMIN])
def set_query_defaults(name: str, defaults: QueryDefaults, engine: EngineDep) -> Collection:
    """The fusion and alpha the collection's queries use when they name none."""
    return engine.set_query_defaults(name, defaults)


@router.delete("/{name}/query-defaults", dependencies=[ADMIN])
def clear_query_defaults(name: str, engine: EngineDep) -> Collection:
    """Back to the service's fusion and alpha."""
    return engine.set_query_defaults(name, None)
