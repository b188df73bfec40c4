"""Every write: documents upserted (embedded first when the collection has an embedder) and
deleted, state put and deleted, and transactions of them, each in one Postgres transaction."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from unidb.errors import InvalidInput, NotFound, UnidbError
from unidb.indexing.bm25 import document_body
from unidb.indexing.pg import Connection
from unidb.models import (
    DeleteCount,
    DeleteDocumentOp,
    DeleteResult,
    DeleteStateOp,
    DeleteWhere,
    Document,
    PutStateOp,
    StateEntry,
    StatePut,
    TransactionRequest,
    TransactionResult,
    UpsertDocumentsOp,
    UpsertResult,
)
from unidb.service.collection_embedders import CollectionEmbedders
from unidb.service.config import Settings
from unidb.service.db.database import Database
from unidb.service.metrics import Metrics
from unidb.service.search.planner import QueryPlanner
from unidb.service.store import catalog, documents, state
from unidb.service.store.commit_tokens import at_op, commit_token, current_xid, wal_position


class Writes:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        embedders: CollectionEmbedders,
        planner: QueryPlanner,
        metrics: Metrics,
    ) -> None:
        self.db = db
        self.settings = settings
        self.embedders = embedders
        self.planner = planner
        self.metrics = metrics
        self.limits = documents.Limits(
            max_batch_documents=settings.max_batch_documents,
            max_text_chars=settings.max_text_chars,
        )

    def _with_embeddings(self, collection: str, documents_: list[Document]) -> list[Document]:
        """Documents without an embedding get one from the collection's embedder, if any.

        Called outside any transaction: a model call must not hold a connection."""
        with self.db.transaction() as conn:
            row = catalog.get(conn, collection)
        missing = [d for d in documents_ if d.embedding is None] if row.embedder else []
        embedder = self.embedders.get(row) if missing else None
        if embedder is None:
            return documents_
        vectors = self.embedders.embed(
            embedder, [document_body(d.text, d.metadata) for d in missing]
        )
        filled = {id(d): v for d, v in zip(missing, vectors, strict=True)}
        return [
            d.model_copy(update={"embedding": filled[id(d)]}) if id(d) in filled else d
            for d in documents_
        ]

    def upsert_documents(self, collection: str, documents_: list[Document]) -> UpsertResult:
        documents_ = self._with_embeddings(collection, documents_)
        with self.db.transaction() as conn:
            result = self.upsert_into(conn, collection, documents_)
        self.metrics.ingested.labels(collection).inc(len(documents_))
        return result

    def upsert_into(
        self, conn: Connection, collection: str, documents_: list[Document]
    ) -> UpsertResult:
        # the collection is held against a concurrent drop until commit
        row = catalog.get(conn, collection, lock=True)
        return documents.upsert(conn, row, documents_, self.limits)

    def delete_document(self, collection: str, document_id: str) -> DeleteResult:
        with self.db.transaction() as conn:
            return _delete_document(conn, collection, document_id)

    def delete_documents(self, collection: str, request: DeleteWhere) -> DeleteCount:
        if request.all:
            if request.filter or request.ids is not None:
                raise InvalidInput(
                    "all deletes every document: give it without a filter or ids", field="all"
                )
        elif request.filter is None and request.ids is None:
            raise InvalidInput(
                "give a filter, ids or both; to delete every document, send all: true",
                field="filter",
            )
        elif request.filter == {} and request.ids is None:
            # an empty filter admits every document: deleting them all must be said outright
            raise InvalidInput(
                "an empty filter matches every document; send all: true to delete them all",
                field="filter",
            )
        with self.db.transaction() as conn:
            # the collection first: nothing is compiled for a collection that is not there
            row = catalog.get(conn, collection, lock=True)
            parts: list[sql.Composable] = [sql.SQL("TRUE")]
            params: list[Any] = []
            if request.filter:
                compiled = self.planner.compiled_filter(request.filter)
                if compiled.matches_everything and request.ids is None:
                    raise InvalidInput(
                        "this filter matches every document whatever its metadata; send "
                        "all: true to delete them all",
                        field="filter",
                    )
                parts.append(compiled.expression)
                params.extend(compiled.params)
            if request.ids is not None:
                parts.append(sql.SQL("d.id = ANY({})").format(sql.Placeholder()))
                params.append(request.ids)
            where = sql.SQL(" AND ").join(parts)
            return DeleteCount(deleted=documents.delete_where(conn, row, where, params))

    def transact(self, request: TransactionRequest) -> TransactionResult:
        """Apply every operation in one transaction, or none; returns the commit token."""
        ops = []
        for index, op in enumerate(request.ops):
            try:
                ops.append(self._embedded_op(op))
            except UnidbError as exc:
                raise at_op(exc, index) from exc
        results: list[StateEntry | UpsertResult | DeleteResult] = []
        with self.db.transaction() as conn:
            for index, op in enumerate(ops):
                try:
                    results.append(self._apply(conn, op))
                except UnidbError as exc:
                    raise at_op(exc, index) from exc
            xid = current_xid(conn)
        # read after the commit: the WAL position is then past its commit record
        with self.db.errors(), self.db.pool.connection() as conn:
            lsn = wal_position(conn)
        return TransactionResult(results=results, commit_token=commit_token(xid, lsn))

    def _embedded_op(self, op: Any) -> Any:
        if not isinstance(op, UpsertDocumentsOp):
            return op
        return op.model_copy(
            update={"documents": self._with_embeddings(op.collection, op.documents)}
        )

    def _apply(self, conn: Connection, op: Any) -> StateEntry | UpsertResult | DeleteResult:
        if isinstance(op, PutStateOp):
            return self._put_state(conn, op.namespace, op.key, op.value, op.if_version)
        if isinstance(op, DeleteStateOp):
            state.delete(conn, op.namespace, op.key, if_version=op.if_version)
            return DeleteResult(deleted=True)
        if isinstance(op, UpsertDocumentsOp):
            return self.upsert_into(conn, op.collection, op.documents)
        assert isinstance(op, DeleteDocumentOp)
        return _delete_document(conn, op.collection, op.id)

    def put_state(self, namespace: str, key: str, body: StatePut) -> StateEntry:
        with self.db.transaction() as conn:
            return self._put_state(conn, namespace, key, body.value, body.if_version)

    def _put_state(
        self, conn: Connection, namespace: str, key: str, value: Any, if_version: int | None
    ) -> StateEntry:
        state.check_value(value, max_bytes=self.settings.max_state_bytes)
        return state.put(conn, namespace, key, value, if_version=if_version)

    def delete_state(self, namespace: str, key: str, if_version: int | None = None) -> DeleteResult:
        with self.db.transaction() as conn:
            state.delete(conn, namespace, key, if_version=if_version)
        return DeleteResult(deleted=True)


def _delete_document(conn: Connection, collection: str, document_id: str) -> DeleteResult:
    row = catalog.get(conn, collection, lock=True)
    if not documents.delete(conn, row, document_id):
        raise NotFound(f"document {document_id!r} is not in collection {collection!r}", field="id")
    return DeleteResult(deleted=True)
