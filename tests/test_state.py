"""Application state: JSON values with versions, compare-and-set, listing, bad input."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest
from fastapi.testclient import TestClient

import unidb
from unidb.service.engine import Engine

from .conftest import snapshot


@pytest.fixture
def namespace(engine: Engine) -> str:
    name = f"ns_{uuid.uuid4().hex[:10]}"
    yield name
    with engine.transaction() as conn:
        conn.execute("DELETE FROM unidb.state WHERE namespace = %s", (name,))


def test_put_get_delete_with_versions(server_url: str, namespace: str) -> None:
    with unidb.Client(server_url) as client:
        first = client.put_state(
            namespace, "agent/plan", {"steps": ["search", "answer"], "done": 0}
        )
        assert first.version == 1 and first.value == {"steps": ["search", "answer"], "done": 0}
        second = client.put_state(namespace, "agent/plan", {"steps": [], "done": 2})
        assert second.version == 2 and second.created_at == first.created_at
        assert client.get_state(namespace, "agent/plan").value == {"steps": [], "done": 2}
        for value in (None, 3, "text", [1, {"a": None}], 1.5, True):
            client.put_state(namespace, "scalar", value)
            assert client.get_state(namespace, "scalar").value == value
        assert client.delete_state(namespace, "agent/plan") is True
        assert client.delete_state(namespace, "agent/plan") is False
        with pytest.raises(unidb.NotFound) as missing:
            client.get_state(namespace, "agent/plan")
        assert missing.value.field == "key"


def test_compare_and_set(server_url: str, namespace: str) -> None:
    with unidb.Client(server_url) as client:
        created = client.put_state(namespace, "lock", {"owner": "a"}, if_version=0)
        assert created.version == 1
        with pytest.raises(unidb.Conflict) as taken:
            client.put_state(namespace, "lock", {"owner": "b"}, if_version=0)
        assert taken.value.field == "if_version" and "version 1" in taken.value.message
        with pytest.raises(unidb.Conflict):
            client.put_state(namespace, "lock", {"owner": "b"}, if_version=7)
        assert client.put_state(namespace, "lock", {"owner": "b"}, if_version=1).version == 2
        with pytest.raises(unidb.Conflict):
            client.delete_state(namespace, "lock", if_version=1)
        assert client.get_state(namespace, "lock").value == {"owner": "b"}
        assert client.delete_state(namespace, "lock", if_version=2)


def test_concurrent_cas_increments_lose_no_update(server_url: str, namespace: str) -> None:
    workers, increments = 8, 15
    with unidb.Client(server_url) as client:
        client.put_state(namespace, "counter", 0)
    conflicts: list[int] = []
    # everyone reads version 1 before anyone writes: the first round must collide
    first_round = threading.Barrier(workers)

    def work() -> None:
        with unidb.Client(server_url) as own:  # each worker its own client and connections
            done = retries = 0
            while done < increments:
                current = own.get_state(namespace, "counter")
                if done == 0 and retries == 0:
                    first_round.wait()
                try:
                    own.put_state(
                        namespace, "counter", current.value + 1, if_version=current.version
                    )
                    done += 1
                except unidb.Conflict:
                    retries += 1
            conflicts.append(retries)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with unidb.Client(server_url) as client:
        final = client.get_state(namespace, "counter")
    assert final.value == workers * increments
    assert final.version == workers * increments + 1
    assert sum(conflicts) >= workers - 1  # the first round alone makes all but one retry


def test_list_by_prefix_with_pages(server_url: str, namespace: str) -> None:
    with unidb.Client(server_url) as client:
        for i in range(25):
            client.put_state(namespace, f"memory/{i:03d}", {"i": i})
        client.put_state(namespace, "profile", {"name": "x"})
        seen: list[str] = []
        after = None
        while True:
            page = client.list_state(namespace, prefix="memory/", after=after, limit=10)
            seen += [entry.key for entry in page.entries]
            if page.next_after is None:
                break
            after = page.next_after
        assert seen == [f"memory/{i:03d}" for i in range(25)]
        everything = client.list_state(namespace, limit=1000)
        assert len(everything.entries) == 26 and everything.next_after is None
        assert client.list_state(namespace, prefix="nothing").entries == []


def test_async_client_state(server_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with unidb.AsyncClient(server_url) as client:
            entry = await client.put_state(namespace, "k", {"v": 1}, if_version=0)
            assert (await client.get_state(namespace, "k")).value == {"v": 1}
            with pytest.raises(unidb.Conflict):
                await client.put_state(namespace, "k", {"v": 2}, if_version=0)
            await client.put_state(namespace, "k", {"v": 2}, if_version=entry.version)
            assert [e.key for e in (await client.list_state(namespace)).entries] == ["k"]
            assert await client.delete_state(namespace, "k")
            assert not await client.delete_state(namespace, "k")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/state/ns/k", {"value": 1, "if_version": -1}, 400, "if_version"),
        ("/v1/state/ns/k", {"value": 1, "extra": True}, 400, "extra"),
        ("/v1/state/ns/k", {}, 400, "value"),
        ("/v1/state/ns/k", {"value": "a\u0000b"}, 400, "value"),
        ("/v1/state/ns/k", {"value": "x" * (2 * 1024 * 1024)}, 413, None),
    ],
)
def test_bad_state_writes_change_nothing(
    api: TestClient, engine: Engine, path: str, body: object, status: int, field: str | None
) -> None:
    before = snapshot(engine)
    with engine.transaction() as conn:
        rows_before = conn.execute("SELECT count(*) FROM unidb.state").fetchone()
    response = api.put(path, json=body)
    assert response.status_code == status, response.text
    if field is not None:
        assert response.json()["error"]["field"] == field
    assert snapshot(engine) == before
    with engine.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM unidb.state").fetchone() == rows_before
