"""/metrics: Prometheus text with request, query, ingest, lag, job, pool and context figures."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from unidb.service.engine import Engine


def _samples(api: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = api.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:  # fmt: skip
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_the_work(api: TestClient, engine: Engine, collection: str) -> None:
    before = _samples(api)
    route = "/v1/collections/{name}/query"
    assert api.post("/v1/collections", json={"name": collection, "dim": 2}).status_code == 201
    docs = [{"id": f"d{i}", "text": f"kv cache block {i}"} for i in range(3)]
    written = api.post(f"/v1/collections/{collection}/documents", json={"documents": docs})
    assert written.status_code == 200
    for _ in range(2):
        found = api.post(
            f"/v1/collections/{collection}/query", json={"text": "cache", "mode": "bm25"}
        )
        assert found.status_code == 200
    assert api.post(f"/v1/collections/{collection}/query", json={"k": 0}).status_code == 400
    built = api.post(
        "/v1/context", json={"collection": collection, "query": "cache", "mode": "bm25"}
    )
    assert built.status_code == 200
    after = _samples(api)

    assert _value(after, "unidb_ingest_rows_total", collection=collection) == 3
    ok = {"route": route, "method": "POST", "status": "200"}
    assert (
        _value(after, "unidb_http_request_seconds_count", **ok)
        - _value(before, "unidb_http_request_seconds_count", **ok)
        == 2
    )
    assert (
        _value(after, "unidb_http_request_seconds_count", route=route, method="POST", status="400")
        >= 1
    )
    # a path no route matches is one series, whatever the path
    api.get("/v1/nowhere/at/all")
    assert (
        _value(
            _samples(api),
            "unidb_http_request_seconds_count",
            route="unmatched",
            method="GET",
            status="404",
        )
        >= 1
    )

    bm25 = {"mode": "bm25", "vector_index": "none"}
    assert (
        _value(after, "unidb_query_seconds_count", **bm25)
        - _value(before, "unidb_query_seconds_count", **bm25)
        == 3
    )  # two queries and the context's search
    assert (
        _value(after, "unidb_index_lag", tenant="default", collection=collection, index="bm25") == 0
    )
    assert _value(after, "unidb_pool_connections", state="max") == engine.settings.pool_max_size
    assert ("unidb_jobs", (("status", "running"),)) in after
    prompt = _value(after, "unidb_context_prompt_tokens_total") - _value(
        before, "unidb_context_prompt_tokens_total"
    )
    assert prompt == len(built.json()["token_ids"]) > 0
    assert ("unidb_context_cached_tokens_total", ()) in after
