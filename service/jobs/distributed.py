"""Batch work on Ray: embedding a corpus and building a collection's FAISS index on workers.

The same code runs on a local Ray, started here when no address is given, and on a cluster
by address. Postgres stays the source of truth: workers read vectors straight from it under
one exported snapshot, and embedded documents are written back through the usual COPY path.

Embedding: the file is parsed here, in order; groups of texts go to embedding actors (one
model load each, a GPU each when the cluster has them), a bounded number in flight, and come
back in file order, so the rows written are the ones a single-process load writes.

Index builds: IVF-Flat shards merged into one index. One task trains the coarse quantizer on
the same sample a single-process build trains on (the first vectors in key order); each
shard task adds the vectors whose key falls in its shard to a copy of it; this process
merges the shards' inverted lists and swaps the result in as the collection's snapshot.
HNSW and CAGRA graphs do not merge, so a Ray build is an IVF build.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from psycopg import sql
from tqdm import tqdm

from unidb.errors import InvalidInput
from unidb.indexing import outbox
from unidb.indexing.faiss_index import (
    Plan,
    faiss,
    ivf_lists,
    ivf_search_params,
    ivf_training_size,
    plan,
    prepare,
    trained_ivf,
)
from unidb.indexing.pg import Connection
from unidb.indexing.vectors import count_vectors, stream_vectors
from unidb.models import Document, IndexBuildRequest, Job
from unidb.service.db.pool import service_connection
from unidb.service.ingest import EmbedGroups, fill_embeddings, texts_to_embed
from unidb.service.jobs.runner import create_build_job
from unidb.service.search.ann_indexes import Cancelled, progress_reporter
from unidb.service.store import catalog

if TYPE_CHECKING:
    from unidb.service.engine import Engine

log = logging.getLogger("unidb.distributed")

# groups in flight per embedding actor: enough to keep each busy, few enough to bound memory
_IN_FLIGHT_PER_ACTOR = 2
_POLL_S = 1.0


def connect(address: str | None) -> Any:
    """The ray module, connected to ``address`` or to a local Ray started for this process."""
    try:
        import ray
    except ImportError as exc:
        raise InvalidInput("--ray needs Ray: pip install 'unidb[ray]'", field="ray") from exc
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no calls home
    if not ray.is_initialized():
        ray.init(
            address=address or None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    return ray


def _gpus(ray: Any) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


# -- embedding ---------------------------------------------------------------------------


class _EmbeddingWorker:
    """One embedding model per actor, on the GPU Ray gave it if any."""

    def __init__(self, kind: str) -> None:
        import ray

        from unidb.indexing.embedders import MiniLM, get_embedder

        if ray.get_gpu_ids():
            MiniLM.device = "cuda"
        self.embedder = get_embedder(kind)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed_documents(texts)


def embed_on_ray(ray: Any, kind: str, *, actors: int | None = None) -> EmbedGroups:
    """Embed groups of documents on Ray actors, giving them back in order."""
    gpus = _gpus(ray)
    count = actors or gpus or max(1, int(ray.cluster_resources().get("CPU", 1)))
    options: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    worker = ray.remote(_EmbeddingWorker).options(**options)
    pool = [worker.remote(kind) for _ in range(count)]
    log.info("embedding on %d Ray actors (%s)", count, "GPU" if gpus else "CPU")

    def embed(groups: Iterator[list[Document]]) -> Iterator[list[Document]]:
        in_flight: deque[tuple[list[Document], Any]] = deque()
        turn = 0
        for group in groups:
            texts = texts_to_embed(group)
            future = pool[turn % count].embed.remote(texts) if texts else None
            turn += 1
            in_flight.append((group, future))
            if len(in_flight) >= count * _IN_FLIGHT_PER_ACTOR:
                yield _settled(ray, *in_flight.popleft())
        while in_flight:
            yield _settled(ray, *in_flight.popleft())

    return embed


def _settled(ray: Any, group: list[Document], future: Any) -> list[Document]:
    return fill_embeddings(group, ray.get(future) if future is not None else [])


# -- index builds -------------------------------------------------------------------------


def _read_under(dsn: str, snapshot: str) -> Connection:
    """A connection in a REPEATABLE READ transaction that sees exactly ``snapshot``."""
    conn = service_connection(dsn)
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
    conn.execute("SELECT set_config('unidb.tenant', '*', true)")
    return conn


def _train(
    dsn: str, snapshot: str, collection_id: int, dim: int, metric: str, nlist: int, device: str
) -> bytes:
    with _read_under(dsn, snapshot) as conn:
        chunks = list(stream_vectors(conn, collection_id, dim, limit=ivf_training_size(nlist)))
    sample = prepare(
        np.concatenate([v for _, v in chunks]) if chunks else np.empty((0, dim), np.float32),
        metric,
    )
    index = trained_ivf(sample, dim, metric, nlist, device)
    return bytes(faiss.serialize_index(index))


def _add_shard(
    dsn: str,
    snapshot: str,
    collection_id: int,
    dim: int,
    metric: str,
    trained: bytes,
    shard: tuple[int, int],
) -> tuple[bytes, int]:
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    with _read_under(dsn, snapshot) as conn:
        for keys, vectors in stream_vectors(conn, collection_id, dim, shard=shard):
            index.add_with_ids(prepare(vectors, metric), keys)
    return bytes(faiss.serialize_index(index)), int(index.ntotal)


def ray_plan(request: IndexBuildRequest, count: int) -> Plan:
    if request.kind not in ("auto", "ivf"):
        raise InvalidInput(
            f"--ray builds IVF shards and merges them; {request.kind.upper()} graphs do not "
            "merge: use kind ivf (or auto)",
            field="kind",
        )
    return plan("ivf", "cpu", count, request.params.model_dump())


def build_index_on_ray(
    engine: Engine,
    collection: str,
    request: IndexBuildRequest,
    *,
    address: str | None,
    shards: int | None = None,
    progress: bool = True,
) -> Job:
    """Build the collection's IVF index on Ray and make it the served snapshot; the build is
    a job like any other (progress, cancel, the collection's build lock)."""
    ray = connect(address)
    with engine.transaction() as conn:
        row = catalog.get(conn, collection)
        chosen = ray_plan(request, count_vectors(conn, row.id))
        job = create_build_job(
            conn, row, request, chosen, owner=engine.jobs.owner, ray=address or "local"
        )
    engine.jobs.run(
        job.id, row.id, lambda: _build(ray, engine, row, chosen, job.id, shards, progress)
    )
    return engine.get_job(job.id)


def _build(
    ray: Any,
    engine: Engine,
    row: catalog.CollectionRow,
    chosen: Plan,
    job_id: int,
    shards: int | None,
    show_progress: bool,
) -> dict[str, Any]:
    began = time.monotonic()
    pool, owner = engine.background_pool, engine.jobs.owner
    gpus = _gpus(ray)
    shard_count = shards or max(1, int(ray.cluster_resources().get("CPU", 1)))

    report = progress_reporter(pool, job_id, owner)
    # One snapshot for every worker: the exporting transaction stays open until they finish.
    with pool.connection() as exporter:
        exporter.commit()
        with exporter.transaction():
            exporter.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            watermark = outbox.safe_watermark(exporter)
            total = count_vectors(exporter, row.id)
            snapshot_row = exporter.execute("SELECT pg_export_snapshot()").fetchone()
            assert snapshot_row is not None
            snapshot = str(snapshot_row[0])
            nlist = ivf_lists(chosen.params, total)
            device = "gpu" if gpus else "cpu"
            train = ray.remote(_train).options(num_gpus=1 if gpus else 0, num_cpus=1)
            add = ray.remote(_add_shard).options(num_cpus=1)
            with tqdm(total=shard_count + 1, desc=f"build {row.name} on Ray",
                      unit="task", disable=not show_progress) as bar:  # fmt: skip
                trained = _wait_beating(
                    ray,
                    [
                        train.remote(
                            engine.dsn, snapshot, row.id, row.dim, row.metric, nlist, device
                        )
                    ],
                    report,
                    bar,
                    0.0,
                    0.1,
                )[0]
                trained_ref = ray.put(trained)
                parts = _wait_beating(
                    ray,
                    [
                        add.remote(
                            engine.dsn,
                            snapshot,
                            row.id,
                            row.dim,
                            row.metric,
                            trained_ref,
                            (i, shard_count),
                        )
                        for i in range(shard_count)
                    ],  # fmt: skip
                    report,
                    bar,
                    0.1,
                    0.9,
                )
    merged = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    for data, _ in parts:
        merged.merge_from(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)), 0)
    report(0.97)
    built = Plan("ivf", device, chosen.params, chosen.note)
    stats = engine.ann.swap_in(
        pool,
        row,
        merged,
        built,
        job_id=job_id,
        watermark=watermark,
        search=ivf_search_params(chosen.params, nlist),
        seconds=time.monotonic() - began,
    )
    stats["ray"] = {"shards": shard_count, "shard_vectors": [n for _, n in parts], "gpus": gpus}
    return stats


def _wait_beating(
    ray: Any, futures: list[Any], report: Any, bar: tqdm[Any], start: float, span: float
) -> list[Any]:
    """Every future's result, in order; beats the job's heartbeat (and honours a cancel)
    while they run."""
    pending = list(futures)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_S)
        bar.update(len(ready))
        done = len(futures) - len(pending)
        try:
            report(start + span * done / len(futures))
        except Cancelled:
            for future in pending:
                ray.cancel(future, force=True)
            raise
    return list(ray.get(futures))
