"""Each configurable limit: a request at the limit passes, one past it is refused naming it.

Body size and text length are in test_bad_input.py; the rest are here, each against an
engine built with a small value of its setting.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient

from unidb.service.api.main import create_app
from unidb.service.db.pool import open_pool
from unidb.service.engine import Engine

from .conftest import LocalClient, snapshot

DIM = 3


@contextmanager
def limited_api(engine: Engine, *, own_pool: bool = False, **limits: Any) -> Iterator[TestClient]:
    """The REST API over an engine with ``limits`` set (and its own pool, for pool limits)."""
    settings = engine.settings.model_copy(update=limits)
    pool = open_pool(engine.dsn, settings) if own_pool else engine.pool
    limited = Engine(settings, pool, engine.dsn, background_pool=engine.background_pool)
    # the session engine's tailer, prefix follower and job runner own the background work
    limited.text_indexes.close()
    limited.context.close()
    limited.jobs.close()
    try:
        with LocalClient(
            create_app(settings, engine=limited), raise_server_exceptions=False
        ) as api:
            yield api
    finally:
        if own_pool:
            pool.close()


@pytest.fixture
def loaded(api: TestClient, collection: str) -> str:
    assert api.post("/v1/collections", json={"name": collection, "dim": DIM}).status_code == 201
    documents = [
        {"id": f"d{i}", "text": f"note {i}", "metadata": {"n": i}, "embedding": [1.0, i, 0.0]}
        for i in range(8)
    ]
    assert api.post(
        f"/v1/collections/{collection}/documents", json={"documents": documents}
    ).is_success
    return collection


def _refused(response: Any, status: int, field: str | None, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error.get("field") == field, error
    for word in words:
        assert word in error["message"], error


def test_batch_size(engine: Engine, loaded: str) -> None:
    def batch(n: int) -> dict[str, Any]:
        return {"documents": [{"id": f"b{i}", "embedding": [0.0, 1.0, i]} for i in range(n)]}

    with limited_api(engine, max_batch_documents=3) as api:
        before = snapshot(engine)
        response = api.post(f"/v1/collections/{loaded}/documents", json=batch(4))
        _refused(response, 413, "documents", "at most 3")
        assert snapshot(engine) == before
        assert api.post(f"/v1/collections/{loaded}/documents", json=batch(3)).is_success


def test_k(engine: Engine, loaded: str) -> None:
    query = {"vector": [1.0, 2.0, 0.0], "mode": "vector"}
    context = {"collection": loaded, "query": "note", "mode": "bm25"}
    with limited_api(engine, max_k=5) as api:
        response = api.post(f"/v1/collections/{loaded}/query", json={**query, "k": 5})
        assert len(response.json()["hits"]) == 5
        response = api.post(f"/v1/collections/{loaded}/query", json={**query, "k": 6})
        _refused(response, 400, "k", "UNIDB_MAX_K", "limit of 5")
        _refused(api.post("/v1/context", json={**context, "k": 6}), 400, "k", "UNIDB_MAX_K")
    # the default limit is 1000, and the setting can raise it past that
    with limited_api(engine, max_k=2000) as api:
        response = api.post(f"/v1/collections/{loaded}/query", json={**query, "k": 2000})
        assert response.status_code == 200 and len(response.json()["hits"]) == 8


def test_query_length(engine: Engine, loaded: str) -> None:
    with limited_api(engine, max_query_chars=20) as api:
        at_limit = {"text": "note " * 4, "mode": "hybrid", "vector": [1.0, 0.0, 0.0]}
        assert api.post(f"/v1/collections/{loaded}/query", json=at_limit).status_code == 200
        over = {**at_limit, "text": "note " * 4 + "x"}
        response = api.post(f"/v1/collections/{loaded}/query", json=over)
        _refused(response, 400, "text", "21 characters", "UNIDB_MAX_QUERY_CHARS")
        context = {"collection": loaded, "query": "n" * 21, "mode": "bm25"}
        _refused(api.post("/v1/context", json=context), 400, "query", "UNIDB_MAX_QUERY_CHARS")


def test_filter_depth(engine: Engine, loaded: str) -> None:
    # every nested object counts, the operator object too
    three_levels = {"$not": {"n": {"$gt": 3}}}
    four_levels = {"$not": {"$not": {"n": {"$gt": 3}}}}
    query = {"vector": [1.0, 0.0, 0.0], "mode": "vector"}
    path = f"/v1/collections/{loaded}/query"
    with limited_api(engine, max_filter_depth=4) as api:
        response = api.post(path, json={**query, "filter": three_levels})
        assert {hit["id"] for hit in response.json()["hits"]} == {"d0", "d1", "d2", "d3"}
        response = api.post(path, json={**query, "filter": four_levels})
        assert {hit["id"] for hit in response.json()["hits"]} == {f"d{i}" for i in range(4, 8)}
    with limited_api(engine, max_filter_depth=3) as api:
        assert api.post(path, json={**query, "filter": three_levels}).status_code == 200
        response = api.post(path, json={**query, "filter": four_levels})
        _refused(response, 400, "filter.$not.$not.n", "deeper than 3")


def test_state_value_size(engine: Engine) -> None:
    with limited_api(engine, max_state_bytes=64) as api:
        before = snapshot(engine)
        response = api.put("/v1/state/limits/big", json={"value": "v" * 100})
        assert response.status_code == 413, response.text
        assert snapshot(engine) == before
        assert api.put("/v1/state/limits/small", json={"value": "v" * 10}).is_success
        assert api.delete("/v1/state/limits/small").is_success


def test_statement_timeout(engine: Engine, loaded: str) -> None:
    """A statement stuck behind a lock is cancelled at the timeout: 503, nothing written."""
    with limited_api(engine, own_pool=True, statement_timeout_ms=300) as api:
        before = snapshot(engine)
        with engine.transaction() as conn:
            # holds the collection row that an upsert locks against a concurrent drop
            conn.execute("SELECT 1 FROM unidb.collections WHERE name = %s FOR UPDATE", (loaded,))
            body = {"documents": [{"id": "late", "embedding": [0.0, 0.0, 1.0]}]}
            response = api.post(f"/v1/collections/{loaded}/documents", json=body)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert "UNIDB_STATEMENT_TIMEOUT_MS" in response.json()["error"]["message"]
        assert snapshot(engine) == before
        assert api.post(f"/v1/collections/{loaded}/documents", json=body).is_success


def test_pool_exhaustion_is_503_not_a_hang(engine: Engine, loaded: str) -> None:
    with limited_api(
        engine, own_pool=True, pool_min_size=1, pool_max_size=1, pool_timeout_s=0.3
    ) as api:
        pool = api.app.state.engine.pool  # type: ignore[attr-defined]
        held = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with pool.connection():
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert held.wait(10)
            response = api.get(f"/v1/collections/{loaded}")
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert "UNIDB_POOL_MAX_SIZE" in response.json()["error"]["message"]
        finally:
            release.set()
            holder.join()
        assert api.get(f"/v1/collections/{loaded}").status_code == 200
