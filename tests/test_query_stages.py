"""Where a query's time goes: stage timings in `/metrics` and with ``"explain": true``."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from unidb.models import CollectionCreate, Document, QueryRequest
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
        "auth", "parse", "connect", "plan", "vector", "bm25", "delta", "fuse", "hydrate",
        "commit",
    }  # fmt: skip
    assert all(ms >= 0 for ms in stages.values())
    assert explain["candidates"] >= 3
    # the five documents were just written: a strong read scores those the index lacks
    assert explain["changed_since_index"] is not None

    after = _stage_counts(api)
    for stage in ("auth", "parse", "plan", "bm25", "hydrate", "serialise"):
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
