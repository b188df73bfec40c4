from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import quote, urlencode

import httpx
from pydantic import TypeAdapter, ValidationError

from .errors import (
    InvalidInput,
    NotFound,
    Unavailable,
    UnidbError,
    error_from_response,
    field_from_location,
)
from .models import (
    DEFAULT_ALPHA,
    DEFAULT_FUSION,
    Collection,
    CollectionCreate,
    CollectionList,
    Consistency,
    ContextOrder,
    ContextRequest,
    ContextResponse,
    ContextTemplate,
    DeleteCount,
    DeleteResult,
    DeleteWhere,
    Document,
    EmbedderSpec,
    Fusion,
    Health,
    IndexBuildRequest,
    Job,
    Metric,
    PrefixList,
    QueryMode,
    QueryRequest,
    QueryResponse,
    StateEntry,
    StateList,
    StatePut,
    StoredDocument,
    TransactionRequest,
    TransactionResult,
    UpsertRequest,
    UpsertResult,
    WarmRequest,
    WarmResult,
)
from .tools import BY_NAME as TOOLS_BY_NAME
from .tools import ToolFormat
from .tools import definitions as tool_definitions
from .tools import run as run_tool

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0

DocumentLike = Document | Mapping[str, Any]


class Backend(Protocol):
    """What a client talks to: a unidb server over HTTP, or an engine in this process."""

    def create_collection(self, spec: CollectionCreate) -> Collection: ...
    def get_collection(self, name: str) -> Collection: ...
    def list_collections(self) -> list[Collection]: ...
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
    def build_index(self, collection: str, request: IndexBuildRequest) -> Job: ...
    def get_job(self, job_id: int) -> Job: ...
    def cancel_job(self, job_id: int) -> Job: ...
    def health(self) -> Health: ...
    def close(self) -> None: ...


def _batched(items: Iterable[DocumentLike], size: int) -> Iterator[list[DocumentLike]]:
    batch: list[DocumentLike] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


_POSITION = re.compile(r"^documents\[(\d+)\]")


def _shifted(error: UnidbError, offset: int) -> UnidbError:
    """``error`` with ``documents[i]`` in its field counted from the start of the stream."""
    if error.field is None or not _POSITION.match(error.field):
        return error
    field = _POSITION.sub(lambda m: f"documents[{int(m.group(1)) + offset}]", error.field)
    return type(error)(error.message, field=field)


def _invalid_from(exc: ValidationError, *, root: str = "") -> InvalidInput:
    first = exc.errors()[0]
    return InvalidInput(f"{first['msg']}", field=field_from_location(first["loc"], root=root))


_DOCUMENT_LIST = TypeAdapter(list[Document])


def _validated_batch(documents: Sequence[DocumentLike]) -> list[Document]:
    """Documents for one call (validated in one pass), a bad one reported as ``documents[i]``."""
    try:
        return _DOCUMENT_LIST.validate_python(list(documents))
    except ValidationError as exc:
        raise _invalid_from(exc, root="documents") from exc


def _packed_embedding(value: Any) -> Any:
    """An embedding as base64 little-endian float32: a third of the JSON, parsed at once."""
    if value is None or isinstance(value, str):
        return value
    try:
        if hasattr(value, "astype"):
            raw = value.astype("<f4").tobytes()
        else:
            packed = array("f", value)
            if sys.byteorder == "big":
                packed.byteswap()
            raw = packed.tobytes()
    except (TypeError, ValueError, OverflowError):
        return value  # let the server say what is wrong with it
    return base64.b64encode(raw).decode("ascii")


def _wire_documents(documents: list[Document]) -> bytes:
    packed = [
        doc.model_copy(update={"embedding": _packed_embedding(doc.embedding)}) for doc in documents
    ]
    return (
        UpsertRequest.model_construct(documents=packed).model_dump_json(exclude_none=True).encode()
    )


