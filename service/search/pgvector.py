"""Vector search over one collection, on the HNSW index when it exists, exactly otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
from psycopg import sql

from unidb.indexing.pg import Executor
from unidb.service.search.filters import CompiledFilter
from unidb.service.search.hnsw import OPERATOR, typed_embedding
from unidb.service.store.catalog import CollectionRow


def _score(metric: str, distance: float) -> float:
    # higher is better: cosine similarity, inner product, negative euclidean distance
    return 1.0 - distance if metric == "cosine" else -distance


def _select(
    collection: CollectionRow,
    query: np.ndarray,
    k: int,
    where: CompiledFilter | None,
    *,
    indexed: bool,
    keys: list[int] | None = None,
) -> tuple[sql.Composed, list[Any]]:
    # the indexed form repeats the index's expression and predicate literally so the planner
    # can match the partial index; the exact form orders by the plain column
    embedding = typed_embedding(collection) if indexed else sql.SQL("c.embedding")
    query_param = (
        sql.SQL("{}::vector({})").format(sql.Placeholder(), sql.Literal(collection.dim))
        if indexed
        else sql.SQL("{}::vector").format(sql.Placeholder())
    )
    distance = sql.SQL("{} {} {}").format(
        embedding, sql.SQL(OPERATOR[collection.metric]), query_param
    )
    # metadata lives on documents: join them only when a filter reads it
    if where is None:
        source = sql.SQL("unidb.chunks c")
        condition: sql.Composable = sql.SQL("TRUE")
        params: list[Any] = []
    else:
        source = sql.SQL("unidb.chunks c JOIN unidb.documents d ON d.key = c.document_key")
        condition, params = where.expression, where.params
    only = (
        sql.SQL(" AND c.document_key = ANY({})").format(sql.Placeholder()) if keys else sql.SQL("")
    )
    statement = sql.SQL(
        "SELECT c.document_key, {distance} AS distance FROM {source}"
        " WHERE c.collection_id = {collection} AND c.embedding IS NOT NULL AND {filter}{only}"
        " ORDER BY distance{limit}"
    ).format(
        distance=distance,
        source=source,
        collection=sql.Literal(collection.id),
        filter=condition,
        only=only,
        limit=_chunk_limit(collection, k, indexed=indexed),
    )
    if collection.chunked:
        # a document is as near as its nearest chunk
        statement = sql.SQL(
            "SELECT document_key, min(distance) AS distance FROM ({chunks}) nearest_chunks"
            " GROUP BY document_key ORDER BY distance LIMIT {k}"
        ).format(chunks=statement, k=sql.Literal(k))
    return statement, [query, *params, *([keys] if keys else [])]


# chunks an HNSW walk reads per document wanted in a chunked collection; a walk that comes
# up short of k documents is answered exactly instead
CHUNKS_PER_DOCUMENT_WALKED = 8


def _chunk_limit(collection: CollectionRow, k: int, *, indexed: bool) -> sql.Composable:
    """How many rows the chunk scan returns: k of an unchunked collection's; of a chunked
    one's, every chunk (exact) or a few per document wanted (on the HNSW index)."""
    if not collection.chunked:
        return sql.SQL(" LIMIT {}").format(sql.Literal(k))
    if indexed:
        return sql.SQL(" LIMIT {}").format(sql.Literal(k * CHUNKS_PER_DOCUMENT_WALKED))
    return sql.SQL("")


def nearest_with_rows(
    collection: CollectionRow,
    query: np.ndarray,
    k: int,
    where: CompiledFilter | None,
    *,
    indexed: bool,
) -> tuple[sql.Composed, list[Any]]:
    """The ``k`` nearest documents with their rows: (key, distance, id, text, metadata) in
    order, so that a vector query needs no second statement for its hits."""
    nearest, params = _select(collection, query, k, where, indexed=indexed)
    statement = sql.SQL(
        "SELECT n.document_key, n.distance, d.id, d.text, d.metadata FROM ({nearest}) n"
        " JOIN unidb.documents d ON d.collection_id = {collection} AND d.key = n.document_key"
        " ORDER BY n.distance"
    ).format(nearest=nearest, collection=sql.Literal(collection.id))
    return statement, params


def scored(collection: CollectionRow, distance: float) -> float:
    return _score(collection.metric, distance)


def score_keys(
    conn: Executor,
    collection: CollectionRow,
    query: np.ndarray,
    keys: list[int],
    *,
    k: int,
    where: CompiledFilter | None,
) -> list[tuple[int, float]]:
    """The ``k`` best of ``keys`` (their current rows, passing ``where``), scored exactly."""
    if not keys:
        return []
    statement, params = _select(collection, query, k, where, indexed=False, keys=keys)
    rows = conn.execute(statement, params).fetchall()
    return [(key, _score(collection.metric, distance)) for key, distance in rows]


HNSW_MAX_EF_SEARCH = 1000


def scan_settings(k: int, ef_search: int, max_scan_tuples: int) -> tuple[str, tuple[str, str]]:
    """The HNSW scan settings for a ``k``-deep search, local to the transaction."""
    return (
        "SELECT set_config('hnsw.ef_search', %s, true),"
        " set_config('hnsw.iterative_scan', 'strict_order', true),"
        " set_config('hnsw.max_scan_tuples', %s, true)",
        # pgvector takes at most 1000; past it the iterative scan walks on for the rest
        (str(min(max(ef_search, k), HNSW_MAX_EF_SEARCH)), str(max_scan_tuples)),
    )


def nearest(
    collection: CollectionRow,
    query: np.ndarray,
    k: int,
    where: CompiledFilter | None,
    *,
    indexed: bool,
) -> tuple[sql.Composed, list[Any]]:
    """The statement for the ``k`` nearest documents, as (key, distance): on the HNSW
    index with ``indexed``, exactly otherwise."""
    return _select(collection, query, k, where, indexed=indexed)


def vector_search(
    conn: Executor,
    collection: CollectionRow,
    query: np.ndarray,
    *,
    k: int,
    where: CompiledFilter | None,
    use_index: bool,
    found: list[tuple[Any, ...]] | None = None,
) -> tuple[list[tuple[int, float]], bool]:
    """The ``k`` nearest documents that pass ``where``, as (document key, score), and
    whether the answer is exact. ``found``: the rows of ``nearest(..., indexed=use_index)``
    when the caller has sent it already (with other statements, in one round trip).

    With the index, pgvector's iterative scan keeps walking the graph until ``k`` rows pass
    the filter; if it still comes up short (a very selective filter) the query is answered
    by an exact scan, so k hits come back whenever k rows match. The transaction has run
    ``scan_settings`` for this ``k`` already (the planner sends them with its opening).
    """
    rows = found
    if rows is None:
        statement, params = _select(collection, query, k, where, indexed=use_index)
        rows = conn.execute(statement, params).fetchall()
    exhaustive = not use_index
    if use_index and len(rows) < k:
        statement, params = _select(collection, query, k, where, indexed=False)
        rows = conn.execute(statement, params).fetchall()
        exhaustive = True
    return [(key, _score(collection.metric, distance)) for key, distance in rows], exhaustive
