"""Every path segment the SDK builds from a caller's value stays that one value: no id,
name or key can make a client hit another route (``..`` deleting the collection)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import unidb

# ids that a URL normaliser or a naive encoder turns into other paths
TRICKY_IDS = ["..", ".", "a/b", "%2e%2e", "?x", "#f", "a/../..", "./.", "%", "x%2F..%2F.."]


def _upsert_tricky(client: unidb.Client, collection: str) -> None:
    client.create_collection(collection, dim=2)
    documents = [{"id": i, "text": f"doc {i}", "embedding": [1.0, 0.0]} for i in TRICKY_IDS]
    documents.append({"id": "keep", "text": "the bystander", "embedding": [0.0, 1.0]})
    client.upsert(collection, documents)


def test_sync_client_deletes_each_tricky_id_alone(server_url: str, collection: str) -> None:
    with unidb.Client(server_url) as client:
        _upsert_tricky(client, collection)
        for document_id in TRICKY_IDS:
            assert client.get(collection, document_id).text == f"doc {document_id}"
        remaining = set(TRICKY_IDS) | {"keep"}
        for document_id in TRICKY_IDS:
            assert client.delete(collection, document_id) is True
            remaining.discard(document_id)
            # the collection is still there, holding exactly the others
            assert client.get_collection(collection).documents == len(remaining)
            for other in remaining:
                assert client.get(collection, other).id == other
        assert client.delete(collection, "..") is False
        assert client.get(collection, "keep").text == "the bystander"


def test_async_client_deletes_each_tricky_id_alone(server_url: str, collection: str) -> None:
    with unidb.Client(server_url) as client:
        _upsert_tricky(client, collection)

    async def run() -> None:
        async with unidb.AsyncClient(server_url) as client:
            for document_id in TRICKY_IDS:
                assert (await client.get(collection, document_id)).id == document_id
                assert await client.delete(collection, document_id) is True
            assert (await client.get_collection(collection)).documents == 1
            assert (await client.get(collection, "keep")).text == "the bystander"

    asyncio.run(run())


def test_delete_document_tool_deletes_dot_dot_alone(server_url: str, collection: str) -> None:
    with unidb.Client(server_url) as client:
        _upsert_tricky(client, collection)
        for document_id in ("..", "."):
            assert client.call_tool(
                "delete_document", {"collection": collection, "id": document_id}
            ) == {"deleted": True}
        assert client.get_collection(collection).documents == len(TRICKY_IDS) + 1 - 2
        with pytest.raises(unidb.NotFound):
            client.get(collection, "..")


def test_state_names_with_dots_stay_in_their_namespace(server_url: str) -> None:
    namespace = f"seg_{uuid.uuid4().hex[:8]}"
    with unidb.Client(server_url) as client:
        for key in ("..", ".", "a/../b", "?k", "#k", "%2e"):
            client.put_state(namespace, key, {"key": key})
        client.put_state("..", "..", "dots")
        client.delete_state(namespace, "..")
        keys = sorted(entry.key for entry in client.list_state(namespace).entries)
        assert keys == sorted(["#k", "%2e", ".", "?k", "a/../b"])
        assert client.get_state("..", "..").value == "dots"
        client.delete_state("..", "..")
        with pytest.raises(unidb.NotFound):
            client.get_state("..", "..")


@pytest.mark.parametrize("bad_id", ["line\nbreak", "tab\there", "bell\x07", "del\x7f"])
def test_ids_a_url_path_cannot_carry_are_refused(
    server_url: str, collection: str, bad_id: str
) -> None:
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=2)
        with pytest.raises(unidb.InvalidInput) as refused:
            client.upsert(collection, [{"id": bad_id, "text": "x", "embedding": [1.0, 0.0]}])
        assert refused.value.field == "documents[0].id"
        with pytest.raises(unidb.InvalidInput):
            client.put_state("ns", bad_id, 1)
        assert client.get_collection(collection).documents == 0