def _query_request(
    text: str | None,
    vector: Sequence[float] | None,
    k: int,
    mode: QueryMode,
    filter: Mapping[str, Any] | None,
    fusion: Fusion,
    alpha: float,
    consistency: Consistency,
    after: str | None = None,
) -> QueryRequest:
    if vector is not None and hasattr(vector, "tolist"):
        vector = vector.tolist()
    return QueryRequest(
        text=text,
        vector=list(vector) if vector is not None else None,
        k=k,
        mode=mode,
        filter=dict(filter) if filter is not None else None,
        fusion=fusion,
        alpha=alpha,
        consistency=consistency,
        after=after,
    )


def _context_request(collection: str, query: str, options: Mapping[str, Any]) -> ContextRequest:
    """A ``ContextRequest``; a wrong option is an ``InvalidInput`` naming it."""
    try:
        return ContextRequest.model_validate({"collection": collection, "query": query, **options})
    except ValidationError as exc:
        raise _invalid_from(exc) from exc


_JOB_ENDED = ("done", "failed", "cancelled")
_JOB_POLL_S = 0.2


def _index_request(kind: str, device: str, params: Mapping[str, Any] | None) -> IndexBuildRequest:
    try:
        return IndexBuildRequest.model_validate(
            {"kind": kind, "device": device, "params": dict(params or {})}
        )
    except ValidationError as exc:
        raise _invalid_from(exc) from exc


def _prefixes_path(collection: str | None, limit: int) -> str:
    params = {"limit": str(limit)}
    if collection is not None:
        params["collection"] = collection
    return "/v1/prefixes?" + urlencode(params)


def _segment(value: str, field: str) -> str:
    """``value`` as one URL path segment that no client or proxy can reinterpret: every
    character outside A-Z a-z 0-9 ``-_~`` is percent-encoded, dots included, so ``.`` and
    ``..`` stay ids instead of becoming dot segments that a URL normaliser removes.

    A control character cannot be matched by the server's routes (nor stored there)."""
    if _CONTROL.search(value):
        raise InvalidInput(
            "must not contain control characters (U+0000-U+001F, U+007F)", field=field
        )
    try:
        return quote(value, safe="").replace(".", "%2E")
    except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
        raise InvalidInput("is not valid Unicode text", field=field) from exc


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _warm_path(prefix_key: str) -> str:
    return f"/v1/prefixes/{_segment(prefix_key, 'prefix_key')}/warm"


def _warm_request(engine: str, model: str | None) -> WarmRequest:
    try:
        if engine.startswith(("http://", "https://")):
            return WarmRequest(engine_url=engine, model=model)
        return WarmRequest(engine=engine, model=model)
    except ValidationError as exc:
        raise _invalid_from(exc) from exc


def _job_path(job_id: int) -> str:
    return f"/v1/jobs/{int(job_id)}"


def _state_path(namespace: str, key: str | None = None) -> str:
    path = f"/v1/state/{_segment(namespace, 'namespace')}"
    return path if key is None else f"{path}/{_segment(key, 'key')}"


def _state_body(body: StatePut) -> bytes:
    # a null value is a value; only an absent if_version is left out
    exclude = {"if_version"} if body.if_version is None else None
    return body.model_dump_json(exclude=exclude).encode()


def _state_query(prefix: str, after: str | None, limit: int) -> str:
    params = {"prefix": prefix, "limit": str(limit)}
    if after is not None:
        params["after"] = after
    return "?" + urlencode(params)


def _collection_path(name: str) -> str:
    return f"/v1/collections/{_segment(name, 'collection')}"


def _document_path(collection: str, document_id: str) -> str:
    return f"{_collection_path(collection)}/documents/{_segment(document_id, 'id')}"


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = response.text
    raise error_from_response(response.status_code, body)


def _delete_where_request(
    filter: Mapping[str, Any] | None, ids: Sequence[str] | None, all: bool
) -> DeleteWhere:
    try:
        return DeleteWhere(
            filter=dict(filter) if filter is not None else None,
            ids=list(ids) if ids is not None else None,
            all=all,
        )
    except ValidationError as exc:
        raise _invalid_from(exc) from exc


