"""Collections as a whole: created, described with their derived indexes' state, dropped
with everything derived from them (BM25 and FAISS indexes, embedders, jobs, HNSW builds)."""

from __future__ import annotations

from collections.abc import Callable

from unidb.errors import NotFound
from unidb.indexing import outbox
from unidb.indexing.pg import Connection
from unidb.indexing.text_indexes import TextIndexes
from unidb.models import Collection, CollectionCreate, DeleteResult, IndexStatus, QueryDefaults
from unidb.service.collection_embedders import CollectionEmbedders
from unidb.service.db.database import Database
from unidb.service.outbound import Outbound
from unidb.service.search.ann_indexes import AnnIndexes
from unidb.service.search.hnsw_builds import HnswBuilds
from unidb.service.store import catalog, jobs


class Collections:
    def __init__(
        self,
        db: Database,
        *,
        text_indexes: TextIndexes,
        ann: AnnIndexes,
        embedders: CollectionEmbedders,
        hnsw: HnswBuilds,
        outbound: Outbound,
    ) -> None:
        self.db = db
        self.text_indexes = text_indexes
        self.ann = ann
        self.embedders = embedders
        self.hnsw = hnsw
        self.outbound = outbound
        # told a collection's name when it is dropped here
        self.on_drop: Callable[[str], None] = lambda name: None

    def create(self, spec: CollectionCreate) -> Collection:
        if spec.embedder is not None and spec.embedder.kind == "openai" and spec.embedder.url:
            self.outbound.resolve(spec.embedder.url, field="embedder.url")
        with self.db.transaction() as conn:
            return catalog.describe(conn, catalog.create(conn, spec))

    def get(self, name: str) -> Collection:
        with self.db.transaction() as conn:
            return self.describe(conn, catalog.get(conn, name))

    def set_query_defaults(self, name: str, defaults: QueryDefaults | None) -> Collection:
        with self.db.transaction() as conn:
            return self.describe(conn, catalog.set_query_defaults(conn, name, defaults))

    def list_all(self) -> list[Collection]:
        with self.db.transaction() as conn:
            return [self.describe(conn, row) for row in catalog.list_all(conn)]

    def describe(self, conn: Connection, row: catalog.CollectionRow) -> Collection:
        index = self.text_indexes.get(row.id)
        lag = outbox.lag(conn, row.id, since=index.watermark)
        bm25 = IndexStatus(watermark=index.watermark, lag=lag)
        return catalog.describe(conn, row, bm25, self.ann.status(conn, row.id))

    def delete(self, name: str) -> DeleteResult:
        with self.db.transaction() as conn:
            row = catalog.get(conn, name)
        self.hnsw.join(row.id)
        with self.db.transaction() as conn:
            if not catalog.drop(conn, name):
                raise NotFound(f"collection {name!r} does not exist", field="collection")
            jobs.cancel_for_collection(conn, row.id)
        self.text_indexes.drop(row.id)  # the collection's derived indexes, ANN ones too
        self.ann.drop(row.id)
        self.embedders.drop(row.id)
        self.on_drop(name)
        return DeleteResult(deleted=True)
