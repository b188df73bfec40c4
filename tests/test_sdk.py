"""SDK round trips: the HTTP client against a real server, the async client, the embedded client."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

import unidb
from unidb.models import TransactionRequest
from unidb.service.engine import Engine


def _docs(n: int, dim: int, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"doc-{i}",
            "text": f"text number {i}",
            "metadata": {"i": i, "parity": "even" if i % 2 == 0 else "odd", "nested": {"v": i % 5}},
            "embedding": rng.normal(size=dim).tolist(),
        }
        for i in range(n)
    ]


def test_http_client_round_trip(server_url: str, collection: str) -> None:
    with unidb.Client(server_url) as client:
        assert client.health().status == "ok"
        created = client.create_collection(collection, dim=8)
        assert (created.name, created.dim, created.metric, created.documents) == (
            collection,
            8,
            "cosine",
            0,
        )
        docs = _docs(20, 8)
        result = client.upsert(collection, docs)
        assert (result.written, result.unchanged) == (20, 0)

        stored = client.get(collection, "doc-3")
        assert stored.text == "text number 3"
        assert stored.metadata == {"i": 3, "parity": "odd", "nested": {"v": 3}}
        assert stored.embedding == pytest.approx(docs[3]["embedding"], rel=1e-6)
        assert stored.version == 1

        # the query vector of doc-7 finds doc-7 first, with cosine similarity 1
        response = client.query(collection, vector=docs[7]["embedding"], k=5, mode="vector")  # type: ignore[arg-type]
        assert response.hits[0].id == "doc-7"
        assert response.hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert response.hits[0].scores.vector == response.hits[0].score
        assert len(response.hits) == 5
        assert [h.score for h in response.hits] == sorted(
            (h.score for h in response.hits), reverse=True
        )

        filtered = client.query(
            collection,
            vector=docs[7]["embedding"],
            k=20,
            mode="vector",
            filter={"parity": "even"},  # type: ignore[arg-type]
        )
        assert {h.id for h in filtered.hits} == {f"doc-{i}" for i in range(0, 20, 2)}

        assert collection in {c.name for c in client.list_collections()}
        assert client.get_collection(collection).documents == 20
        assert client.delete(collection, "doc-3") is True
        assert client.delete(collection, "doc-3") is False
        with pytest.raises(unidb.NotFound) as missing:
            client.get(collection, "doc-3")
        assert missing.value.field == "id"
        assert client.delete_collection(collection) is True
        assert client.delete_collection(collection) is False


def test_upsert_changes_version_only_when_content_changes(server_url: str, collection: str) -> None:
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=3)
        doc = {"id": "a", "text": "one", "metadata": {"k": 1}, "embedding": [1.0, 2.0, 3.0]}
        assert client.upsert(collection, [doc]).written == 1
        assert client.upsert(collection, [doc]).unchanged == 1
        assert client.get(collection, "a").version == 1
        assert client.upsert(collection, [{**doc, "embedding": [1.0, 2.0, 4.0]}]).written == 1
        assert client.get(collection, "a").version == 2
        assert client.upsert(collection, [{**doc, "metadata": {"k": 2}}]).written == 1
        changed = client.get(collection, "a")
        assert (changed.version, changed.metadata) == (3, {"k": 2})


def test_ids_need_no_escaping(server_url: str, collection: str) -> None:
    odd_ids = ["a/b", "with space", "q?x=1&y=2", "percent%20", "ünïcødé", "../../etc", "#frag"]
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=2)
        client.upsert(collection, [{"id": i, "text": i, "embedding": [1.0, 0.5]} for i in odd_ids])
        for document_id in odd_ids:
            assert client.get(collection, document_id).text == document_id
        assert client.delete(collection, "a/b")
        assert client.get_collection(collection).documents == len(odd_ids) - 1


def test_server_errors_come_back_as_the_same_classes(server_url: str, collection: str) -> None:
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=2)
        with pytest.raises(unidb.Conflict) as conflict:
            client.create_collection(collection, dim=2)
        assert conflict.value.field == "name"
        with pytest.raises(unidb.InvalidInput) as invalid:
            client.upsert(collection, [{"id": "x", "embedding": [1.0, 2.0, 3.0]}])
        assert invalid.value.field == "documents[0].embedding"
        with pytest.raises(unidb.NotFound):
            client.query("no_such_collection", vector=[1.0, 2.0])


def test_async_client_round_trip(server_url: str, collection: str) -> None:
    async def scenario() -> None:
        async with unidb.AsyncClient(server_url) as client:
            await client.create_collection(collection, dim=4, metric="l2")
            result = await client.upsert(
                collection,
                [
                    {"id": "near", "text": "n", "embedding": [0.0, 0.0, 0.0, 1.0]},
                    {"id": "far", "text": "f", "embedding": [0.0, 0.0, 0.0, 9.0]},
                ],
            )
            assert result.written == 2
            hits = (
                await client.query(collection, vector=[0.0, 0.0, 0.0, 0.0], k=2, mode="vector")
            ).hits
            assert [h.id for h in hits] == ["near", "far"]
            assert hits[0].score == pytest.approx(-1.0)
            assert (await client.get(collection, "far")).text == "f"
            assert await client.delete(collection, "far")
            assert (await client.get_collection(collection)).documents == 1
            with pytest.raises(unidb.NotFound):
                await client.get(collection, "far")
            assert await client.delete_collection(collection)

    asyncio.run(scenario())


def test_embedded_client_keeps_rows_across_reopen(tmp_path: Path) -> None:
    with unidb.Client.embedded(tmp_path / "db") as client:
        client.create_collection("notes", dim=3, metric="ip")
        client.upsert("notes", [{"id": "n1", "text": "remember", "embedding": [1.0, 0.0, 0.0]}])
        assert isinstance(client.backend, Engine)
    with unidb.Client.embedded(tmp_path / "db") as client:
        assert client.get("notes", "n1").text == "remember"
        hits = client.query("notes", vector=[2.0, 0.0, 0.0], k=1, mode="vector").hits
        assert hits[0].id == "n1" and hits[0].score == pytest.approx(2.0)


def test_base64_embeddings_over_rest(api: object, collection: str) -> None:
    import base64

    from fastapi.testclient import TestClient

    assert isinstance(api, TestClient)
    api.post("/v1/collections", json={"name": collection, "dim": 3})
    packed = base64.b64encode(np.asarray([0.5, -1.0, 2.0], dtype="<f4").tobytes()).decode()
    response = api.post(
        f"/v1/collections/{collection}/documents",
        json={"documents": [{"id": "p", "embedding": packed}]},
    )
    assert response.status_code == 200, response.text
    assert api.get(f"/v1/collections/{collection}/documents/p").json()["embedding"] == [
        0.5,
        -1.0,
        2.0,
    ]
    for bad, field in (
        ("not base64!", "documents[0].embedding"),
        (base64.b64encode(b"\x00" * 8).decode(), "documents[0].embedding"),  # two floats, not three
        (base64.b64encode(b"\x00" * 5).decode(), "documents[0].embedding"),  # not whole floats
    ):
        response = api.post(
            f"/v1/collections/{collection}/documents",
            json={"documents": [{"id": "q", "embedding": bad}]},
        )
        assert response.status_code == 400
        assert response.json()["error"]["field"] == field
    assert api.get(f"/v1/collections/{collection}").json()["documents"] == 1


def _recorder(sizes: list[int]) -> Callable[[int, unidb.UpsertResult], None]:
    return lambda size, result: sizes.append(size)


def test_ingest_pipelines_batches_and_names_the_bad_document(
    server_url: str, engine: Engine, collection: str
) -> None:
    rng = np.random.default_rng(9)
    docs = [{"id": f"i{i}", "text": str(i), "embedding": rng.normal(size=4)} for i in range(1000)]
    for client in (unidb.Client(server_url), unidb.Client(backend=engine)):
        client.delete_collection(collection)
        client.create_collection(collection, dim=4)
        seen: list[int] = []
        result = client.ingest(collection, docs, batch_size=128, on_batch=_recorder(seen))
        assert (result.written, result.unchanged) == (1000, 0)
        assert sorted(seen) == sorted([128] * 7 + [104])
        again = client.ingest(collection, iter(docs), batch_size=300, concurrency=3)
        assert (again.written, again.unchanged) == (0, 1000)

        bad = [*docs[:700], {"id": "bad", "embedding": [1.0, 2.0]}, *docs[700:]]
        with pytest.raises(unidb.InvalidInput) as error:
            client.ingest(collection, bad, batch_size=128)
        assert error.value.field == "documents[700].embedding"
        with pytest.raises(unidb.InvalidInput) as error:
            client.ingest(collection, [*docs[:300], {"id": "", "text": "x"}], batch_size=128)
        assert error.value.field == "documents[300].id"
        assert client.get_collection(collection).documents == 1000


class _SeenTransport(httpx.HTTPTransport):
    """A real HTTP transport that notes the paths it carried."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