def _auth_headers(headers: Mapping[str, str] | None, api_key: str | None) -> dict[str, str]:
    """The caller's headers, with ``Authorization: Bearer`` from ``api_key`` or, failing
    that, the ``UNIDB_API_KEY`` environment variable."""
    merged = dict(headers or {})
    key = api_key or os.environ.get("UNIDB_API_KEY")
    if key and not any(name.lower() == "authorization" for name in merged):
        merged["Authorization"] = f"Bearer {key}"
    return merged


class _HttpBackend:
    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def _send(self, method: str, path: str, content: bytes | None = None) -> bytes:
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach unidb at {self._http.base_url}: {exc}") from exc
        _raise_for_status(response)
        return response.content

    def create_collection(self, spec: CollectionCreate) -> Collection:
        body = self._send("POST", "/v1/collections", spec.model_dump_json().encode())
        return Collection.model_validate_json(body)

    def get_collection(self, name: str) -> Collection:
        return Collection.model_validate_json(self._send("GET", _collection_path(name)))

    def list_collections(self) -> list[Collection]:
        body = self._send("GET", "/v1/collections")
        return CollectionList.model_validate_json(body).collections

    def delete_collection(self, name: str) -> DeleteResult:
        return DeleteResult.model_validate_json(self._send("DELETE", _collection_path(name)))

    def upsert_documents(self, collection: str, documents: list[Document]) -> UpsertResult:
        payload = _wire_documents(documents)
        body = self._send("POST", f"{_collection_path(collection)}/documents", payload)
        return UpsertResult.model_validate_json(body)

    def get_document(self, collection: str, document_id: str) -> StoredDocument:
        body = self._send("GET", _document_path(collection, document_id))
        return StoredDocument.model_validate_json(body)

    def delete_document(self, collection: str, document_id: str) -> DeleteResult:
        body = self._send("DELETE", _document_path(collection, document_id))
        return DeleteResult.model_validate_json(body)

    def delete_documents(self, collection: str, request: DeleteWhere) -> DeleteCount:
        payload = request.model_dump_json(exclude_none=True).encode()
        body = self._send("POST", f"{_collection_path(collection)}/documents/delete", payload)
        return DeleteCount.model_validate_json(body)

    def query(self, collection: str, request: QueryRequest) -> QueryResponse:
        payload = request.model_dump_json(exclude_none=True).encode()
        body = self._send("POST", f"{_collection_path(collection)}/query", payload)
        return QueryResponse.model_validate_json(body)

    def health(self) -> Health:
        return Health.model_validate_json(self._send("GET", "/healthz"))

    def get_state(self, namespace: str, key: str) -> StateEntry:
        return StateEntry.model_validate_json(self._send("GET", _state_path(namespace, key)))

    def transact(self, request: TransactionRequest) -> TransactionResult:
        payload = request.model_dump_json(exclude_none=True).encode()
        return TransactionResult.model_validate_json(
            self._send("POST", "/v1/transactions", payload)
        )

    def build_context(self, request: ContextRequest) -> ContextResponse:
        payload = request.model_dump_json(exclude_none=True).encode()
        return ContextResponse.model_validate_json(self._send("POST", "/v1/context", payload))

    def list_prefixes(self, collection: str | None = None, *, limit: int = 100) -> PrefixList:
        return PrefixList.model_validate_json(self._send("GET", _prefixes_path(collection, limit)))

    def warm_prefix(self, prefix_key: str, request: WarmRequest) -> WarmResult:
        payload = request.model_dump_json(exclude_none=True).encode()
        return WarmResult.model_validate_json(self._send("POST", _warm_path(prefix_key), payload))

    def build_index(self, collection: str, request: IndexBuildRequest) -> Job:
        payload = request.model_dump_json(exclude_none=True).encode()
        body = self._send("POST", f"{_collection_path(collection)}/index", payload)
        return Job.model_validate_json(body)

    def get_job(self, job_id: int) -> Job:
        return Job.model_validate_json(self._send("GET", _job_path(job_id)))

    def cancel_job(self, job_id: int) -> Job:
        return Job.model_validate_json(self._send("DELETE", _job_path(job_id)))

    def put_state(self, namespace: str, key: str, body: StatePut) -> StateEntry:
        payload = _state_body(body)
        return StateEntry.model_validate_json(
            self._send("PUT", _state_path(namespace, key), payload)
        )

    def delete_state(self, namespace: str, key: str, if_version: int | None = None) -> DeleteResult:
        suffix = "" if if_version is None else f"?if_version={if_version}"
        return DeleteResult.model_validate_json(
            self._send("DELETE", _state_path(namespace, key) + suffix)
        )

    def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList:
        path = _state_path(namespace) + _state_query(prefix, after, limit)
        return StateList.model_validate_json(self._send("GET", path))

    def close(self) -> None:
        self._http.close()


