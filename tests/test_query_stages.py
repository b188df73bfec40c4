"""Where a query's time goes: stage timings in `/metrics` and with ``"explain": true``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import pq

from unidb.errors import InvalidInput, NotFound
from unidb.indexing.pg import Connection
from unidb.models import CollectionCreate, Document, QueryRequest
from unidb.service.auth.tenancy import DEFAULT_TENANT
from unidb.service.db.pool import open_pool
from unidb.service.engine import Engine


def _stage_counts(api: TestClient) -> dict[str, float]:
    text = api.get("/metrics").text
    return {
        sample.labels["stage"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "unidb_query_stage_seconds"
        for sample in family.samples
        if sample.name.endswith("_count")
    }


def test_rest_query_explains_every_stage_it_ran(api: TestClient, collection: str) -> None:
    assert api.post("/v1/collections", json={"name": collection, "dim": 2}).status_code == 201
    docs = [{"id": f"d{i}", "text": f"cache block {i}", "embedding": [1, i]} for i in range(5)]
    assert api.post(f"/v1/collections/{collection}/documents", json={"documents": docs}).is_success
    before = _stage_counts(api)

    plain = api.post(f"/v1/collections/{collection}/query", json={"text": "cache", "k": 3})
    assert plain.status_code == 200 and plain.json()["explain"] is None
    body = {"text": "cache", "vector": [1, 0], "k": 3, "explain": True}
    answer = api.post(f"/v1/collections/{collection}/query", json=body)
    assert answer.status_code == 200
    explain = answer.json()["explain"]
    stages = explain["stages_ms"]
    assert set(stages) == {
        "auth", "parse", "dispatch", "connect", "plan", "vector", "bm25", "delta", "fuse",
        "hydrate", "commit",
    }  # fmt: skip
    assert all(ms >= 0 for ms in stages.values())
    assert explain["candidates"] >= 3
    # the five documents were just written: a strong read scores those the index lacks
    assert explain["changed_since_index"] is not None

    after = _stage_counts(api)
    for stage in ("auth", "parse", "dispatch", "plan", "bm25", "hydrate", "return", "serialise"):
        assert after[stage] - before.get(stage, 0) == 2, stage  # both queries, once each


def test_in_process_queries_record_their_own_stages(engine: Engine, collection: str) -> None:
    def count(stage: str) -> float:
        value = engine.metrics.registry.get_sample_value(
            "unidb_query_stage_seconds_count", {"stage": stage}
        )
        return value or 0.0

    engine.create_collection(CollectionCreate(name=collection, dim=2))
    engine.upsert_documents(collection, [Document(id="a", text="zebra", embedding=[1, 0])])
    planned, authed = count("plan"), count("auth")
    answer = engine.query(collection, QueryRequest(text="zebra", mode="bm25", explain=True))
    assert [hit.id for hit in answer.hits] == ["a"]
    assert answer.explain is not None
    assert "auth" not in answer.explain.stages_ms
    assert {"connect", "plan", "bm25", "hydrate", "commit"} <= set(answer.explain.stages_ms)
    assert count("plan") == planned + 1
    assert count("auth") == authed  # no REST request, no key check


@contextmanager
def one_connection_engine(engine: Engine) -> Iterator[tuple[Engine, Connection]]:
    """An engine over a pool of one connection (so every statement of a query can be traced
    on it) that reads the session engine's indexes."""
    settings = engine.settings.model_copy(update={"pool_min_size": 1, "pool_max_size": 1})
    pool = open_pool(engine.dsn, settings)
    own = Engine(settings, pool, engine.dsn, background_pool=engine.background_pool)
    own.planner.text_indexes = engine.text_indexes
    try:
        with pool.connection() as conn:
            held = conn
        yield own, held
    finally:
        own.outbound.close()
        pool.close()


def _round_trips(conn: Connection, run: Callable[[], object], path: Path) -> int:
    """How many times ``run`` waited on the database: each simple Query or extended-protocol
    Sync the client sent is one round trip."""
    with path.open("w") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            run()
        finally:
            conn.pgconn.untrace()
    sent = [line.split("\t") for line in path.read_text().splitlines()]
    return sum(1 for fields in sent if fields[0] == "F" and fields[2].startswith(("Query", "Sync")))


def test_a_bm25_query_on_a_known_collection_takes_one_round_trip(
    engine: Engine, collection: str, tmp_path: Path
) -> None:
    engine.create_collection(CollectionCreate(name=collection, dim=2))
    engine.upsert_documents(
        collection, [Document(id=f"d{i}", text=f"zebra {i}", embedding=[1, i]) for i in range(5)]
    )
    deadline = time.monotonic() + 30
    while engine.get_collection(collection).bm25.lag:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with one_connection_engine(engine) as (own, conn):
        strong = QueryRequest(text="zebra", mode="bm25", k=3)
        eventual = strong.model_copy(update={"consistency": "eventual"})
        trace = tmp_path / "trace"
        own.query(collection, strong)  # the connection prepares the statements a read sends
        own.planner.collections.forget((DEFAULT_TENANT, collection))
        # a query on a collection not yet remembered looks it up first
        first = _round_trips(conn, lambda: own.query(collection, strong), trace)
        # nothing changed since the index's watermark: the outbox read travels with the
        # hits' rows and the collection check
        assert _round_trips(conn, lambda: own.query(collection, strong), trace) == 1
        assert _round_trips(conn, lambda: own.query(collection, eventual), trace) == 1
        assert first == 2
        hits = own.query(collection, eventual).hits
        assert len(hits) == 3 and all(h.text.startswith("zebra") for h in hits)