class _AsyncSeenTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


def test_sync_client_takes_a_transport_and_transacts(
    server_url: str, engine: Engine, collection: str
) -> None:
    namespace = f"sdk_{uuid.uuid4().hex[:8]}"
    transport = _SeenTransport()
    with unidb.Client(server_url, transport=transport) as client:
        client.create_collection(collection, dim=2)
        request = TransactionRequest.model_validate({"ops": [
            {"op": "upsert_documents", "collection": collection,
             "documents": [{"id": "a", "text": "one", "embedding": [1.0, 0.0]}]},
            {"op": "put_state", "namespace": namespace, "key": "k", "value": 1},
        ]})  # fmt: skip
        result = client.transact(request)
        assert [type(r).__name__ for r in result.results] == ["UpsertResult", "StateEntry"]
        assert client.get(collection, "a").text == "one"
        assert client.delete_state(namespace, "k")
    assert transport.paths[:2] == ["/v1/collections", "/v1/transactions"]
    with pytest.raises(ValueError, match="not both"):
        unidb.Client(backend=engine, transport=_SeenTransport())
    with pytest.raises(ValueError, match="not both"):
        unidb.AsyncClient(backend=engine, transport=_AsyncSeenTransport())


def test_async_client_has_what_the_sync_one_has(server_url: str, collection: str) -> None:
    """The methods the asyncio client used to lack, over HTTP through the given transport."""
    namespace = f"sdk_{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(3)
    docs = [{"id": f"a{i}", "text": str(i), "embedding": rng.normal(size=4)} for i in range(200)]
    transport = _AsyncSeenTransport()

    async def scenario() -> None:
        async with unidb.AsyncClient(server_url, transport=transport) as client:
            assert (await client.health()).status == "ok"
            await client.create_collection(collection, dim=4)
            sizes: list[int] = []
            result = await client.ingest(
                collection, docs, batch_size=64, concurrency=3, on_batch=_recorder(sizes)
            )
            assert (result.written, result.unchanged) == (200, 0)
            assert sorted(sizes) == [8, 64, 64, 64]
            assert (await client.ingest(collection, iter(docs), batch_size=50)).unchanged == 200
            bad = [*docs[:130], {"id": "bad", "embedding": [1.0, 2.0]}, *docs[130:]]
            with pytest.raises(unidb.InvalidInput) as error:  # refused by the server
                await client.ingest(collection, bad, batch_size=64)
            assert error.value.field == "documents[130].embedding"

            async with client.transaction() as tx:
                tx.put_state(namespace, "step", 1)
                tx.upsert(
                    collection, [{"id": "t", "text": "in a transaction", "embedding": [1, 0, 0, 0]}]
                )
            assert tx.commit_token.startswith("2:")
            assert (await client.get(collection, "t")).text == "in a transaction"
            with pytest.raises(RuntimeError):
                async with client.transaction() as dropped:
                    dropped.put_state(namespace, "never", 1)
                    raise RuntimeError
            assert dropped.result is None
            assert await client.delete_state(namespace, "never") is False
            deleted = await client.transact(TransactionRequest.model_validate(
                {"ops": [{"op": "delete_state", "namespace": namespace, "key": "step"}]}
            ))  # fmt: skip
            assert type(deleted.results[0]).__name__ == "DeleteResult"

            assert client.tools("anthropic") == unidb.Client("http://127.0.0.1:1").tools(
                "anthropic"
            )
            got = await client.call_tool(
                "get_document", json.dumps({"collection": collection, "id": "t"})
            )
            assert got["text"] == "in a transaction"
            gone = {"collection": collection, "id": "t"}
            assert await client.call_tool("delete_document", gone) == {"deleted": True}
            assert await client.call_tool("delete_document", gone) == {"deleted": False}
            found = await client.call_tool(
                "search", {"collection": collection, "k": 0, "text": "x"}
            )
            assert found["error"]["field"] == "k"
            assert (await client.call_tool("no_such_tool"))["error"]["field"] == "name"

            job = await client.build_index(
                collection, params={"m": 8, "ef_construction": 16}, wait=False
            )
            assert job.status in ("queued", "running", "done")
            ended = await client.wait_job(job.id, timeout=120)
            assert (ended.id, ended.status) == (job.id, "done")
            built = await client.build_index(collection, params={"m": 8, "ef_construction": 16})
            assert built.status == "done"

    asyncio.run(scenario())
    assert {"/healthz", "/v1/transactions", f"/v1/collections/{collection}/index"} <= set(
        transport.paths
    )


