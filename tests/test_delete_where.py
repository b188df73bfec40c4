"""Deleting by filter and ids: one transaction, the outbox told, bad input refused."""

from __future__ import annotations

import pytest

import unidb
from unidb.service.engine import Engine

from .conftest import snapshot


@pytest.mark.parametrize("over", ["rest", "embedded"])
def test_delete_where(server_url: str, engine: Engine, collection: str, over: str) -> None:
    client = unidb.Client(server_url) if over == "rest" else unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(
        collection,
        [
            {"id": f"d{i}", "text": f"note {i} shared", "metadata": {"source": f"s{i % 3}"}}
            for i in range(9)
        ],
    )
    assert client.delete_where(collection, filter={"source": "s0"}) == 3
    assert client.delete_where(collection, ids=["d1", "d2", "missing"]) == 2
    assert client.delete_where(collection, filter={"source": "s1"}, ids=["d4", "d5"]) == 1
    left = {hit.id for hit in client.query(collection, text="shared", mode="bm25", k=20).hits}
    assert left == {"d5", "d7", "d8"}  # strong BM25 reads see the deletes at once
    assert client.get_collection(collection).documents == 3

    before = snapshot(engine)
    with pytest.raises(unidb.InvalidInput) as refused:
        client.delete_where(collection)
    assert refused.value.field == "filter"
    with pytest.raises(unidb.InvalidInput):
        client.delete_where(collection, filter={"source": {"$regex": "s"}})
    with pytest.raises(unidb.NotFound):
        client.delete_where("no_such_collection", ids=["d5"])
    assert snapshot(engine) == before


@pytest.mark.parametrize("over", ["rest", "embedded"])
def test_an_empty_filter_deletes_nothing_unless_all_is_said(
    server_url: str, engine: Engine, collection: str, over: str
) -> None:
    client = unidb.Client(server_url) if over == "rest" else unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(collection, [{"id": f"d{i}", "text": f"note {i}"} for i in range(5)])
    before = snapshot(engine)
    for empty in ({}, {"$and": [{}]}, {"$or": [{}, {"source": "s"}]}, {"$not": {"$not": {}}}):
        with pytest.raises(unidb.InvalidInput) as refused:
            client.delete_where(collection, filter=empty)
        assert refused.value.field is not None and refused.value.field.startswith("filter")
    with pytest.raises(unidb.InvalidInput) as ambiguous:
        client.delete_where(collection, filter={"source": "s"}, all=True)
    assert ambiguous.value.field == "all"
    assert snapshot(engine) == before
    assert client.delete_where(collection, ids=["d1"], filter={}) == 1  # the ids decide
    assert client.delete_where(collection, all=True) == 4
    assert client.get_collection(collection).documents == 0


def test_raw_rest_empty_filter_is_a_400(api: object, collection: str, engine: Engine) -> None:
    from fastapi.testclient import TestClient

    assert isinstance(api, TestClient)
    api.post("/v1/collections", json={"name": collection, "dim": 2})
    api.post(f"/v1/collections/{collection}/documents", json={"documents": [{"id": "a"}]})
    before = snapshot(engine)
    refused = api.post(f"/v1/collections/{collection}/documents/delete", json={"filter": {}})
    assert refused.status_code == 400
    assert refused.json()["error"]["field"] == "filter"
    assert snapshot(engine) == before
