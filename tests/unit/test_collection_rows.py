"""The remembered collection rows stay within their bound, least recently queried out first."""

from __future__ import annotations

from datetime import UTC, datetime

from unidb.service.search.collection_rows import MAX_REMEMBERED, CollectionRows
from unidb.service.store.catalog import CollectionRow


def _row(collection_id: int) -> CollectionRow:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    return CollectionRow(collection_id, f"c{collection_id}", 2, "cosine", created)


def test_past_the_bound_the_least_recently_queried_rows_are_forgotten() -> None:
    rows = CollectionRows()
    for i in range(MAX_REMEMBERED):
        rows.remember(("t", f"c{i}"), _row(i))
    assert rows.get(("t", "c0")) is not None  # queried again: now the most recent
    for i in range(MAX_REMEMBERED, MAX_REMEMBERED + 100):
        rows.remember(("t", f"c{i}"), _row(i))
    kept = [i for i in range(MAX_REMEMBERED + 100) if rows.get(("t", f"c{i}")) is not None]
    assert len(kept) == MAX_REMEMBERED
    assert 0 in kept and 1 not in kept and 100 not in kept and 101 in kept
    assert MAX_REMEMBERED + 99 in kept