def test_async_client_over_an_engine_in_this_process(engine: Engine, collection: str) -> None:
    # not closed: the engine is the session's
    client = unidb.AsyncClient(backend=engine)

    async def scenario() -> None:
        await client.create_collection(collection, dim=2)
        writes = [client.upsert(collection, [{"id": f"e{i}", "text": "x", "embedding": [1.0, i]}])
                  for i in range(4)]  # fmt: skip
        assert [r.written for r in await asyncio.gather(*writes)] == [1, 1, 1, 1]
        hits = (await client.query(collection, vector=[1.0, 0.0], k=1, mode="vector")).hits
        assert hits[0].id == "e0"
        assert await client.delete(collection, "e0") is True
        assert await client.delete(collection, "e0") is False
        assert (await client.get_collection(collection)).documents == 3

    asyncio.run(scenario())
    assert engine.get_collection(collection).documents == 3


def test_async_embedded_client(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with await unidb.AsyncClient.embedded(tmp_path / "db") as client:
            await client.create_collection("notes", dim=2)
            await client.upsert("notes", [{"id": "n1", "text": "kept", "embedding": [1.0, 0.0]}])

    asyncio.run(scenario())
    with unidb.Client.embedded(tmp_path / "db") as client:  # aclose stopped its Postgres
        assert client.get("notes", "n1").text == "kept"
