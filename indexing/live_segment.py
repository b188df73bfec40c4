"""What changed since a FAISS snapshot was built, held in memory: the live segment.

A snapshot holds a collection as of its watermark. Its live segment holds the rest, up to
its own watermark: the current vectors of the documents changed since, in a few immutable
pieces, and the snapshot's keys those changes superseded, masked in the snapshot's answers.
A follower applies the outbox to it every pass, so a query searches the snapshot and the
pieces, and reads from Postgres only what committed after the follower's last pass.

Nothing is changed in place: a pass makes a new `Live` and swaps it in, so a query keeps
one consistent view for as long as it runs, without a lock. Pieces are merged the way an
LSM tree merges its runs (the newest two, while the older holds less than twice the newer),
so a collection has O(log n) pieces and each vector is added O(log n) times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from unidb.indexing.faiss_index import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    DEFAULT_HNSW_M,
    faiss,
    faiss_metric,
    nearest,
)

# a piece this small is a flat index, searched exactly; a bigger one is an HNSW graph
FLAT_UP_TO = 4_096
# a graph n times smaller than the snapshot reaches the snapshot's recall with an ef about
# n ** PIECE_EF_EXPONENT times smaller (bench/scale.py measures both at a 10 % churn)
PIECE_EF_EXPONENT = 0.5

_NO_KEYS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Piece:
    """Vectors (prepared for FAISS) of some changed documents; the i-th is ``keys[i]``."""

    keys: np.ndarray
    index: Any  # ids 0..n-1

    @classmethod
    def of(cls, keys: np.ndarray, ready: np.ndarray, metric: str) -> Piece:
        dim = ready.shape[1]
        index: Any
        if len(keys) <= FLAT_UP_TO:
            index = faiss.IndexFlat(dim, faiss_metric(metric))
        else:
            index = faiss.IndexHNSWFlat(dim, DEFAULT_HNSW_M, faiss_metric(metric))
            index.hnsw.efConstruction = DEFAULT_EF_CONSTRUCTION
        index.add(ready)
        return cls(np.ascontiguousarray(keys, dtype=np.int64), index)

    def __len__(self) -> int:
        return len(self.keys)

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """The prepared vectors at ``positions``, copied out of the index."""
        everything = self.index.reconstruct_n(0, self.index.ntotal)
        return np.ascontiguousarray(everything[positions])


@dataclass(frozen=True, eq=False)
class Live:
    """A snapshot's live segment as of ``watermark`` (every change below it is held)."""

    watermark: int
    masked: np.ndarray = field(default_factory=lambda: _NO_KEYS)  # sorted, unique keys
    pieces: tuple[Piece, ...] = ()
    alive: tuple[np.ndarray, ...] = ()  # per piece: which of its entries are current
    # FAISS selectors (and the arrays they point into), made once per segment
    _snapshot_selector: Any = None
    _piece_selectors: tuple[Any, ...] = ()
    _keep: tuple[Any, ...] = ()

    @classmethod
    def made(
        cls,
        watermark: int,
        masked: np.ndarray,
        pieces: tuple[Piece, ...],
        alive: tuple[np.ndarray, ...],
    ) -> Live:
        keep: list[Any] = []
        snapshot_selector = None
        if len(masked):
            batch = faiss.IDSelectorBatch(masked)
            snapshot_selector = faiss.IDSelectorNot(batch)
            keep += [masked, batch]
        piece_selectors: list[Any] = []
        for entries in alive:
            if entries.all():
                piece_selectors.append(None)
                continue
            bits = np.packbits(entries, bitorder="little")
            piece_selectors.append(faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)))
            keep.append(bits)
        return cls(
            watermark, masked, pieces, alive, snapshot_selector, tuple(piece_selectors), tuple(keep)
        )

    @property
    def vectors(self) -> int:
        """Current vectors held in the pieces."""
        return int(sum(int(entries.sum()) for entries in self.alive))

    def advanced(self, watermark: int) -> Live:
        """The same segment, known to hold everything below ``watermark`` (no change of
        this collection came in between)."""
        return replace(self, watermark=max(watermark, self.watermark))

    def applied(
        self, watermark: int, touched: np.ndarray, keys: np.ndarray, ready: np.ndarray, metric: str
    ) -> Live:
        """This segment with the changes below ``watermark`` applied: ``touched``, the keys
        changed; ``keys``/``ready``, the current (prepared) vectors of those still having
        one. A touched key without one was deleted, or lost its vector."""
        touched = np.unique(np.asarray(touched, dtype=np.int64))
        masked = np.union1d(self.masked, touched)
        pieces = list(self.pieces)
        alive = [
            entries & ~np.isin(piece.keys, touched, assume_unique=False)
            for piece, entries in zip(self.pieces, self.alive, strict=True)
        ]
        if len(keys):
            pieces.append(Piece.of(keys, ready, metric))
            alive.append(np.ones(len(keys), dtype=bool))
        pieces, alive = _merged(pieces, alive, metric)
        return Live.made(max(watermark, self.watermark), masked, tuple(pieces), tuple(alive))

    def rebased(self, touched: np.ndarray) -> Live:
        """This segment over a newer snapshot of the same collection, one built at or below
        this segment's watermark: ``touched``, the keys changed from the new snapshot's
        watermark up to this one's. Only their entries stay; the new snapshot holds the
        others' current vectors."""
        touched = np.unique(np.asarray(touched, dtype=np.int64))
        alive = [
            entries & np.isin(piece.keys, touched)
            for piece, entries in zip(self.pieces, self.alive, strict=True)
        ]
        kept = [(p, a) for p, a in zip(self.pieces, alive, strict=True) if a.any()]
        return Live.made(
            self.watermark,
            touched,
            tuple(p for p, _ in kept),
            tuple(a for _, a in kept),
        )

    def search(
        self,
        snapshot: Any,
        ready: np.ndarray,
        k: int,
        *,
        search_params: dict[str, Any] | None,
    ) -> Found:
        """Up to ``k`` nearest (key, raw FAISS distance) from the snapshot's current entries
        and from each piece's (``ready``: the prepared query)."""
        found = Found()
        if snapshot.ntotal and k > 0:
            distances, labels = nearest(
                snapshot,
                ready,
                k,
                selector=self._snapshot_selector,
                search_params=search_params,
            )
            found.add(
                [
                    (int(key), float(d))
                    for key, d in zip(labels, distances, strict=True)
                    if key >= 0
                ],
                k,
            )
        for piece, selector in zip(self.pieces, self._piece_selectors, strict=True):
            distances, labels = nearest(
                piece.index,
                ready,
                k,
                selector=selector,
                search_params=_scaled_to(piece, int(snapshot.ntotal), search_params),
            )
            found.add(
                [
                    (int(piece.keys[i]), float(d))
                    for i, d in zip(labels, distances, strict=True)
                    if i >= 0
                ],
                k,
            )
        return found


