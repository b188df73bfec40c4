"""Vector search served from a FAISS snapshot, kept exact about every committed write.

The snapshot holds the collection as of its watermark, and its live segment what changed
since, up to the follower's last pass (`unidb.indexing.live_segment`). Documents changed
after that (per the outbox) are masked in their answers and scored from their current rows
instead, so new, updated and deleted documents are answered as Postgres has them.

A filter never moves the keys it admits into this process. A bounded count says whether it
admits at most ``exact_below`` documents: then pgvector answers in Postgres (its HNSW index
if the collection has one, an exact scan otherwise). Otherwise the snapshot is searched
without it, and Postgres checks the filter on the candidates, widening the search until
``k`` pass. pgvector answers when the widest round still comes up short, so k hits come
back whenever k documents match.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from psycopg import sql

from unidb.indexing.faiss_index import prepare_query, score
from unidb.indexing.live_segment import best_first
from unidb.indexing.pg import Executor
from unidb.service.query_stages import note_vector_plan
from unidb.service.search.ann_indexes import Served
from unidb.service.search.filters import CompiledFilter
from unidb.service.search.pgvector import score_keys
from unidb.service.store.catalog import CollectionRow

# candidates per hit wanted in the first round, how much each round widens, and how many
# rounds there are before the exact path answers (4 rounds: up to 256 candidates a hit)
FIRST_ROUND = 4
WIDEN = 4
ROUNDS = 4


def ann_search(
    conn: Executor,
    collection: CollectionRow,
    served: Served,
    query: np.ndarray,
    *,
    k: int,
    where: CompiledFilter | None,
    exact_below: int,
    max_delta: int,
    changed: set[int],
    ef_search: int | None = None,
) -> list[tuple[int, float]] | None:
    """The ``k`` best (document key, score), or None when another path should answer.
    ``changed``: the documents changed since the live segment's watermark."""
    if len(changed) > max_delta:
        return None  # the follower is far behind: pgvector answers until it catches up
    if where is not None and _admits_at_most(conn, collection, where, exact_below):
        note_vector_plan(f"pgvector: the filter admits at most {exact_below} documents")
        return None  # a few rows: an exact scan is fast and exact
    metric = collection.metric
    live = served.live
    total = int(served.index.ntotal) + live.vectors
    ready = prepare_query(query, metric)
    search_params = served.manifest.search
    if ef_search is not None:
        search_params = {**search_params, "ef_search": ef_search}
    fetch = k + len(changed) if where is None else FIRST_ROUND * k + len(changed)
    rounds = 0
    for _ in range(ROUNDS):
        rounds += 1
        found = live.search(served.index, ready, fetch, search_params=search_params)
        candidates = _nearest_per_document(
            (key, score(metric, raw))
            for key, raw in best_first(found.hits, metric)
            if key not in changed
        )
        if where is not None:
            passing = _passing(conn, collection, where, [key for key, _ in candidates])
            candidates = [(key, hit) for key, hit in candidates if key in passing]
        from_index = candidates[:k]
        # an index asked for ``fetch`` that gave as many may hold a nearer passing document
        # past its farthest: the k-th kept must be at least as near as every such cutoff
        nearest_cutoff = max((score(metric, raw) for raw in found.cutoffs), default=None)
        settled = nearest_cutoff is None or (
            len(from_index) >= k and from_index[k - 1][1] >= nearest_cutoff
        )
        # enough, or every indexed document was looked at
        if (len(from_index) >= k and settled) or fetch >= total:
            break
        fetch *= WIDEN
    else:
        note_vector_plan(
            f"pgvector: {ROUNDS} rounds of the snapshot, up to {fetch // WIDEN} candidates, found "
            f"fewer than {k} that pass the filter"
        )
        return None  # the filtered walk came up short: let the exact path fill it
    if where is not None:
        note_vector_plan(
            f"faiss: the filter checked on the snapshot's candidates, {rounds} "
            f"round{'s' if rounds > 1 else ''} ({fetch} candidates)"
        )
    fresh = score_keys(conn, collection, query, sorted(changed), k=k, where=where)
    return sorted(from_index + fresh, key=lambda hit: -hit[1])[:k]


def _nearest_per_document(hits: Iterable[tuple[int, float]]) -> list[tuple[int, float]]:
    """Each document once, at its nearest entry (a chunked document has one per chunk)."""
    seen: set[int] = set()
    kept = []
    for key, hit in hits:
        if key not in seen:
            seen.add(key)
            kept.append((key, hit))
    return kept


def _admits_at_most(
    conn: Executor, collection: CollectionRow, where: CompiledFilter, limit: int
) -> bool:
    """Whether ``where`` admits at most ``limit`` of the collection's documents, counting no
    further than ``limit + 1``."""
    statement = sql.SQL(
        "SELECT count(*) FROM (SELECT 1 FROM unidb.documents d"
        " WHERE d.collection_id = {} AND {} LIMIT {}) admitted"
    ).format(sql.Literal(collection.id), where.expression, sql.Literal(limit + 1))
    row = conn.execute(statement, where.params).fetchone()
    return row is not None and int(row[0]) <= limit


def _passing(
    conn: Executor, collection: CollectionRow, where: CompiledFilter, keys: list[int]
) -> set[int]:
    """Which of ``keys`` the filter admits."""
    if not keys:
        return set()
    statement = sql.SQL(
        "SELECT d.key FROM unidb.documents d WHERE d.collection_id = {} AND d.key = ANY({}) AND {}"
    ).format(sql.Literal(collection.id), sql.Placeholder(), where.expression)
    return {row[0] for row in conn.execute(statement, [keys, *where.params]).fetchall()}
