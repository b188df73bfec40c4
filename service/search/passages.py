"""A chunked collection's hits with their best passages.

The retrievers rank documents by their best chunk. Once the k documents are known, the
chunks of the first PASSAGE_HITS are scored again, exactly, for the query: the vector
against each chunk's stored embedding (in Postgres: no vector leaves it) and BM25 with the
index's statistics (at most BM25_CHUNKS chunks a query). That tells which chunks matched
whichever index answered (FAISS and pgvector rank documents, not chunks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unidb.indexing.bm25 import Bm25Index, document_body
from unidb.models import Hit, HitScores, Passage
from unidb.service.db.database import Statement
from unidb.service.search.hnsw import OPERATOR
from unidb.service.search.pgvector import scored
from unidb.service.store.catalog import CollectionRow

# ranks within one document, fused as reciprocal ranks when both retrievers scored it
_RRF_K = 60


# hits given passages, and chunks whose BM25 is computed here, per query: past them, hits
# further down get none, and chunks get their vector score alone
PASSAGE_HITS = 50
BM25_CHUNKS = 16_384


def statement(row: CollectionRow, keys: list[int], vector: np.ndarray | None) -> Statement:
    """What reads the chunks of the documents ``keys`` (the first PASSAGE_HITS), each with
    its distance to ``vector`` and its document's version (to match the hits' rows, read
    by a statement of their own)."""
    distance = (
        f"c.embedding {OPERATOR[row.metric]} %s::vector" if vector is not None else "NULL::float8"
    )
    params: tuple[Any, ...] = (row.id, keys[:PASSAGE_HITS])
    if vector is not None:
        params = (vector, *params)
    return (
        f"SELECT c.document_key, c.chunk_no, c.start_char, c.end_char, {distance}, d.version"  # noqa: S608 (constants only)
        " FROM unidb.chunks c JOIN unidb.documents d"
        "   ON d.collection_id = c.collection_id AND d.key = c.document_key"
        " WHERE c.collection_id = %s AND c.document_key = ANY(%s)"
        " ORDER BY c.document_key, c.chunk_no",
        params,
    )


def attach(
    found: list[Hit],
    rows: list[tuple[Any, ...]],
    chunk_rows: list[tuple[Any, ...]],
    *,
    collection: CollectionRow,
    text: str | None,
    index: Bm25Index | None,
    limit: int,
) -> None:
    """Give each hit its ``limit`` best passages, best first. ``rows``: the hits' rows by
    ``hits.statement(..., with_version=True)``; a hit whose chunks were read at another
    version of its document (a write committed between the two reads) gets none, like
    hits past PASSAGE_HITS."""
    versions = {doc_id: (key, version) for key, doc_id, _, _, version in rows}
    by_key: dict[int, list[tuple[Any, ...]]] = {}
    for chunk_row in chunk_rows:
        by_key.setdefault(chunk_row[0], []).append(chunk_row)
    bm25_left = BM25_CHUNKS
    for hit in found:
        key, version = versions[hit.id]
        chunks = [c for c in by_key.get(key, []) if c[5] == version]
        if limit == 0 or not chunks:
            hit.passages = []
            continue
        spans = [(int(start), int(end)) for _, _, start, end, _, _ in chunks]
        bm25: list[float] | None = None
        if index is not None and text and len(chunks) <= bm25_left:
            bm25_left -= len(chunks)
            bodies = [document_body(hit.text[start:end], hit.metadata) for start, end in spans]
            bm25 = index.score_texts(text, bodies)
        similarity = (
            None
            if chunks[0][4] is None
            else np.asarray([scored(collection, float(c[4])) for c in chunks])
        )
        order = _ranked(len(chunks), bm25, similarity)
        hit.passages = [
            Passage.model_construct(
                chunk=int(chunks[i][1]),
                start=spans[i][0],
                end=spans[i][1],
                text=hit.text[spans[i][0] : spans[i][1]],
                scores=HitScores.model_construct(
                    bm25=bm25[i] if bm25 is not None else None,
                    vector=float(similarity[i]) if similarity is not None else None,
                    fused=None,
                    rerank=None,
                ),
            )
            for i in order[:limit]
        ]


def _ranked(n: int, bm25: list[float] | None, similarity: np.ndarray | None) -> list[int]:
    """Chunk positions best first: by the one score there is, or by both ranks fused."""
    if bm25 is None and similarity is None:
        return list(range(n))
    if similarity is None:
        assert bm25 is not None
        return sorted(range(n), key=lambda i: (-bm25[i], i))
    if bm25 is None:
        return sorted(range(n), key=lambda i: (-float(similarity[i]), i))
    fused = np.zeros(n)
    for scores in (np.asarray(bm25), similarity):
        ranks = np.empty(n)
        ranks[np.argsort(-scores, kind="stable")] = np.arange(1, n + 1)
        fused += 1.0 / (_RRF_K + ranks)
    return sorted(range(n), key=lambda i: (-fused[i], i))
