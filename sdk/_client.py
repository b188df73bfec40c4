"""What ``Client`` and ``AsyncClient`` share: requests built and responses read, with no I/O.

The two clients are one definition: ``_async_client.py`` is written by hand and
``_sync_client.py`` is generated from it (``python sdk/_async_to_sync.py``), so every
argument check, path and body lives here once and both clients call it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import httpx
from pydantic import TypeAdapter, ValidationError

from .errors import InvalidInput, Unavailable, UnidbError, error_from_response, field_from_location
from .models import (
    ChunkerSpec,
    CollectionCreate,
    Consistency,
    ContextRequest,
    DeleteWhere,
    Document,
    EmbedderSpec,
    Fusion,
    IndexBuildRequest,
    Job,
    Metric,
    QueryDefaults,
    QueryMode,
    QueryRequest,
    RerankSpec,
    StatePut,
    TransactionRequest,
    TransactionResult,
    UpsertRequest,
    UpsertResult,
    WarmRequest,
)
from .vector_encoding import pack as pack_vector

if TYPE_CHECKING:
    from ._sync_backend import Backend

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 60.0
JOB_POLL_S = 0.2

DocumentLike = Document | Mapping[str, Any]


def open_embedded(path: str | Path, **settings: Any) -> Backend:
    """An engine with its own Postgres under ``path``; the server is imported only here."""
    try:
        from unidb.service.engine import Engine
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "Client.embedded needs the server extra: pip install 'unidb[server]'"
        ) from exc
    return Engine.open_embedded(Path(path), **settings)


def check_seams(backend: object, transport: object) -> None:
    if backend is not None and transport is not None:
        raise ValueError("pass backend= (an engine in this process) or transport=, not both")


def auth_headers(headers: Mapping[str, str] | None, api_key: str | None) -> dict[str, str]:
    """The caller's headers, with ``Authorization: Bearer`` from ``api_key`` or, failing
    that, the ``UNIDB_API_KEY`` environment variable."""
    merged = dict(headers or {})
    key = api_key or os.environ.get("UNIDB_API_KEY")
    if key and not any(name.lower() == "authorization" for name in merged):
        merged["Authorization"] = f"Bearer {key}"
    return merged


def response_body(response: httpx.Response) -> bytes:
    """The body of a successful response; any other raises the matching ``UnidbError``."""
    if response.is_success:
        return response.content
    try:
        body = response.json()
    except ValueError:
        body = response.text
    raise error_from_response(response.status_code, body)


def unreachable(http: httpx.Client | httpx.AsyncClient, exc: Exception) -> Unavailable:
    return Unavailable(f"cannot reach unidb at {http.base_url}: {exc}")


def json_headers(content: bytes | None) -> dict[str, str] | None:
    return {"content-type": "application/json"} if content is not None else None


# -- bodies --------------------------------------------------------------------------------


def invalid_from(exc: ValidationError, *, root: str = "") -> InvalidInput:
    first = exc.errors()[0]
    return InvalidInput(f"{first['msg']}", field=field_from_location(first["loc"], root=root))


def json_body(model: Any) -> bytes:
    return bytes(model.model_dump_json(exclude_none=True).encode())


def state_body(body: StatePut) -> bytes:
    # a null value is a value; only an absent if_version is left out
    exclude = {"if_version"} if body.if_version is None else None
    return body.model_dump_json(exclude=exclude).encode()


def query_body(request: QueryRequest) -> bytes:
    """A query as JSON, its vector packed as base64 float32; fields left unset are left
    out (the server's defaults, or the collection's query defaults, apply)."""
    fields = request.model_dump(
        mode="json", exclude_none=True, exclude_unset=True, exclude={"vector"}
    )
    if "rerank" in request.model_fields_set and request.rerank is None:
        fields["rerank"] = None  # said outright: not even the collection's default
    if request.vector is not None:
        fields["vector"] = pack_vector(request.vector)
    return json.dumps(fields).encode()


def wire_documents(documents: list[Document]) -> bytes:
    packed = [doc.model_copy(update={"embedding": pack_vector(doc.embedding)}) for doc in documents]
    return (
        UpsertRequest.model_construct(documents=packed).model_dump_json(exclude_none=True).encode()
    )


# -- requests from a method's arguments ----------------------------------------------------

_DOCUMENT_LIST = TypeAdapter(list[Document])


def validated_batch(documents: Sequence[DocumentLike]) -> list[Document]:
    """Documents for one call (validated in one pass), a bad one reported as ``documents[i]``."""
    try:
        return _DOCUMENT_LIST.validate_python(list(documents))
    except ValidationError as exc:
        raise invalid_from(exc, root="documents") from exc


def collection_spec(
    name: str,
    dim: int,
    metric: Metric,
    embedder: EmbedderSpec | Mapping[str, Any] | None,
    *,
    pgvector_hnsw: bool = False,
    chunker: ChunkerSpec | Mapping[str, Any] | None = None,
) -> CollectionCreate:
    """A ``CollectionCreate``; a wrong setting is an ``InvalidInput`` naming it."""
    try:
        return CollectionCreate(
            name=name,
            dim=dim,
            metric=metric,
            embedder=embedder,  # type: ignore[arg-type]
            pgvector_hnsw=pgvector_hnsw,
            chunker=chunker,  # type: ignore[arg-type]
        )
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def query_request(
    text: str | None,
    vector: Sequence[float] | None,
    k: int,
    mode: QueryMode,
    filter: Mapping[str, Any] | None,
    fusion: Fusion | None,
    alpha: float | None,
    consistency: Consistency,
    after: str | None = None,
    explain: bool = False,
    ef_search: int | None = None,
    passages: int = 3,
    rerank: RerankSpec | Mapping[str, Any] | Literal[False] | None = None,
    rerank_fallback: bool = False,
) -> QueryRequest:
    """A ``QueryRequest``; fusion and alpha left unset when not given, so that the
    collection's query defaults apply; a wrong option is an ``InvalidInput`` naming it."""
    if vector is not None and hasattr(vector, "tolist"):
        vector = vector.tolist()
    chosen: dict[str, Any] = {}
    if fusion is not None:
        chosen["fusion"] = fusion
    if alpha is not None:
        chosen["alpha"] = alpha
    if rerank is not None:
        # False: no rerank, not even the collection's default one
        chosen["rerank"] = None if rerank is False else rerank
    try:
        return QueryRequest(
            passages=passages,
            explain=explain,
            ef_search=ef_search,
            text=text,
            vector=list(vector) if vector is not None else None,
            k=k,
            mode=mode,
            filter=dict(filter) if filter is not None else None,
            consistency=consistency,
            after=after,
            rerank_fallback=rerank_fallback,
            **chosen,
        )
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def query_defaults(
    fusion: Fusion | None,
    alpha: float | None,
    rerank: RerankSpec | Mapping[str, Any] | None,
    note: str | None,
) -> QueryDefaults:
    try:
        return QueryDefaults(
            fusion=fusion,
            alpha=alpha,
            rerank=rerank,  # type: ignore[arg-type]
            note=note,
        )
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def context_request(collection: str, query: str, options: Mapping[str, Any]) -> ContextRequest:
    """A ``ContextRequest``; a wrong option is an ``InvalidInput`` naming it."""
    try:
        return ContextRequest.model_validate({"collection": collection, "query": query, **options})
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def delete_where_request(
    filter: Mapping[str, Any] | None, ids: Sequence[str] | None, all: bool
) -> DeleteWhere:
    try:
        return DeleteWhere(
            filter=dict(filter) if filter is not None else None,
            ids=list(ids) if ids is not None else None,
            all=all,
        )
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def warm_request(engine: str, model: str | None) -> WarmRequest:
    try:
        if engine.startswith(("http://", "https://")):
            return WarmRequest(engine_url=engine, model=model)
        return WarmRequest(engine=engine, model=model)
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def index_request(kind: str, device: str, params: Mapping[str, Any] | None) -> IndexBuildRequest:
    try:
        return IndexBuildRequest.model_validate(
            {"kind": kind, "device": device, "params": dict(params or {})}
        )
    except ValidationError as exc:
        raise invalid_from(exc) from exc