@dataclass
class Found:
    """What each index answered, and the farthest hit of each that returned all it was
    asked for: it may hold more past that, the others hold nothing more."""

    hits: list[tuple[int, float]] = field(default_factory=list)
    cutoffs: list[float] = field(default_factory=list)

    def add(self, hits: list[tuple[int, float]], asked: int) -> None:
        self.hits += hits
        if hits and len(hits) >= asked:
            self.cutoffs.append(hits[-1][1])


def _scaled_to(
    piece: Piece, snapshot_size: int, search_params: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The snapshot's search parameters, with ``ef_search`` scaled down to ``piece``'s
    size: searching each piece as wide as the snapshot would cost about as much again per
    piece, for recall the piece reaches with far less."""
    if len(piece) <= FLAT_UP_TO or len(piece) >= snapshot_size:
        return search_params
    options = search_params or {}
    share = len(piece) / snapshot_size
    ef = math.ceil(options.get("ef_search", DEFAULT_EF_SEARCH) * share**PIECE_EF_EXPONENT)
    return {**options, "ef_search": ef}  # `nearest` keeps it at least k


def best_first(found: list[tuple[int, float]], metric: str) -> list[tuple[int, float]]:
    """Raw FAISS answers from several indexes in one order: nearest first."""
    return sorted(found, key=lambda hit: hit[1] if metric == "l2" else -hit[1])


def _merged(
    pieces: list[Piece], alive: list[np.ndarray], metric: str
) -> tuple[list[Piece], list[np.ndarray]]:
    """Pieces with nothing current dropped, and the newest two merged (their current
    entries into one piece) while the older holds less than twice the newer."""
    kept = [(p, a) for p, a in zip(pieces, alive, strict=True) if a.any()]
    pieces, alive = [p for p, _ in kept], [a for _, a in kept]
    while len(pieces) >= 2 and alive[-2].sum() < 2 * alive[-1].sum():
        older, newer = pieces[-2], pieces[-1]
        older_at, newer_at = np.flatnonzero(alive[-2]), np.flatnonzero(alive[-1])
        keys = np.concatenate([older.keys[older_at], newer.keys[newer_at]])
        ready = np.concatenate([older.vectors(older_at), newer.vectors(newer_at)])
        pieces[-2:] = [Piece.of(keys, ready, metric)]
        alive[-2:] = [np.ones(len(keys), dtype=bool)]
    return pieces, alive
