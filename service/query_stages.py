"""Where one query's time goes: stage timings for `/metrics` and ``"explain": true``.

A ``StageClock`` charges the time since its last mark to the stage that just ended. The
REST query route starts one from the instant the request arrived (the gate's check of the
key is its first stage) and the planner adds its own stages; a query from anywhere else
gets a clock from the planner. The clock travels in a context variable, so nothing on the
query path passes it along, and whoever started it records it in `/metrics`.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

# in the order a query passes them
STAGES = (
    "auth",  # the API key checked (REST)
    "parse",  # the body read and validated (REST)
    "dispatch",  # handed from the event loop to a worker thread (REST)
    "connect",  # a pooled connection, its transaction and tenant
    "plan",  # the collection looked up, the filter compiled
    "embed",  # the query text embedded by the collection's embedder
    "vector",  # the vector retriever (FAISS, HNSW or an exact scan)
    "bm25",  # the BM25 retriever
    "delta",  # documents changed since an index's watermark, read from the outbox
    "fuse",  # the two rankings fused
    "hydrate",  # the hits' text and metadata read
    "commit",  # the read transaction ended and the connection returned
    "rerank",  # the fused hits reordered by a reranker (after commit: it holds no connection)
    "return",  # the answer handed back to the event loop (REST)
    "serialise",  # the response encoded (REST; after the explained answer is built)
)


class StageClock:
    __slots__ = ("_mark", "changed", "seconds", "vector_plan")

    def __init__(self, started: float | None = None) -> None:
        self._mark = time.perf_counter() if started is None else started
        self.seconds: dict[str, float] = {}
        # documents changed since an answering index's watermark (the most any index had)
        self.changed: int | None = None
        self.vector_plan: str | None = None  # how a filtered FAISS query was answered

    def lap(self, stage: str) -> None:
        """Charge the time since the last lap to ``stage``."""
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._mark
        self._mark = now

    def lap_at(self, stage: str, instant: float) -> None:
        """Charge the time from the last lap up to ``instant`` (a perf_counter) to ``stage``."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + instant - self._mark
        self._mark = instant

    def milliseconds(self) -> dict[str, float]:
        return {stage: round(s * 1000, 3) for stage, s in self.seconds.items()}


query_clock: ContextVar[StageClock | None] = ContextVar("unidb_query_clock", default=None)


def lap(stage: str) -> None:
    """Charge the time since the last lap to ``stage`` on the current query's clock, if any."""
    clock = query_clock.get()
    if clock is not None:
        clock.lap(stage)


def note_changed(count: int) -> None:
    """Note how many changed documents an index's answer had to have scored from rows."""
    clock = query_clock.get()
    if clock is not None:
        clock.changed = max(count, clock.changed or 0)


def note_vector_plan(plan: str) -> None:
    """Note how the vector retriever answered a filtered query (for ``explain``)."""
    clock = query_clock.get()
    if clock is not None:
        clock.vector_plan = plan
