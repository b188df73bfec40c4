"""Collections: rows in `unidb.collections`, read and written on a connection the caller owns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import sql
from psycopg.types.json import Jsonb

from unidb.errors import Conflict, InvalidInput, NotFound
from unidb.indexing.outbox import record_drop
from unidb.indexing.pg import Connection
from unidb.models import (
    AnnStatus,
    ChunkerSpec,
    Collection,
    CollectionCreate,
    EmbedderSpec,
    IndexStatus,
    Metric,
    QueryDefaults,
)

MINILM_DIM = 384
MINILM_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


@dataclass(frozen=True, slots=True)
class CollectionRow:
    id: int
    name: str
    dim: int
    metric: Metric
    created_at: datetime
    embedder: EmbedderSpec | None = None
    hnsw_valid: bool | None = None  # None: no HNSW index; False: being built
    pgvector_hnsw: bool = False  # opted into a pgvector HNSW index
    chunker: ChunkerSpec | None = None  # None: one chunk per document
    query_defaults: QueryDefaults | None = None  # None: the service's fusion and alpha

    @property
    def chunked(self) -> bool:
        """Whether a document may have several chunks (each its own index entry)."""
        return self.chunker is not None and self.chunker.kind != "none"

    @property
    def vector_index(self) -> Literal["none", "building", "hnsw"]:
        if self.hnsw_valid is None:
            return "none"
        return "hnsw" if self.hnsw_valid else "building"

    @property
    def hnsw_index_name(self) -> str:
        return f"chunks_embedding_hnsw_c{self.id}"


# the HNSW index's state comes along, saving queries a round trip
_COLUMNS = (
    "SELECT id, name, dim, metric, created_at, embedder, pgvector_hnsw, chunker, query_defaults,"
    " (SELECT i.indisvalid FROM pg_index i"
    "   WHERE i.indexrelid = to_regclass('unidb.chunks_embedding_hnsw_c' || id))"
    " FROM unidb.collections"
)
_GET = _COLUMNS + " WHERE name = %s"
_GET_LOCKED = _GET + " FOR SHARE"


def _row(values: tuple[Any, ...]) -> CollectionRow:
    (collection_id, name, dim, metric, created_at, embedder, pgvector_hnsw, chunker, defaults,
     hnsw_valid) = values  # fmt: skip
    return CollectionRow(
        collection_id,
        name,
        dim,
        metric,
        created_at,
        embedder=EmbedderSpec.model_validate(embedder) if embedder else None,
        hnsw_valid=hnsw_valid,
        pgvector_hnsw=pgvector_hnsw,
        chunker=ChunkerSpec.model_validate(chunker) if chunker else None,
        query_defaults=QueryDefaults.model_validate(defaults) if defaults else None,
    )


def create(conn: Connection, spec: CollectionCreate) -> CollectionRow:
    embedder = spec.embedder
    if embedder is not None:
        if embedder.kind == "minilm" and spec.dim != MINILM_DIM:
            raise InvalidInput(
                f"the minilm embedder makes {MINILM_DIM}-d vectors; dim is {spec.dim}", field="dim"
            )
        if embedder.kind == "openai" and not embedder.url:
            raise InvalidInput("an openai embedder needs the endpoint's url", field="embedder.url")
    chunker = spec.chunker if spec.chunker is not None and spec.chunker.kind != "none" else None
    if chunker is not None and embedder is None:
        raise InvalidInput(
            "a chunker needs the collection's embedder: unidb embeds each chunk itself",
            field="chunker",
        )
    if chunker is not None and embedder is not None and embedder.kind == "minilm":
        if chunker.size > MINILM_MAX_TOKENS:
            raise InvalidInput(
                f"the minilm embedder reads at most {MINILM_MAX_TOKENS} word pieces; a chunk "
                f"of {chunker.size} would be cut",
                field="chunker.size",
            )
    row = conn.execute(
        "INSERT INTO unidb.collections (name, dim, metric, embedder, pgvector_hnsw, chunker)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant, name) DO NOTHING"
        " RETURNING id, name, dim, metric, created_at, embedder, pgvector_hnsw, chunker,"
        " query_defaults, NULL::boolean",
        (
            spec.name,
            spec.dim,
            spec.metric,
            Jsonb(embedder.model_dump(exclude_none=True)) if embedder else None,
            spec.pgvector_hnsw,
            Jsonb(chunker.model_dump()) if chunker else None,
        ),
    ).fetchone()
    if row is None:
        raise Conflict(f"collection {spec.name!r} already exists", field="name")
    return _row(row)


def lookup(name: str) -> tuple[str, tuple[str]]:
    """The statement that reads the named collection, to send along with others."""
    return _GET, (name,)


def found(rows: list[tuple[Any, ...]], name: str) -> CollectionRow:
    """The collection ``lookup(name)`` read, or NotFound."""
    if not rows:
        raise NotFound(f"collection {name!r} does not exist", field="collection")
    return _row(rows[0])


def get(conn: Connection, name: str, *, lock: bool = False) -> CollectionRow:
    """The named collection; ``lock`` holds it against a concurrent drop until commit."""
    row = conn.execute(_GET_LOCKED if lock else _GET, (name,)).fetchone()
    if row is None:
        raise NotFound(f"collection {name!r} does not exist", field="collection")
    return _row(row)


def set_query_defaults(
    conn: Connection, name: str, defaults: QueryDefaults | None
) -> CollectionRow:
    """Store (or with None, clear) the collection's query defaults."""
    row = conn.execute(
        "UPDATE unidb.collections SET query_defaults = %s WHERE name = %s RETURNING id",
        (Jsonb(defaults.model_dump(exclude_none=True)) if defaults else None, name),
    ).fetchone()
    if row is None:
        raise NotFound(f"collection {name!r} does not exist", field="collection")
    return get(conn, name)