class Transaction:
    """Writes collected by ``Client.transaction()``, applied together on exit."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._ops: list[dict[str, Any]] = []
        self.result: TransactionResult | None = None

    def put_state(
        self, namespace: str, key: str, value: Any, *, if_version: int | None = None
    ) -> None:
        self._ops.append(
            {"op": "put_state", "namespace": namespace, "key": key, "value": value,
             "if_version": if_version}
        )  # fmt: skip

    def delete_state(self, namespace: str, key: str, *, if_version: int | None = None) -> None:
        self._ops.append(
            {"op": "delete_state", "namespace": namespace, "key": key, "if_version": if_version}
        )

    def upsert(self, collection: str, documents: Sequence[DocumentLike]) -> None:
        self._ops.append(
            {"op": "upsert_documents", "collection": collection, "documents": list(documents)}
        )

    def delete(self, collection: str, document_id: str) -> None:
        self._ops.append({"op": "delete_document", "collection": collection, "id": document_id})

    @property
    def commit_token(self) -> str:
        if self.result is None:
            raise RuntimeError("the transaction has not been applied")
        return self.result.commit_token

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or not self._ops:
            return
        try:
            request = TransactionRequest.model_validate({"ops": self._ops})
        except ValidationError as error:
            raise _invalid_from(error) from error
        self.result = self._backend.transact(request)


class Client:
    """A synchronous unidb client.

    ``Client(url)`` talks to a running ``unidb serve``; ``Client.embedded(path)`` runs
    Postgres and the engine inside this process, with no TCP port.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        backend: Backend | None = None,
    ) -> None:
        if backend is None:
            http = httpx.Client(
                base_url=url, timeout=timeout, headers=_auth_headers(headers, api_key)
            )
            backend = _HttpBackend(http)
        self._backend = backend

    @classmethod
    def embedded(cls, path: str | Path, **settings: Any) -> Client:
        """Start (or reopen) an embedded unidb under ``path``: Postgres and the engine in-process.

        Extra keyword arguments override ``unidb.service`` settings (for example
        ``pool_max_size=4``). Needs the ``server`` extra.
        """
        try:
            from unidb.service.engine import Engine
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "Client.embedded needs the server extra: pip install 'unidb[server]'"
            ) from exc
        return cls(backend=Engine.open_embedded(Path(path), **settings))

    @property
    def backend(self) -> Backend:
        return self._backend

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release connections; an embedded client also stops its Postgres."""
        self._backend.close()

    def health(self) -> Health:
        """``{"status": "ok"}`` when the server and its database answer."""
        return self._backend.health()

    def create_collection(
        self,
        name: str,
        *,
        dim: int,
        metric: Metric = "cosine",
        embedder: EmbedderSpec | Mapping[str, Any] | None = None,
    ) -> Collection:
        """Create a collection for ``dim``-dimensional vectors compared by ``metric``.

        With an ``embedder`` (``{"kind": "minilm"}``, or ``{"kind": "openai", "url": ...}``)
        documents sent without embeddings are embedded on upsert, and query text on search.
        """
        spec = CollectionCreate(name=name, dim=dim, metric=metric, embedder=embedder)  # type: ignore[arg-type]
        return self._backend.create_collection(spec)

    def get_collection(self, name: str) -> Collection:
        """A collection's settings, document count and index state."""
        return self._backend.get_collection(name)

    def list_collections(self) -> list[Collection]:
        """Every collection, by name."""
        return self._backend.list_collections()

    def delete_collection(self, name: str) -> bool:
        """Drop a collection with its documents; False if there was none."""
        try:
            return self._backend.delete_collection(name).deleted
        except NotFound:
            return False

    def upsert(self, collection: str, documents: Sequence[DocumentLike]) -> UpsertResult:
        """Insert or replace documents by id, all in one transaction."""
        return self._backend.upsert_documents(collection, _validated_batch(documents))

    def ingest(
        self,
        collection: str,
        documents: Iterable[DocumentLike],
        *,
        batch_size: int = 2000,
        concurrency: int = 2,
        on_batch: Callable[[int, UpsertResult], None] | None = None,
    ) -> UpsertResult:
        """Load many documents as a pipeline of batches, each its own transaction.

        While one batch is written the next is prepared (``concurrency`` batches in
        flight), so Python and the database work at the same time. Batches commit in
        any order; on the first error the rest are not sent and the error is raised, the
        batches already acknowledged staying committed. Re-running is safe: unchanged
        documents are left as they are. ``on_batch(size, result)`` reports progress.
        """
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        written = unchanged = sent = 0
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="unidb-ingest") as pool:
            in_flight: deque[tuple[int, int, Future[UpsertResult]]] = deque()

            def settle(block: bool) -> None:
                nonlocal written, unchanged
                while in_flight and (block or len(in_flight) >= concurrency):
                    offset, size, future = in_flight.popleft()
                    try:
                        result = future.result()
                    except UnidbError as exc:
                        raise _shifted(exc, offset) from exc
                    written += result.written
                    unchanged += result.unchanged
                    if on_batch is not None:
                        on_batch(size, result)

            try:
                for batch in _batched(documents, batch_size):
                    try:
                        prepared = _validated_batch(batch)
                    except UnidbError as exc:
                        raise _shifted(exc, sent) from exc
                    settle(block=False)
                    future = pool.submit(self._backend.upsert_documents, collection, prepared)
                    in_flight.append((sent, len(prepared), future))
                    sent += len(prepared)
                settle(block=True)
            except BaseException:
                for _, _, pending in in_flight:
                    pending.cancel()
                raise
        return UpsertResult(written=written, unchanged=unchanged)

    def tools(self, format: ToolFormat = "openai") -> list[dict[str, Any]]:
        """unidb's agent tools as JSON definitions (``openai`` or ``anthropic`` format)."""
        return tool_definitions(format)

    def call_tool(self, name: str, arguments: Mapping[str, Any] | str | None = None) -> Any:
        """Run a tool the model asked for; ``arguments`` as a dict or the model's JSON text.

        Returns JSON-ready data. Errors come back as ``{"error": {"code", "message",
        "field"}}`` rather than raising, so an agent loop can hand them to the model."""
        if name not in TOOLS_BY_NAME:
            known = ", ".join(TOOLS_BY_NAME)
            return InvalidInput(f"unknown tool {name!r}; known: {known}", field="name").to_dict()
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError as exc:
                return InvalidInput(f"arguments are not JSON: {exc}", field="arguments").to_dict()
        if not isinstance(arguments, Mapping | None):
            return InvalidInput("arguments must be a JSON object", field="arguments").to_dict()
        try:
            return run_tool(self, name, dict(arguments or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "arguments"
            return InvalidInput(f"{where}: {first['msg']}", field=where).to_dict()
        except UnidbError as exc:
            return exc.to_dict()

    def transaction(self) -> Transaction:
        """Collect writes and apply them in one Postgres transaction on leaving the block:

            with client.transaction() as tx:
                tx.put_state("agent", "step", 3, if_version=2)
                tx.upsert("notes", [{"id": "n1", "text": "..."}])
            tx.commit_token   # pass as after= to see this commit from any client

        Nothing is sent if the block raises; a failing operation raises and changes nothing.
        """
        return Transaction(self._backend)

    def get_state(self, namespace: str, key: str) -> StateEntry:
        """The JSON value at ``namespace/key`` with its version (raises NotFound)."""
        return self._backend.get_state(namespace, key)

    def put_state(
        self, namespace: str, key: str, value: Any, *, if_version: int | None = None
    ) -> StateEntry:
        """Store ``value``. With ``if_version`` it is a compare-and-set: Conflict unless the
        stored version is that number (0: unless the key is new)."""
        return self._backend.put_state(namespace, key, StatePut(value=value, if_version=if_version))

    def delete_state(self, namespace: str, key: str, *, if_version: int | None = None) -> bool:
        """Delete a value; False if there was none. ``if_version`` as in ``put_state``."""
        try:
            return self._backend.delete_state(namespace, key, if_version).deleted
        except NotFound:
            return False

    def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList:
        """A page of a namespace's entries in key order; ``next_after`` continues."""
        return self._backend.list_state(namespace, prefix=prefix, after=after, limit=limit)

    def get(self, collection: str, document_id: str) -> StoredDocument:
        """One document with its version and timestamps (raises NotFound)."""
        return self._backend.get_document(collection, document_id)

    def delete(self, collection: str, document_id: str) -> bool:
        """Delete one document; False if there was none."""
        try:
            return self._backend.delete_document(collection, document_id).deleted
        except NotFound:
            return False

    def delete_where(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        ids: Sequence[str] | None = None,
        all: bool = False,
    ) -> int:
        """Delete the documents matching ``filter``, among ``ids``, or both, in one
        transaction; returns how many were deleted. An empty filter is refused
        (``InvalidInput``): ``all=True`` alone deletes every document."""
        request = _delete_where_request(filter, ids, all)
        return self._backend.delete_documents(collection, request).deleted

    def query(
        self,
        collection: str,
        *,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        mode: QueryMode = "hybrid",
        filter: Mapping[str, Any] | None = None,
        fusion: Fusion = DEFAULT_FUSION,
        alpha: float = DEFAULT_ALPHA,
        consistency: Consistency = "strong",
        after: str | None = None,
    ) -> QueryResponse:
        """Search a collection: ``mode`` bm25 | vector | hybrid (fused by ``fusion``, rrf or
        weighted with ``alpha`` the vector share). See ``QueryRequest`` for the fields."""
        request = _query_request(text, vector, k, mode, filter, fusion, alpha, consistency, after)
        return self._backend.query(collection, request)

    def context(
        self,
        collection: str,
        query: str,
        *,
        k: int = 5,
        order: ContextOrder = "reuse",
        session: str | None = None,
        tokenizer: str = "minilm",
        block_size: int = 16,
        salt: str | None = None,
        max_tokens: int | None = None,
        template: ContextTemplate | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> ContextResponse:
        """A prompt for ``query`` built from the collection, laid out so an LLM engine's
        prefix cache reuses it, with the engine's block hashes. Other ``options``: mode,
        filter, consistency, after (see ``ContextRequest``)."""
        request = _context_request(
            collection,
            query,
            {
                "k": k,
                "order": order,
                "session": session,
                "tokenizer": tokenizer,
                "block_size": block_size,
                "salt": salt,
                "max_tokens": max_tokens,
                **({"template": template} if template is not None else {}),
                **options,
            },
        )
        return self._backend.build_context(request)

    def prefixes(self, collection: str | None = None, *, limit: int = 100) -> PrefixList:
        """Context prefixes sent so far, most reused first."""
        return self._backend.list_prefixes(collection, limit=limit)

    def warm_prefix(
        self, prefix_key: str, engine_url: str, *, model: str | None = None
    ) -> WarmResult:
        """Prefill a registered prefix on an OpenAI-compatible engine (``max_tokens=1``).

        ``engine_url``: the engine's name in the server's UNIDB_KV_ENGINES or
        UNIDB_OUTBOUND_URLS, or the URL listed there."""
        return self._backend.warm_prefix(prefix_key, _warm_request(engine_url, model))

    def build_index(
        self,
        collection: str,
        *,
        kind: str = "auto",
        device: str = "auto",
        params: Mapping[str, Any] | None = None,
        wait: bool = True,
        progress: bool = False,
        timeout: float | None = None,
    ) -> Job:
        """Build the collection's FAISS index as a job (``kind`` auto | hnsw | ivf | cagra,
        ``device`` auto | cpu | gpu). With ``wait`` it returns the ended job (``progress``
        shows a bar); otherwise the queued one, to poll with ``get_job``."""
        job = self._backend.build_index(collection, _index_request(kind, device, params))
        if not wait:
            return job
        return self.wait_job(job.id, progress=progress, timeout=timeout)

    def get_job(self, job_id: int) -> Job:
        """A job's status, progress, error and stats."""
        return self._backend.get_job(job_id)

    def cancel_job(self, job_id: int) -> Job:
        """Cancel a queued or running job."""
        return self._backend.cancel_job(job_id)

    def wait_job(self, job_id: int, *, progress: bool = False, timeout: float | None = None) -> Job:
        """Poll until the job ends; raises ``Unavailable`` past ``timeout`` seconds."""
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=100, desc=f"job {job_id}", unit="%")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                job = self._backend.get_job(job_id)
                if bar is not None:
                    bar.n = round(job.progress * 100)
                    bar.refresh()
                if job.status in _JOB_ENDED:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise Unavailable(f"job {job_id} is still {job.status} after {timeout} s")
                time.sleep(_JOB_POLL_S)
        finally:
            if bar is not None:
                bar.close()


class AsyncClient:
    """An asyncio unidb client for a running ``unidb serve``; mirrors ``Client``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=url,
            timeout=timeout,
            headers=_auth_headers(headers, api_key),
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, content: bytes | None = None) -> bytes:
        headers = {"content-type": "application/json"} if content is not None else None
        try:
            response = await self._http.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise Unavailable(f"cannot reach unidb at {self._http.base_url}: {exc}") from exc
        _raise_for_status(response)
        return response.content

    async def create_collection(
        self,
        name: str,
        *,
        dim: int,
        metric: Metric = "cosine",
        embedder: EmbedderSpec | Mapping[str, Any] | None = None,
    ) -> Collection:
        spec = CollectionCreate(name=name, dim=dim, metric=metric, embedder=embedder)  # type: ignore[arg-type]
        body = await self._send("POST", "/v1/collections", spec.model_dump_json().encode())
        return Collection.model_validate_json(body)

    async def get_collection(self, name: str) -> Collection:
        return Collection.model_validate_json(await self._send("GET", _collection_path(name)))

    async def list_collections(self) -> list[Collection]:
        body = await self._send("GET", "/v1/collections")
        return CollectionList.model_validate_json(body).collections

    async def delete_collection(self, name: str) -> bool:
        try:
            body = await self._send("DELETE", _collection_path(name))
        except NotFound:
            return False
        return DeleteResult.model_validate_json(body).deleted

    async def upsert(self, collection: str, documents: Sequence[DocumentLike]) -> UpsertResult:
        body = await self._send(
            "POST",
            f"{_collection_path(collection)}/documents",
            _wire_documents(_validated_batch(documents)),
        )
        return UpsertResult.model_validate_json(body)

    async def transact(self, request: TransactionRequest) -> TransactionResult:
        """Apply operations in one transaction (see ``Client.transaction`` for the sync form)."""
        payload = request.model_dump_json(exclude_none=True).encode()
        return TransactionResult.model_validate_json(
            await self._send("POST", "/v1/transactions", payload)
        )

    async def get_state(self, namespace: str, key: str) -> StateEntry:
        return StateEntry.model_validate_json(await self._send("GET", _state_path(namespace, key)))

    async def put_state(
        self, namespace: str, key: str, value: Any, *, if_version: int | None = None
    ) -> StateEntry:
        payload = _state_body(StatePut(value=value, if_version=if_version))
        body = await self._send("PUT", _state_path(namespace, key), payload)
        return StateEntry.model_validate_json(body)

    async def delete_state(
        self, namespace: str, key: str, *, if_version: int | None = None
    ) -> bool:
        suffix = "" if if_version is None else f"?if_version={if_version}"
        try:
            body = await self._send("DELETE", _state_path(namespace, key) + suffix)
        except NotFound:
            return False
        return DeleteResult.model_validate_json(body).deleted

    async def list_state(
        self, namespace: str, *, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> StateList:
        path = _state_path(namespace) + _state_query(prefix, after, limit)
        return StateList.model_validate_json(await self._send("GET", path))

    async def get(self, collection: str, document_id: str) -> StoredDocument:
        body = await self._send("GET", _document_path(collection, document_id))
        return StoredDocument.model_validate_json(body)

    async def delete(self, collection: str, document_id: str) -> bool:
        try:
            body = await self._send("DELETE", _document_path(collection, document_id))
        except NotFound:
            return False
        return DeleteResult.model_validate_json(body).deleted

    async def delete_where(
        self,
        collection: str,
        *,
        filter: Mapping[str, Any] | None = None,
        ids: Sequence[str] | None = None,
        all: bool = False,
    ) -> int:
        request = _delete_where_request(filter, ids, all)
        payload = request.model_dump_json(exclude_none=True).encode()
        body = await self._send("POST", f"{_collection_path(collection)}/documents/delete", payload)
        return DeleteCount.model_validate_json(body).deleted

    async def query(
        self,
        collection: str,
        *,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        mode: QueryMode = "hybrid",
        filter: Mapping[str, Any] | None = None,
        fusion: Fusion = DEFAULT_FUSION,
        alpha: float = DEFAULT_ALPHA,
        consistency: Consistency = "strong",
        after: str | None = None,
    ) -> QueryResponse:
        request = _query_request(text, vector, k, mode, filter, fusion, alpha, consistency, after)
        body = await self._send(
            "POST",
            f"{_collection_path(collection)}/query",
            request.model_dump_json(exclude_none=True).encode(),
        )
        return QueryResponse.model_validate_json(body)

    async def context(self, collection: str, query: str, **options: Any) -> ContextResponse:
        """As ``Client.context``."""
        request = _context_request(collection, query, options)
        payload = request.model_dump_json(exclude_none=True).encode()
        return ContextResponse.model_validate_json(await self._send("POST", "/v1/context", payload))

    async def prefixes(self, collection: str | None = None, *, limit: int = 100) -> PrefixList:
        body = await self._send("GET", _prefixes_path(collection, limit))
        return PrefixList.model_validate_json(body)

    async def warm_prefix(
        self, prefix_key: str, engine_url: str, *, model: str | None = None
    ) -> WarmResult:
        payload = _warm_request(engine_url, model).model_dump_json(exclude_none=True)
        body = await self._send("POST", _warm_path(prefix_key), payload.encode())
        return WarmResult.model_validate_json(body)

    async def build_index(
        self,
        collection: str,
        *,
        kind: str = "auto",
        device: str = "auto",
        params: Mapping[str, Any] | None = None,
    ) -> Job:
        """Queue a FAISS build; poll ``get_job`` (as ``Client.build_index(wait=False)``)."""
        payload = _index_request(kind, device, params).model_dump_json(exclude_none=True)
        body = await self._send("POST", f"{_collection_path(collection)}/index", payload.encode())
        return Job.model_validate_json(body)

    async def get_job(self, job_id: int) -> Job:
        return Job.model_validate_json(await self._send("GET", _job_path(job_id)))

    async def cancel_job(self, job_id: int) -> Job:
        return Job.model_validate_json(await self._send("DELETE", _job_path(job_id)))
