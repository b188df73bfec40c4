"""Query vectors on the wire: JSON floats or base64 float32, answered alike."""

from __future__ import annotations

import base64

import numpy as np
from fastapi.testclient import TestClient

import unidb


def test_a_base64_query_vector_is_answered_like_its_floats(
    api: TestClient, server_url: str, collection: str
) -> None:
    assert api.post("/v1/collections", json={"name": collection, "dim": 3}).status_code == 201
    rng = np.random.default_rng(3)
    docs = [{"id": f"d{i}", "embedding": rng.normal(size=3).tolist()} for i in range(20)]
    assert api.post(f"/v1/collections/{collection}/documents", json={"documents": docs}).is_success
    query = np.asarray([0.3, -1.0, 0.5], dtype=np.float32)
    packed = base64.b64encode(query.astype("<f4").tobytes()).decode()
    path = f"/v1/collections/{collection}/query"
    as_floats = api.post(path, json={"vector": query.tolist(), "mode": "vector", "k": 5})
    as_base64 = api.post(path, json={"vector": packed, "mode": "vector", "k": 5})
    assert as_floats.status_code == as_base64.status_code == 200
    assert [h["id"] for h in as_base64.json()["hits"]] == [
        h["id"] for h in as_floats.json()["hits"]
    ]
    assert len(as_base64.json()["hits"]) == 5

    two = base64.b64encode(np.zeros(2, dtype="<f4").tobytes()).decode()
    odd = base64.b64encode(b"\0" * 6).decode()
    for bad, message in (("not base64!", "base64"), (odd, "whole float32"), (two, "dimensions")):
        refused = api.post(path, json={"vector": bad, "mode": "vector"})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["field"] == "vector"
        assert message in refused.json()["error"]["message"]

    # the SDK sends its query vectors packed, and can ask where the time went
    with unidb.Client(server_url) as client:
        answer = client.query(collection, vector=query.tolist(), mode="vector", k=5, explain=True)
    assert [h.id for h in answer.hits] == [h["id"] for h in as_floats.json()["hits"]]
    assert answer.explain is not None and "vector" in answer.explain.stages_ms
