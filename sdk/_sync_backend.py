"""Generated from ``_async_backend.py`` by ``python sdk/_async_to_sync.py``: edit that file,
not this one, then regenerate."""

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


class Backend(Protocol):
    """What a client talks to: a unidb server over HTTP, or an engine in this process."""

    def create_collection(self, spec: CollectionCreate) -> Collection: ...
    def get_collection(self, name: str) -> Collection: ...
    def list_collections(self) -> list[Collection]: ...
    def set_query_defaults(self, name: str, defaults: QueryDefaults | None) -> Collection: ...
    def delete_collection(self, name: str) -> DeleteResult: ...
    def upsert_documents(self, collection: str, documents: list[Document]) -> UpsertResult: ...
    def get_document(self, collection: str, document_id: str) -> StoredDocument: ...
    def delete_document(self, collection: str, document_id: str) -> DeleteResult: ...
    def delete_documents(self, collection: str, request: DeleteWhere) -> DeleteCount: ...
    def query(self, collection: str, request: QueryRequest) -> QueryResponse: ...
    def get_state(self, namespace: str, key: str) -> StateEntry: ...
    def put_state(self, namespace: str, key: str, body: StatePut) -> StateEntry: ...
    def delete_state(
        self, namespace: str, key: str, if_version: int | None = None
    ) -> DeleteResult: ...
    def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList: ...
    def transact(self, request: TransactionRequest) -> TransactionResult: ...
    def build_context(self, request: ContextRequest) -> ContextResponse: ...
    def list_prefixes(self, collection: str | None = None, *, limit: int = 100) -> PrefixList: ...
    def warm_prefix(self, prefix_key: str, request: WarmRequest) -> WarmResult: ...
    def check_engines(self) -> EngineChecks: ...
    def build_index(self, collection: str, request: IndexBuildRequest) -> Job: ...
    def get_job(self, job_id: int) -> Job: ...
    def cancel_job(self, job_id: int) -> Job: ...
    def health(self) -> Health: ...
    def close(self) -> None: ...


class _HttpBackend:
    """``Backend`` over a running ``unidb serve``: each call one HTTP request."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def _send(self, method: str, path: str, content: bytes | None = None) -> bytes:
        try:
            response = self._http.request(
                method, path, content=content, headers=json_headers(content)
            )
        except httpx.TransportError as exc:
            raise unreachable(self._http, exc) from exc
        return response_body(response)

    def create_collection(self, spec: CollectionCreate) -> Collection:
        body = self._send("POST", "/v1/collections", spec.model_dump_json().encode())
        return Collection.model_validate_json(body)

    def get_collection(self, name: str) -> Collection:
        return Collection.model_validate_json(self._send("GET", collection_path(name)))

    def list_collections(self) -> list[Collection]:
        body = self._send("GET", "/v1/collections")
        return CollectionList.model_validate_json(body).collections

    def set_query_defaults(self, name: str, defaults: QueryDefaults | None) -> Collection:
        path = f"{collection_path(name)}/query-defaults"
        if defaults is None:
            return Collection.model_validate_json(self._send("DELETE", path))
        return Collection.model_validate_json(self._send("PUT", path, json_body(defaults)))

    def delete_collection(self, name: str) -> DeleteResult:
        body = self._send("DELETE", collection_path(name))
        return DeleteResult.model_validate_json(body)

    def upsert_documents(self, collection: str, documents: list[Document]) -> UpsertResult:
        path = f"{collection_path(collection)}/documents"
        body = self._send("POST", path, wire_documents(documents))
        return UpsertResult.model_validate_json(body)

    def get_document(self, collection: str, document_id: str) -> StoredDocument:
        body = self._send("GET", document_path(collection, document_id))
        return StoredDocument.model_validate_json(body)

    def delete_document(self, collection: str, document_id: str) -> DeleteResult:
        body = self._send("DELETE", document_path(collection, document_id))
        return DeleteResult.model_validate_json(body)

    def delete_documents(self, collection: str, request: DeleteWhere) -> DeleteCount:
        path = f"{collection_path(collection)}/documents/delete"
        return DeleteCount.model_validate_json(self._send("POST", path, json_body(request)))

    def query(self, collection: str, request: QueryRequest) -> QueryResponse:
        path = f"{collection_path(collection)}/query"
        return QueryResponse.model_validate_json(self._send("POST", path, query_body(request)))

    def get_state(self, namespace: str, key: str) -> StateEntry:
        body = self._send("GET", state_path(namespace, key))
        return StateEntry.model_validate_json(body)

    def put_state(self, namespace: str, key: str, body: StatePut) -> StateEntry:
        path = state_path(namespace, key)
        return StateEntry.model_validate_json(self._send("PUT", path, state_body(body)))

    def delete_state(self, namespace: str, key: str, if_version: int | None = None) -> DeleteResult:
        body = self._send("DELETE", state_delete_path(namespace, key, if_version))
        return DeleteResult.model_validate_json(body)

    def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList:
        body = self._send("GET", state_list_path(namespace, prefix, after, limit))
        return StateList.model_validate_json(body)

    def transact(self, request: TransactionRequest) -> TransactionResult:
        body = self._send("POST", "/v1/transactions", json_body(request))
        return TransactionResult.model_validate_json(body)

    def build_context(self, request: ContextRequest) -> ContextResponse:
        body = self._send("POST", "/v1/context", json_body(request))
        return ContextResponse.model_validate_json(body)

    def list_prefixes(self, collection: str | None = None, *, limit: int = 100) -> PrefixList:
        body = self._send("GET", prefixes_path(collection, limit))
        return PrefixList.model_validate_json(body)

    def warm_prefix(self, prefix_key: str, request: WarmRequest) -> WarmResult:
        body = self._send("POST", warm_path(prefix_key), json_body(request))
        return WarmResult.model_validate_json(body)

    def check_engines(self) -> EngineChecks:
        return EngineChecks.model_validate_json(self._send("GET", "/v1/engines"))

    def build_index(self, collection: str, request: IndexBuildRequest) -> Job:
        path = f"{collection_path(collection)}/index"
        return Job.model_validate_json(self._send("POST", path, json_body(request)))

    def get_job(self, job_id: int) -> Job:
        return Job.model_validate_json(self._send("GET", job_path(job_id)))

    def cancel_job(self, job_id: int) -> Job:
        return Job.model_validate_json(self._send("DELETE", job_path(job_id)))

    def health(self) -> Health:
        return Health.model_validate_json(self._send("GET", "/healthz"))

    def close(self) -> None:
        self._http.close()
