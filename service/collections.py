"""Collections: rows in `unidb.collections`, read and written on a connection the caller owns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql

from unidb.errors import Conflict, NotFound
from unidb.models import Collection, CollectionCreate, Metric

Connection = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class CollectionRow:
    id: int
    name: str
    dim: int
    metric: Metric
    created_at: datetime

    @property
    def hnsw_index_name(self) -> str:
        return f"chunks_embedding_hnsw_c{self.id}"


_GET = "SELECT id, name, dim, metric, created_at FROM unidb.collections WHERE name = %s"
_GET_LOCKED = _GET + " FOR SHARE"


def create(conn: Connection, spec: CollectionCreate) -> CollectionRow:
    row = conn.execute(
        "INSERT INTO unidb.collections (name, dim, metric) VALUES (%s, %s, %s)"
        " ON CONFLICT (name) DO NOTHING RETURNING id, name, dim, metric, created_at",
        (spec.name, spec.dim, spec.metric),
    ).fetchone()
    if row is None:
        raise Conflict(f"collection {spec.name!r} already exists", field="name")
    return CollectionRow(*row)


def get(conn: Connection, name: str, *, lock: bool = False) -> CollectionRow:
    """The named collection; ``lock`` holds it against a concurrent drop until commit."""
    row = conn.execute(_GET_LOCKED if lock else _GET, (name,)).fetchone()
    if row is None:
        raise NotFound(f"collection {name!r} does not exist", field="collection")
    return CollectionRow(*row)


def list_all(conn: Connection) -> list[CollectionRow]:
    rows = conn.execute(
        "SELECT id, name, dim, metric, created_at FROM unidb.collections ORDER BY name"
    ).fetchall()
    return [CollectionRow(*row) for row in rows]


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
    conn.execute(
        "INSERT INTO unidb.changes (collection_id, op) VALUES (%s, 'drop')", (collection_id,)
    )
    return True


def vector_index_state(
    conn: Connection, collection: CollectionRow
) -> Literal["none", "building", "hnsw"]:
    row = conn.execute(
        "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'unidb' AND c.relname = %s",
        (collection.hnsw_index_name,),
    ).fetchone()
    if row is None:
        return "none"
    return "hnsw" if row[0] else "building"


def describe(conn: Connection, collection: CollectionRow) -> Collection:
    count = conn.execute(
        "SELECT count(*) FROM unidb.documents WHERE collection_id = %s", (collection.id,)
    ).fetchone()
    return Collection(
        name=collection.name,
        dim=collection.dim,
        metric=collection.metric,
        created_at=collection.created_at,
        documents=count[0] if count else 0,
        vector_index=vector_index_state(conn, collection),
    )