def test_a_vector_query_pgvector_answers_takes_one_round_trip(
    engine: Engine, collection: str, tmp_path: Path
) -> None:
    engine.create_collection(CollectionCreate(name=collection, dim=2))
    engine.upsert_documents(
        collection, [Document(id=f"d{i}", text=f"zebra {i}", embedding=[1, i]) for i in range(5)]
    )
    assert engine.build_vector_index(collection)
    with one_connection_engine(engine) as (own, conn):
        strong = QueryRequest(vector=[1, 4], mode="vector", k=3)
        eventual = strong.model_copy(update={"consistency": "eventual"})
        trace = tmp_path / "trace"
        # not remembered: the lookup, then the statement with the collection check
        assert _round_trips(conn, lambda: own.query(collection, strong), trace) == 2
        # the HNSW index keeps up with every commit, so a strong read needs no more
        assert _round_trips(conn, lambda: own.query(collection, strong), trace) == 1
        assert _round_trips(conn, lambda: own.query(collection, eventual), trace) == 1
        answer = own.query(collection, strong)
        assert answer.vector_index == "hnsw"
        assert [h.id for h in answer.hits] == ["d4", "d3", "d2"]


def test_a_connection_holds_at_most_prepared_max_statements(
    engine: Engine, collection: str
) -> None:
    """Each k is its own statement text: past psycopg's cache size, the connection
    deallocates the least recently used, so a server connection's prepared statements
    stay bounded however many kinds of query it serves."""
    engine.create_collection(CollectionCreate(name=collection, dim=2))
    engine.upsert_documents(
        collection, [Document(id=f"d{i}", text=f"zebra {i}", embedding=[1, i]) for i in range(5)]
    )
    assert engine.build_vector_index(collection)
    with one_connection_engine(engine) as (own, conn):
        kinds = conn.prepared_max + 30
        for k in range(1, kinds + 1):
            hits = own.query(collection, QueryRequest(vector=[1, 4], mode="vector", k=k)).hits
            assert len(hits) == min(k, 5)
        with own.pool.connection() as held:
            (prepared,) = held.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
        assert 0 < prepared <= conn.prepared_max
        hits = own.query(collection, QueryRequest(vector=[1, 4], mode="vector", k=1)).hits
        assert [h.id for h in hits] == ["d4"]  # an evicted statement is prepared again


def _id(engine: Engine, name: str) -> int:
    with engine.transaction() as conn:
        row = conn.execute("SELECT id FROM unidb.collections WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_callers_mistake_on_a_remembered_collection_is_answered_once(
    engine: Engine, collection: str
) -> None:
    engine.create_collection(CollectionCreate(name=collection, dim=2))
    engine.upsert_documents(collection, [Document(id="a", text="zebra", embedding=[1, 0])])
    engine.query(collection, QueryRequest(text="zebra", mode="bm25"))
    key = (DEFAULT_TENANT, collection)
    remembered = engine.planner.collections.get(key)
    assert remembered is not None
    with pytest.raises(InvalidInput):
        engine.query(collection, QueryRequest(vector=[1, 0, 0], mode="vector"))
    with pytest.raises(InvalidInput):
        engine.query(collection, QueryRequest(text="zebra", filter={"n": {"$bogus": 1}}))
    assert engine.planner.collections.get(key) is remembered  # still the row it was


def test_a_remembered_collection_changed_elsewhere_is_answered_as_it_is_now(
    engine: Engine, collection: str
) -> None:
    # another engine on the same database: another process, as far as this one knows
    other = Engine(engine.settings, engine.pool, engine.dsn, background_pool=engine.background_pool)
    try:
        engine.create_collection(CollectionCreate(name=collection, dim=2))
        engine.upsert_documents(collection, [Document(id="old", text="zebra", embedding=[1, 0])])
        bm25 = QueryRequest(text="zebra", mode="bm25")
        assert [h.id for h in engine.query(collection, bm25).hits] == ["old"]

        old_id = _id(engine, collection)
        other.delete_collection(collection)
        # this process's tailer lets go of the dropped collection's index, as it does when
        # it reads the drop from the outbox
        engine.text_indexes.drop(old_id)
        with pytest.raises(NotFound):
            engine.query(collection, bm25)
        assert not engine.text_indexes.path(old_id).exists()  # not rebuilt for a gone row

        other.create_collection(CollectionCreate(name=collection, dim=3))
        other.upsert_documents(collection, [Document(id="new", text="zebra", embedding=[0, 0, 1])])
        assert [h.id for h in engine.query(collection, bm25).hits] == ["new"]
        other.delete_collection(collection)
        other.create_collection(CollectionCreate(name=collection, dim=4))
        other.upsert_documents(
            collection, [Document(id="newer", text="zebra", embedding=[0, 0, 0, 1])]
        )
        # a 4-d vector: the remembered 3-d row must not refuse it
        vector = QueryRequest(vector=[0, 0, 0, 1], mode="vector", k=1)
        assert [h.id for h in engine.query(collection, vector).hits] == ["newer"]
    finally:
        other.text_indexes.close()
        other.outbound.close()
