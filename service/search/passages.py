"""A chunked collection's hits with their best passages.

The retrievers rank documents by their best chunk. Once the k documents are known, each
one's chunks are scored again, exactly, for the query: BM25 with the index's statistics
and the vector against the chunk's stored embedding. That costs the k hits' chunks only,
and it tells which chunks matched whichever index answered (FAISS and pgvector rank
documents, not chunks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unidb.indexing.bm25 import Bm25Index, document_body
from unidb.models import Hit, HitScores, Passage
from unidb.service.db.database import Statement
from unidb.service.store.catalog import CollectionRow

# ranks within one document, fused as reciprocal ranks when both retrievers scored it
_RRF_K = 60


def statement(row: CollectionRow, keys: list[int], *, with_vectors: bool) -> Statement:
    """What reads the chunks of the documents ``keys`` (their embeddings if needed)."""
    embedding = "embedding" if with_vectors else "NULL"
    return (
        f"SELECT document_key, chunk_no, start_char, end_char, {embedding} FROM unidb.chunks"  # noqa: S608 (constants only)
        " WHERE collection_id = %s AND document_key = ANY(%s) ORDER BY document_key, chunk_no",
        (row.id, keys),
    )


def attach(
    found: list[Hit],
    keys: dict[str, int],
    rows: list[tuple[Any, ...]],
    *,
    collection: CollectionRow,
    text: str | None,
    vector: np.ndarray | None,
    index: Bm25Index | None,
    limit: int,
) -> None:
    """Give each hit its ``limit`` best passages, best first; ``keys``: hit id to key."""
    by_key: dict[int, list[tuple[Any, ...]]] = {}
    for chunk_row in rows:
        by_key.setdefault(chunk_row[0], []).append(chunk_row)
    for hit in found:
        chunks = by_key.get(keys[hit.id], [])
        if limit == 0 or not chunks:
            hit.passages = []
            continue
        spans = [(int(start), int(end)) for _, _, start, end, _ in chunks]
        bm25: list[float] | None = None
        if index is not None and text:
            bodies = [document_body(hit.text[start:end], hit.metadata) for start, end in spans]
            bm25 = index.score_texts(text, bodies)
        similarity = _similarities(collection, vector, [c[4] for c in chunks])
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
                ),
            )
            for i in order[:limit]
        ]


def _similarities(
    collection: CollectionRow, vector: np.ndarray | None, embeddings: list[Any]
) -> np.ndarray | None:
    """Each chunk's score for ``vector`` as the vector retriever scores: cosine similarity,
    inner product, or negative euclidean distance."""
    if vector is None or any(e is None for e in embeddings):
        return None
    matrix = np.stack([_array(e) for e in embeddings]).astype(np.float32)
    query = np.asarray(vector, dtype=np.float32)
    if collection.metric == "l2":
        result: np.ndarray = -np.linalg.norm(matrix - query, axis=1)
        return result
    dots = matrix @ query
    if collection.metric == "ip":
        return dots
    norms = np.linalg.norm(matrix, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    cosine: np.ndarray = dots / np.maximum(norms, 1e-12)
    return cosine


def _array(embedding: Any) -> np.ndarray:
    """A pgvector value as an array: pgvector-python loads a `Vector` (0.4 on) or an array."""
    to_numpy = getattr(embedding, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy is not None else embedding, dtype=np.float32)


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
