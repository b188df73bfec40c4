"""The per-collection pgvector HNSW index: a partial index on this collection's chunks."""

from __future__ import annotations

import logging

from psycopg import sql

from unidb.indexing.pg import Connection
from unidb.service.store.catalog import CollectionRow

log = logging.getLogger("unidb.vector_index")

OPERATOR = {"cosine": "<=>", "l2": "<->", "ip": "<#>"}
OPCLASS = {"cosine": "vector_cosine_ops", "l2": "vector_l2_ops", "ip": "vector_ip_ops"}


def typed_embedding(collection: CollectionRow) -> sql.Composable:
    """``c.embedding::vector(dim)``: the expression the index is built on and queries order by."""
    return sql.SQL("(c.embedding::vector({}))").format(sql.Literal(collection.dim))


def build_hnsw(
    conn: Connection, collection: CollectionRow, *, m: int, ef_construction: int
) -> bool:
    """Build the index with CREATE INDEX CONCURRENTLY (``conn`` must be in autocommit).

    Returns False when another process holds this collection's build lock. A leftover
    invalid index from an interrupted build is dropped and built again.
    """
    lock_key = ("unidb.hnsw", collection.id)
    got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), %s)", lock_key).fetchone()
    if not got or not got[0]:
        return False
    try:
        name = sql.Identifier("unidb", collection.hnsw_index_name)
        invalid = conn.execute(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'unidb' AND c.relname = %s AND NOT i.indisvalid",
            (collection.hnsw_index_name,),
        ).fetchone()
        if invalid:
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(name))
        conn.execute(
            sql.SQL(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON unidb.chunks USING hnsw"
                " ((embedding::vector({dim})) {opclass}) WITH (m = {m}, ef_construction = {ef})"
                " WHERE collection_id = {collection}"
            ).format(
                name=sql.Identifier(collection.hnsw_index_name),
                dim=sql.Literal(collection.dim),
                opclass=sql.SQL(OPCLASS[collection.metric]),
                m=sql.Literal(m),
                ef=sql.Literal(ef_construction),
                collection=sql.Literal(collection.id),
            )
        )
        # fresh statistics let the planner see that the index beats a scan
        conn.execute("ANALYZE unidb.chunks, unidb.documents")
        log.info("HNSW index built for collection %s", collection.name)
        return True
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", lock_key)
