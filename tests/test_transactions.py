"""Transactions across state and documents, all or nothing, with commit tokens."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import unidb
from unidb.service.engine import Engine

from .conftest import snapshot
from .test_text_search import held_transaction


@pytest.fixture
def namespace(engine: Engine) -> Iterator[str]:
    name = f"tx_{uuid.uuid4().hex[:10]}"
    yield name
    with engine.transaction() as conn:
        conn.execute("DELETE FROM unidb.state WHERE namespace = %s", (name,))


def test_state_and_documents_commit_together(
    server_url: str, collection: str, namespace: str
) -> None:
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=2)
        client.put_state(namespace, "cursor", 0)
        with client.transaction() as tx:
            tx.upsert(collection, [{"id": "m1", "text": "remember the milk", "embedding": [1, 0]}])
            tx.put_state(namespace, "cursor", 1, if_version=1)
            tx.put_state(namespace, "last", {"doc": "m1"})
        assert tx.result is not None
        assert [type(r).__name__ for r in tx.result.results] == [
            "UpsertResult",
            "StateEntry",
            "StateEntry",
        ]
        assert re.fullmatch(r"2:\d+:[0-9A-F]+/[0-9A-F]+", tx.commit_token)
        assert client.get_state(namespace, "cursor").value == 1
        assert client.get(collection, "m1").text == "remember the milk"
        with client.transaction() as tx:
            tx.delete(collection, "m1")
            tx.delete_state(namespace, "last")
        assert client.delete(collection, "m1") is False
        assert client.delete_state(namespace, "last") is False


def test_a_failing_op_changes_nothing_and_is_named(
    server_url: str, engine: Engine, collection: str, namespace: str
) -> None:
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=2)
        client.put_state(namespace, "cursor", 5)
        before = snapshot(engine)
        cases: list[tuple[list[Any], str]] = [
            ([("put_state", namespace, "cursor", 6, 99)], "ops[1].if_version"),
            (
                [("upsert", collection, [{"id": "x", "embedding": [1, 2, 3]}])],
                "ops[1].documents[0].embedding",
            ),
            ([("delete", collection, "nope")], "ops[1].id"),
            ([("upsert", "no_such_collection", [{"id": "x"}])], "ops[1].collection"),
        ]
        for failing, field in cases:
            with pytest.raises(unidb.UnidbError) as error:
                with client.transaction() as tx:
                    tx.upsert(collection, [{"id": "ok", "text": "fine", "embedding": [0, 1]}])
                    name, *args = failing[0]
                    if name == "put_state":
                        tx.put_state(args[0], args[1], args[2], if_version=args[3])
                    else:
                        getattr(tx, name)(*args)
                    tx.put_state(namespace, "cursor", 7)
            assert error.value.field == field, error.value
            assert 400 <= error.value.status < 500
            assert client.get_state(namespace, "cursor").value == 5
            assert client.delete(collection, "ok") is False
        assert snapshot(engine) == before


def test_bad_transaction_bodies(api: TestClient, engine: Engine) -> None:
    before = snapshot(engine)
    for body, field in (
        ({"ops": []}, "ops"),
        ({"ops": [{"op": "drop_everything"}]}, None),
        ({"ops": [{"op": "put_state", "namespace": "a/b", "key": "k", "value": 1}]}, None),
    ):
        response = api.post("/v1/transactions", json=body)
        assert response.status_code == 400, response.text
        if field:
            assert response.json()["error"]["field"] == field
    assert snapshot(engine) == before


def test_commit_token_makes_eventual_reads_include_the_commit(
    engine: Engine, server_url: str, collection: str
) -> None:
    writer, reader = unidb.Client(server_url), unidb.Client(server_url)
    writer.create_collection(collection, dim=2)
    assert reader.query(collection, text="anything", mode="bm25").hits == []  # the index exists
    with held_transaction(engine):  # keeps the BM25 index from reaching the commit
        with writer.transaction() as tx:
            tx.upsert(
                collection,
                [{"id": "fresh", "text": "zanzibar expedition notes", "embedding": [1, 0]}],
            )
        stale = reader.query(collection, text="zanzibar", mode="bm25", consistency="eventual").hits
        assert stale == []
        seen = reader.query(
            collection, text="zanzibar", mode="bm25", consistency="eventual", after=tx.commit_token
        ).hits
        assert [h.id for h in seen] == ["fresh"]
        # a token of the first form (no LSN) still works
        xid = tx.commit_token.split(":")[1]
        old_form = reader.query(
            collection, text="zanzibar", mode="bm25", consistency="eventual", after=f"1:{xid}"
        ).hits
        assert [h.id for h in old_form] == ["fresh"]
    with pytest.raises(unidb.InvalidInput) as error:
        reader.query(collection, text="x", after="not-a-token")
    assert error.value.field == "after"
    writer.close()
    reader.close()


def test_two_upserts_of_one_id_in_a_transaction(server_url: str, collection: str) -> None:
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=2)
        client.upsert(collection, [{"id": "a", "text": "first", "embedding": [1, 0]}])
        with client.transaction() as tx:  # both merge into the existing row
            tx.upsert(collection, [{"id": "a", "text": "second", "embedding": [1, 0]}])
            tx.upsert(collection, [{"id": "a", "text": "third", "embedding": [0, 1]}])
        stored = client.get(collection, "a")
        assert (stored.text, stored.version) == ("third", 3)
