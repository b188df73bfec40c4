"""Prometheus metrics of one engine: what `/metrics` serves.

Counters and histograms are updated where the work happens; gauges that describe the
database (index lag, jobs, pool) are read when Prometheus scrapes, so they are never stale.
Each engine has its own registry, so several engines in one process do not mix figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from unidb.indexing import outbox
from unidb.service.query_stages import StageClock

if TYPE_CHECKING:
    from unidb.indexing.text_indexes import TextIndexes
    from unidb.service.db.database import Database
    from unidb.service.search.ann_indexes import AnnIndexes

# seconds: from a cached point lookup to a slow hybrid query with an embedding call
# seconds: one stage of a query, from a dictionary lookup to a slow retriever
STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Histogram(
            "unidb_http_request_seconds",
            "REST request latency by route template, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queries = Histogram(
            "unidb_query_seconds",
            "search latency by mode and the vector index that answered",
            ["mode", "vector_index"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_stages = Histogram(
            "unidb_query_stage_seconds",
            "where search time goes, by stage (see docs/api.md: explain)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.ingested = Counter(
            "unidb_ingest_rows", "documents written (upserted) by collection", ["collection"],
            registry=self.registry,
        )  # fmt: skip
        self.reads = Counter(
            "unidb_reads",
            "searches served by a read replica or by the primary",
            ["target"],
            registry=self.registry,
        )
        self.context_tokens = Counter(
            "unidb_context_prompt_tokens",
            "prompt tokens of built contexts",
            registry=self.registry,
        )
        self.context_cached_tokens = Counter(
            "unidb_context_cached_tokens",
            "of those, tokens in blocks an engine reported resident (prefix-cache hits)",
            registry=self.registry,
        )

    def observe_stages(self, clock: StageClock) -> None:
        for stage, seconds in clock.seconds.items():
            self.query_stages.labels(stage).observe(seconds)

    def watch(self, read: Callable[[], dict[str, Any]]) -> None:
        """Call ``read`` for the database-side gauges at each scrape (`database_gauges`)."""
        self.registry.register(_EngineGauges(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineGauges(Collector):
    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def describe(self) -> list[Any]:
        return []  # read at scrape time only: describing must not touch the database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = self.read()
        lag = GaugeMetricFamily(
            "unidb_index_lag",
            "committed changes not yet in an index, by tenant, collection and index",
            labels=["tenant", "collection", "index"],
        )
        for (tenant, collection, index), value in sorted(figures["lag"].items()):
            lag.add_metric([tenant, collection, index], value)
        yield lag
        jobs = GaugeMetricFamily("unidb_jobs", "jobs by status", labels=["status"])
        for status, value in sorted(figures["jobs"].items()):
            jobs.add_metric([status], value)
        yield jobs
        pool = GaugeMetricFamily(
            "unidb_pool_connections", "database connection pool", labels=["state"]
        )
        for state, value in sorted(figures["pool"].items()):
            pool.add_metric([state], value)
        yield pool


def database_gauges(db: Database, text_indexes: TextIndexes, ann: AnnIndexes) -> dict[str, Any]:
    """Index lag per collection, jobs by status and pool use, read now for `/metrics`."""
    lag: dict[tuple[str, str, str], int] = {}
    with db.transaction(service_wide=True) as conn:
        for collection_id, tenant, name in conn.execute(
            "SELECT id, tenant, name FROM unidb.collections"
        ).fetchall():
            opened = text_indexes.opened(collection_id)
            if opened is not None:
                lag[tenant, name, "bm25"] = outbox.lag(conn, collection_id, since=opened.watermark)
            status = ann.status(conn, collection_id)
            if status is not None:
                # what the live segment lacks, where this process serves the snapshot
                lag[tenant, name, "faiss"] = (
                    status.lag
                    if status.live_watermark is None
                    else outbox.lag(conn, collection_id, since=status.live_watermark)
                )
        counted = dict(
            conn.execute("SELECT status, count(*) FROM unidb.jobs GROUP BY status").fetchall()
        )
    stats = db.pool.get_stats()
    return {
        "lag": lag,
        "jobs": {
            s: counted.get(s, 0) for s in ("queued", "running", "done", "failed", "cancelled")
        },
        "pool": {
            "open": stats.get("pool_size", 0),
            "idle": stats.get("pool_available", 0),
            "waiting": stats.get("requests_waiting", 0),
            "max": db.pool.max_size,
        },
    }
