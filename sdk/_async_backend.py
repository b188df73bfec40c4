"""What a client talks to: the ``AsyncBackend`` protocol and its HTTP implementation.

This is the source: ``_sync_backend.py`` (``Backend``, ``_HttpBackend``) is generated from
it by ``python sdk/_async_to_sync.py``. Every path and body comes from ``_client``.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from ._client import (
    json_body,
    json_headers,
    query_body,
    response_body,
    state_body,
    unreachable,
    wire_documents,
)
from ._paths import (
    collection_path,
    document_path,
    job_path,
    prefixes_path,
    state_delete_path,
    state_list_path,
    state_path,
    warm_path,
)
from .models import (
    Collection,
    CollectionCreate,
    CollectionList,
    ContextRequest,
    ContextResponse,
    DeleteCount,
    DeleteResult,
    DeleteWhere,
    Document,
    EngineChecks,
    Health,
    IndexBuildRequest,
    Job,
    PrefixList,
    QueryDefaults,
    QueryRequest,
    QueryResponse,
    StateEntry,
    StateList,
    StatePut,
    StoredDocument,
    TransactionRequest,
    TransactionResult,
    UpsertResult,
    WarmRequest,
    WarmResult,
)


class AsyncBackend(Protocol):
    """What a client talks to: a unidb server over HTTP, or an engine in this process."""

    async def create_collection(self, spec: CollectionCreate) -> Collection: ...
    async def get_collection(self, name: str) -> Collection: ...
    async def list_collections(self) -> list[Collection]: ...
    async def set_query_defaults(self, name: str, defaults: QueryDefaults | None) -> Collection: ...
    async def delete_collection(self, name: str) -> DeleteResult: ...
    async def upsert_documents(
        self, collection: str, documents: list[Document]
    ) -> UpsertResult: ...
    async def get_document(self, collection: str, document_id: str) -> StoredDocument: ...
    async def delete_document(self, collection: str, document_id: str) -> DeleteResult: ...
    async def delete_documents(self, collection: str, request: DeleteWhere) -> DeleteCount: ...
    async def query(self, collection: str, request: QueryRequest) -> QueryResponse: ...
    async def get_state(self, namespace: str, key: str) -> StateEntry: ...
    async def put_state(self, namespace: str, key: str, body: StatePut) -> StateEntry: ...
    async def delete_state(
        self, namespace: str, key: str, if_version: int | None = None
    ) -> DeleteResult: ...
    async def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList: ...
    async def transact(self, request: TransactionRequest) -> TransactionResult: ...
    async def build_context(self, request: ContextRequest) -> ContextResponse: ...
    async def list_prefixes(
        self, collection: str | None = None, *, limit: int = 100
    ) -> PrefixList: ...
    async def warm_prefix(self, prefix_key: str, request: WarmRequest) -> WarmResult: ...
    async def check_engines(self) -> EngineChecks: ...
    async def build_index(self, collection: str, request: IndexBuildRequest) -> Job: ...
    async def get_job(self, job_id: int) -> Job: ...
    async def cancel_job(self, job_id: int) -> Job: ...
    async def health(self) -> Health: ...
    async def aclose(self) -> None: ...


class _AsyncHttpBackend:
    """``AsyncBackend`` over a running ``unidb serve``: each call one HTTP request."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def _send(self, method: str, path: str, content: bytes | None = None) -> bytes:
        try:
            response = await self._http.request(
                method, path, content=content, headers=json_headers(content)
            )
        except httpx.TransportError as exc:
            raise unreachable(self._http, exc) from exc
        return response_body(response)

    async def create_collection(self, spec: CollectionCreate) -> Collection:
        body = await self._send("POST", "/v1/collections", spec.model_dump_json().encode())
        return Collection.model_validate_json(body)

    async def get_collection(self, name: str) -> Collection:
        return Collection.model_validate_json(await self._send("GET", collection_path(name)))

    async def list_collections(self) -> list[Collection]:
        body = await self._send("GET", "/v1/collections")
        return CollectionList.model_validate_json(body).collections

    async def set_query_defaults(self, name: str, defaults: QueryDefaults | None) -> Collection:
        path = f"{collection_path(name)}/query-defaults"
        if defaults is None:
            return Collection.model_validate_json(await self._send("DELETE", path))
        return Collection.model_validate_json(await self._send("PUT", path, json_body(defaults)))

    async def delete_collection(self, name: str) -> DeleteResult:
        body = await self._send("DELETE", collection_path(name))
        return DeleteResult.model_validate_json(body)

    async def upsert_documents(self, collection: str, documents: list[Document]) -> UpsertResult:
        path = f"{collection_path(collection)}/documents"
        body = await self._send("POST", path, wire_documents(documents))
        return UpsertResult.model_validate_json(body)

    async def get_document(self, collection: str, document_id: str) -> StoredDocument:
        body = await self._send("GET", document_path(collection, document_id))
        return StoredDocument.model_validate_json(body)

    async def delete_document(self, collection: str, document_id: str) -> DeleteResult:
        body = await self._send("DELETE", document_path(collection, document_id))
        return DeleteResult.model_validate_json(body)

    async def delete_documents(self, collection: str, request: DeleteWhere) -> DeleteCount:
        path = f"{collection_path(collection)}/documents/delete"
        return DeleteCount.model_validate_json(await self._send("POST", path, json_body(request)))

    async def query(self, collection: str, request: QueryRequest) -> QueryResponse:
        path = f"{collection_path(collection)}/query"
        return QueryResponse.model_validate_json(
            await self._send("POST", path, query_body(request))
        )

    async def get_state(self, namespace: str, key: str) -> StateEntry:
        body = await self._send("GET", state_path(namespace, key))
        return StateEntry.model_validate_json(body)

    async def put_state(self, namespace: str, key: str, body: StatePut) -> StateEntry:
        path = state_path(namespace, key)
        return StateEntry.model_validate_json(await self._send("PUT", path, state_body(body)))

    async def delete_state(
        self, namespace: str, key: str, if_version: int | None = None
    ) -> DeleteResult:
        body = await self._send("DELETE", state_delete_path(namespace, key, if_version))
        return DeleteResult.model_validate_json(body)

    async def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList:
        body = await self._send("GET", state_list_path(namespace, prefix, after, limit))
        return StateList.model_validate_json(body)

    async def transact(self, request: TransactionRequest) -> TransactionResult:
        body = await self._send("POST", "/v1/transactions", json_body(request))
        return TransactionResult.model_validate_json(body)

    async def build_context(self, request: ContextRequest) -> ContextResponse:
        body = await self._send("POST", "/v1/context", json_body(request))
        return ContextResponse.model_validate_json(body)

    async def list_prefixes(self, collection: str | None = None, *, limit: int = 100) -> PrefixList:
        body = await self._send("GET", prefixes_path(collection, limit))
        return PrefixList.model_validate_json(body)

    async def warm_prefix(self, prefix_key: str, request: WarmRequest) -> WarmResult:
        body = await self._send("POST", warm_path(prefix_key), json_body(request))
        return WarmResult.model_validate_json(body)

    async def check_engines(self) -> EngineChecks:
        return EngineChecks.model_validate_json(await self._send("GET", "/v1/engines"))

    async def build_index(self, collection: str, request: IndexBuildRequest) -> Job:
        path = f"{collection_path(collection)}/index"
        return Job.model_validate_json(await self._send("POST", path, json_body(request)))

    async def get_job(self, job_id: int) -> Job:
        return Job.model_validate_json(await self._send("GET", job_path(job_id)))

    async def cancel_job(self, job_id: int) -> Job:
        return Job.model_validate_json(await self._send("DELETE", job_path(job_id)))

    async def health(self) -> Health:
        return Health.model_validate_json(await self._send("GET", "/healthz"))

    async def aclose(self) -> None:
        await self._http.aclose()
