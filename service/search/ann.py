"""Vector search served from a FAISS snapshot, kept exact about every committed write.

The snapshot holds the collection as of its watermark. Documents changed since (per the
outbox) are masked in the snapshot's answer and scored from their current rows instead, so
new, updated and deleted documents are answered as Postgres has them until the next build.
A filter becomes an ID selector over the keys it admits; one admitting very few keys is
better answered by an exact scan, and so is a snapshot too far behind.
"""

from __future__ import annotations

import numpy as np

from unidb.indexing.faiss_index import search
from unidb.indexing.pg import Executor
from unidb.service.search.ann_indexes import Served
from unidb.service.search.candidates import admitted_keys
from unidb.service.search.filters import CompiledFilter
from unidb.service.search.pgvector import score_keys
from unidb.service.store.catalog import CollectionRow


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
) -> list[tuple[int, float]] | None:
    """The ``k`` best (document key, score), or None when another path should answer.
    ``changed``: the documents changed since the snapshot's watermark."""
    if len(changed) > max_delta:
        return None  # the snapshot is far behind: pgvector answers until the next build
    allowed: np.ndarray | None = None
    if where is not None:
        admitted = admitted_keys(conn, collection, where)
        if len(admitted) <= exact_below:
            return None  # a few rows: an exact scan is fast and exact
        allowed = np.setdiff1d(admitted, np.fromiter(changed, np.int64, len(changed)))
    fetch = k if allowed is not None else k + len(changed)
    found = search(
        served.index,
        query,
        fetch,
        served.manifest.metric,
        allowed=allowed,
        search_params=served.manifest.search,
    )
    from_index = [(key, score) for key, score in found if key not in changed][:k]
    if allowed is not None and len(from_index) < min(k, len(allowed)):
        return None  # the filtered walk came up short: let the exact path fill it
    fresh = score_keys(conn, collection, query, sorted(changed), k=k, where=where)
    return sorted(from_index + fresh, key=lambda hit: -hit[1])[:k]