def tool_arguments(arguments: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """A tool call's arguments as a dict, from a dict or the model's JSON text."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError as exc:
            raise InvalidInput(f"arguments are not JSON: {exc}", field="arguments") from exc
    if not isinstance(arguments, Mapping | None):
        raise InvalidInput("arguments must be a JSON object", field="arguments")
    return dict(arguments or {})


def tool_error(exc: ValidationError) -> dict[str, Any]:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "arguments"
    return InvalidInput(f"{where}: {first['msg']}", field=where).to_dict()


# -- what the clients do between calls -----------------------------------------------------


def batched(items: Iterable[DocumentLike], size: int) -> Iterator[list[DocumentLike]]:
    batch: list[DocumentLike] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


_POSITION = re.compile(r"^documents\[(\d+)\]")


def shifted(error: UnidbError, offset: int) -> UnidbError:
    """``error`` with ``documents[i]`` in its field counted from the start of the stream."""
    if error.field is None or not _POSITION.match(error.field):
        return error
    field = _POSITION.sub(lambda m: f"documents[{int(m.group(1)) + offset}]", error.field)
    return type(error)(error.message, field=field)


class IngestTally:
    """The batches of one ``ingest``: each one's documents checked as it is cut, results
    summed as they come back, and errors naming a document by its place in the stream."""

    def __init__(
        self,
        batch_size: int,
        concurrency: int,
        on_batch: Callable[[int, UpsertResult], None] | None,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self.batch_size = batch_size
        self._on_batch = on_batch
        self._sent = self._written = self._unchanged = 0

    def batches(self, documents: Iterable[DocumentLike]) -> Iterator[tuple[int, list[Document]]]:
        """``(offset, documents)`` per batch, each validated before the next is cut."""
        for batch in batched(documents, self.batch_size):
            try:
                prepared = validated_batch(batch)
            except UnidbError as exc:
                raise shifted(exc, self._sent) from exc
            yield self._sent, prepared
            self._sent += len(prepared)

    def add(self, size: int, result: UpsertResult) -> None:
        self._written += result.written
        self._unchanged += result.unchanged
        if self._on_batch is not None:
            self._on_batch(size, result)

    def total(self) -> UpsertResult:
        return UpsertResult(written=self._written, unchanged=self._unchanged)


_JOB_ENDED = ("done", "failed", "cancelled")


class JobWatch:
    """Polling one job: a progress bar if asked, and ``Unavailable`` past the deadline."""

    def __init__(self, job_id: int, *, progress: bool, timeout: float | None) -> None:
        self._job_id, self._timeout = job_id, timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._bar: Any = None
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=100, desc=f"job {job_id}", unit="%")

    def ended(self, job: Job) -> bool:
        if self._bar is not None:
            self._bar.n = round(job.progress * 100)
            self._bar.refresh()
        if job.status in _JOB_ENDED:
            return True
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise Unavailable(f"job {self._job_id} is still {job.status} after {self._timeout} s")
        return False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()


class Writes:
    """The writes a transaction block collects; sent as one ``TransactionRequest``."""

    def __init__(self) -> None:
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

    def _request(self, exc_type: type[BaseException] | None) -> TransactionRequest | None:
        """What to send on leaving the block: nothing if it raised or wrote nothing."""
        if exc_type is not None or not self._ops:
            return None
        try:
            return TransactionRequest.model_validate({"ops": self._ops})
        except ValidationError as error:
            raise invalid_from(error) from error