def get_by_id(conn: Connection, collection_id: int) -> CollectionRow:
    row = conn.execute(_COLUMNS + " WHERE id = %s", (collection_id,)).fetchone()
    if row is None:
        raise NotFound(f"no collection with id {collection_id}", field="collection")
    return _row(row)


def list_all(conn: Connection) -> list[CollectionRow]:
    rows = conn.execute(_COLUMNS + " ORDER BY name").fetchall()
    return [_row(row) for row in rows]


def drop(conn: Connection, name: str) -> bool:
    row = conn.execute(
        "DELETE FROM unidb.collections WHERE name = %s RETURNING id", (name,)
    ).fetchone()
    if row is None:
        return False
    collection_id = row[0]
    conn.execute("DELETE FROM unidb.chunks WHERE collection_id = %s", (collection_id,))
    conn.execute("DELETE FROM unidb.documents WHERE collection_id = %s", (collection_id,))
    conn.execute(
        sql.SQL("DROP INDEX IF EXISTS unidb.{}").format(
            sql.Identifier(f"chunks_embedding_hnsw_c{collection_id}")
        )
    )
    record_drop(conn, collection_id)
    return True


def describe(
    conn: Connection,
    collection: CollectionRow,
    bm25: IndexStatus | None = None,
    ann: AnnStatus | None = None,
) -> Collection:
    count = conn.execute(
        "SELECT count(*) FROM unidb.documents WHERE collection_id = %s", (collection.id,)
    ).fetchone()
    return Collection(
        name=collection.name,
        dim=collection.dim,
        metric=collection.metric,
        embedder=collection.embedder,
        created_at=collection.created_at,
        documents=count[0] if count else 0,
        vector_index=collection.vector_index,
        pgvector_hnsw=collection.pgvector_hnsw,
        chunker=collection.chunker,
        query_defaults=collection.query_defaults,
        bm25=bm25,
        ann=ann,
    )
