"""Every write: documents upserted (embedded first when the collection has an embedder) and
deleted, state put and deleted, and transactions of them, each in one Postgres transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg import sql

from unidb.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, UnidbError
from unidb.indexing import chunking
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
from unidb.service.store.documents import Chunks


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

    def _with_embeddings(
        self, collection: str, documents_: list[Document], *, skip_unchanged: bool = True
    ) -> Embedded:
        """Documents without an embedding get one from the collection's embedder, if any; in
        a chunked collection, each changed document is split and each chunk embedded
        (``skip_unchanged``: one stored already as it is, left out).

        Called outside any transaction: a model call must not hold a connection."""
        with self.db.transaction() as conn:
            row = catalog.get(conn, collection)
            stored = (
                self._stored_hashes(conn, row, documents_) if row.chunked and skip_unchanged else {}
            )
        if row.chunked:
            return self._chunked(row, documents_, stored)
        missing = [d for d in documents_ if d.embedding is None] if row.embedder else []
        embedder = self.embedders.get(row) if missing else None
        if embedder is None:
            return Embedded(documents_)
        vectors = self.embedders.embed(
            embedder, [document_body(d.text, d.metadata) for d in missing]
        )
        filled = {id(d): v for d, v in zip(missing, vectors, strict=True)}
        return Embedded(
            [
                d.model_copy(update={"embedding": filled[id(d)]}) if id(d) in filled else d
                for d in documents_
            ]
        )

    def _stored_hashes(
        self, conn: Connection, row: catalog.CollectionRow, documents_: list[Document]
    ) -> dict[str, bytes]:
        return dict(
            conn.execute(
                "SELECT id, content_hash FROM unidb.documents"
                " WHERE collection_id = %s AND id = ANY(%s)",
                (row.id, list({d.id for d in documents_})),
            ).fetchall()
        )

    def _chunked(
        self, row: catalog.CollectionRow, documents_: list[Document], stored: dict[str, bytes]
    ) -> Embedded:
        """Split and embed the documents that change. One whose text and metadata were
        stored already (``stored``: id to content hash) is left out, so it is neither split
        nor embedded again; the write checks that it is still stored so."""
        assert row.chunker is not None
        # refused here with the same words as the write would, before any model call; its
        # content hashes are those of the latest document of each id, in order
        batch = documents.prepare(row, documents_, self.limits, [_NO_CHUNKS] * len(documents_))
        latest = [documents_[i] for i in documents.latest_per_id(documents_)]
        unchanged = {
            d.id: digest
            for d, digest in zip(latest, batch.content_hashes, strict=True)
            if stored.get(d.id) == digest
        }
        changed = [d for d in latest if d.id not in unchanged]
        spans = [
            chunking.split(d.text, row.chunker.kind, row.chunker.size, row.chunker.overlap)
            for d in changed
        ]
        for doc, doc_spans in zip(changed, spans, strict=True):
            if len(doc_spans) > chunking.MAX_CHUNKS_PER_DOCUMENT:
                raise PayloadTooLarge(
                    f"document {doc.id!r} splits into {len(doc_spans)} chunks, over the limit "
                    f"of {chunking.MAX_CHUNKS_PER_DOCUMENT}: use a larger chunk size",
                    field="documents",
                )
        total = sum(len(doc_spans) for doc_spans in spans)
        if total > chunking.MAX_CHUNKS_PER_REQUEST:
            raise PayloadTooLarge(
                f"the documents split into {total} chunks, over the limit of "
                f"{chunking.MAX_CHUNKS_PER_REQUEST} a request may embed: send fewer at a time",
                field="documents",
            )
        bodies = [
            document_body(d.text[start:end], d.metadata)
            for d, doc_spans in zip(changed, spans, strict=True)
            for start, end in doc_spans
        ]
        embedder = self.embedders.get(row)
        assert embedder is not None  # a chunker needs one (checked at create)
        vectors = np.zeros((len(bodies), row.dim), dtype=np.float32)
        for at in range(0, len(bodies), EMBED_BATCH):
            part = self.embedders.embed(embedder, bodies[at : at + EMBED_BATCH])
            vectors[at : at + EMBED_BATCH] = np.asarray(part, dtype=np.float32)
        chunks = []
        at = 0
        for doc_spans in spans:
            chunks.append(Chunks(doc_spans, vectors[at : at + len(doc_spans)]))
            at += len(doc_spans)
        return Embedded(changed, chunks, unchanged=unchanged, collection_id=row.id)

    def upsert_documents(self, collection: str, documents_: list[Document]) -> UpsertResult:
        embedded = self._with_embeddings(collection, documents_)
        with self.db.transaction() as conn:
            result = self.upsert_into(conn, collection, embedded)
        self.metrics.ingested.labels(collection).inc(len(documents_))
        return result

    def upsert_into(self, conn: Connection, collection: str, embedded: Embedded) -> UpsertResult:
        # the collection is held against a concurrent drop until commit
        row = catalog.get(conn, collection, lock=True)
        made_for = embedded.collection_id
        if row.chunked != (embedded.chunks is not None) or made_for not in (None, row.id):
            # the collection was dropped and made again since it was read
            raise Conflict(f"collection {collection!r} changed during the write; send it again")
        if embedded.unchanged:
            _check_still_stored(conn, row, embedded.unchanged)
        skipped = len(embedded.unchanged)
        if not embedded.documents:
            return UpsertResult(written=0, unchanged=skipped)
        result = documents.upsert(conn, row, embedded.documents, self.limits, embedded.chunks)
        return UpsertResult(written=result.written, unchanged=result.unchanged + skipped)

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
        # the ops before it in the transaction may change what is stored: every chunked
        # document is split and embedded
        embedded = self._with_embeddings(op.collection, op.documents, skip_unchanged=False)
        return _EmbeddedUpsert(op.collection, embedded)

    def _apply(self, conn: Connection, op: Any) -> StateEntry | UpsertResult | DeleteResult:
        if isinstance(op, PutStateOp):
            return self._put_state(conn, op.namespace, op.key, op.value, op.if_version)
        if isinstance(op, DeleteStateOp):
            state.delete(conn, op.namespace, op.key, if_version=op.if_version)
            return DeleteResult(deleted=True)
        if isinstance(op, _EmbeddedUpsert):
            return self.upsert_into(conn, op.collection, op.embedded)
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


# texts one embedder call is given: a server's input limit, a bounded model batch
EMBED_BATCH = 256


@dataclass(frozen=True, slots=True)
class Embedded:
    """Documents ready to write: embedded, and in a chunked collection (``collection_id``)
    split into ``chunks`` (one per document), with ``unchanged`` ones (id to the content
    hash they were found stored with) left out."""

    documents: list[Document]
    chunks: list[Chunks] | None = None
    unchanged: dict[str, bytes] = field(default_factory=dict)
    collection_id: int | None = None


def _check_still_stored(
    conn: Connection, row: catalog.CollectionRow, unchanged: dict[str, bytes]
) -> None:
    """Documents left out of a write as unchanged must still be stored so, now that the
    write holds them: else another writer changed one meanwhile, and the write is sent
    again (it was split and embedded for what was stored before)."""
    stored = dict(
        conn.execute(
            "SELECT id, content_hash FROM unidb.documents"
            " WHERE collection_id = %s AND id = ANY(%s) FOR SHARE",
            (row.id, list(unchanged)),
        ).fetchall()
    )
    moved = [doc_id for doc_id, digest in unchanged.items() if stored.get(doc_id) != digest]
    if moved:
        raise Conflict(
            f"document {moved[0]!r} changed while this write was being embedded; send it again",
            field="documents",
        )


@dataclass(frozen=True, slots=True)
class _EmbeddedUpsert:
    collection: str
    embedded: Embedded


_NO_CHUNKS = Chunks([], np.zeros((0, 0), dtype=np.float32))


def _delete_document(conn: Connection, collection: str, document_id: str) -> DeleteResult:
    row = catalog.get(conn, collection, lock=True)
    if not documents.delete(conn, row, document_id):
        raise NotFound(f"document {document_id!r} is not in collection {collection!r}", field="id")
    return DeleteResult(deleted=True)
