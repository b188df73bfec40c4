"""Ranked document keys turned into hits: each document's current id, text and metadata."""

from __future__ import annotations

from typing import Any

from unidb.models import Hit, HitScores
from unidb.service.db.database import Statement
from unidb.service.store import catalog


def statement(
    row: catalog.CollectionRow,
    ranked: list[tuple[int, float | None]],
    *,
    with_version: bool = False,
) -> Statement:
    """What reads the ranked documents' current id, text and metadata (and version)."""
    columns = "key, id, text, metadata, version" if with_version else "key, id, text, metadata"
    return (
        f"SELECT {columns} FROM unidb.documents"  # noqa: S608 (constants only)
        " WHERE collection_id = %s AND key = ANY(%s)",
        (row.id, [key for key, _ in ranked]),
    )


def build(
    rows: list[tuple[Any, ...]],
    ranked: list[tuple[int, float | None]],
    bm25: dict[int, float],
    vector: dict[int, float],
) -> list[Hit]:
    """The ranked keys as hits, from the rows ``statement`` read; documents deleted since
    the ranking was read are left out."""
    found = {key: (doc_id, text, metadata) for key, doc_id, text, metadata, *_ in rows}
    hits = []
    for key, fused in ranked:
        if key not in found:
            continue
        doc_id, text, metadata = found[key]
        scores = HitScores.model_construct(bm25=bm25.get(key), vector=vector.get(key), fused=fused)
        primary = (
            fused
            if fused is not None
            else (scores.vector if scores.vector is not None else scores.bm25)
        )
        # built from our own rows: no validation to pay for
        hits.append(
            Hit.model_construct(
                id=doc_id, score=primary or 0.0, text=text, metadata=metadata, scores=scores
            )
        )
    return hits
