"""BM25 search over one collection that sees every committed write.

The index holds everything below its watermark. With strong consistency, documents changed
at or past it (as this transaction sees the outbox) are masked out of the index's answer
and scored here instead, from their current rows, with the index's statistics.
"""

from __future__ import annotations

from psycopg import sql

from unidb.indexing.bm25 import Bm25Index
from unidb.indexing.pg import Executor
from unidb.indexing.tailer import CHUNKED_ROWS, chunk_bodies
from unidb.service.search.candidates import admitted_keys
from unidb.service.search.filters import CompiledFilter
from unidb.service.store.catalog import CollectionRow


def bm25_search(
    conn: Executor,
    collection: CollectionRow,
    index: Bm25Index,
    text: str,
    *,
    limit: int,
    where: CompiledFilter | None,
    masked: set[int],
    searched: list[tuple[int, float]] | None = None,
) -> list[tuple[int, float]]:
    """The best ``limit`` (document key, BM25 score) pairs, filtered before ranking.

    ``masked``: documents changed since the index's watermark (read before it searches: a
    newer searcher only overlaps), left out of its answer and scored from their rows.
    ``searched``: the index's own best ``limit`` for ``text``, unfiltered, if the caller
    searched already (while the database worked); it is the answer when nothing is masked
    and no filter applies."""
    if searched is not None and not masked and where is None:
        return searched
    allowed = admitted_keys(conn, collection, where).tolist() if where is not None else None
    if allowed is not None and not allowed:
        return []
    hits = [
        (key, score)
        for key, score in index.search(text, limit=limit + len(masked), keys=allowed)
        if key not in masked
    ]
    if masked:
        condition = where.expression if where is not None else sql.SQL("TRUE")
        params = where.params if where is not None else []
        select = (
            CHUNKED_ROWS
            if collection.chunked
            else "SELECT d.key, d.text, d.metadata FROM unidb.documents d"
        )
        statement = sql.SQL(
            select + " WHERE d.collection_id = {} AND d.key = ANY({}) AND {}"
        ).format(  # noqa: S608 (constants only)
            sql.Literal(collection.id), sql.Placeholder(), condition
        )
        rows = conn.execute(statement, [list(masked), *params]).fetchall()
        hits.extend(index.score_unindexed(text, chunk_bodies(rows)))
    hits.sort(key=lambda hit: (-hit[1], hit[0]))
    return hits[:limit]
