"""Ranked document keys turned into hits: each document's current id, text and metadata."""

from __future__ import annotations

from unidb.indexing.pg import Connection
from unidb.models import Hit, HitScores
from unidb.service.store import catalog


def hydrate(
    conn: Connection,
    row: catalog.CollectionRow,
    ranked: list[tuple[int, float | None]],
    bm25: dict[int, float],
    vector: dict[int, float],
) -> list[Hit]:
    """The ranked keys as hits with their documents' current id, text and metadata."""
    if not ranked:
        return []
    found = {
        key: (doc_id, text, metadata)
        for key, doc_id, text, metadata in conn.execute(
            "SELECT key, id, text, metadata FROM unidb.documents"
            " WHERE collection_id = %s AND key = ANY(%s)",
            (row.id, [key for key, _ in ranked]),
        ).fetchall()
    }
    hits = []
    for key, fused in ranked:
        if key not in found:
            continue  # deleted after the ranking was read
        doc_id, text, metadata = found[key]
        scores = HitScores(bm25=bm25.get(key), vector=vector.get(key), fused=fused)
        primary = (
            fused
            if fused is not None
            else (scores.vector if scores.vector is not None else scores.bm25)
        )
        hits.append(
            Hit(id=doc_id, score=primary or 0.0, text=text, metadata=metadata, scores=scores)
        )
    return hits
