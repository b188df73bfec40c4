"""Outbound calls (prefix warm-up, OpenAI-compatible embedders) reach only servers the
operator lists: a request names one, or repeats its URL exactly; nothing in the request
bends the URL called, no redirect is followed, and no upstream's body comes back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import unidb
from unidb.service.api.main import create_app
from unidb.service.config import KvEngine
from unidb.service.engine import Engine

from .conftest import free_port
from .loopback import DIM, SECRET, Upstream, listed_engine, redirect_to, secret_answer, serve

REFUSED = "not a server the operator lists (UNIDB_OUTBOUND_URLS, UNIDB_KV_ENGINES); name one of: "

# values a request might use to reach another server or path through a listed one;
# {listed}/{secret} are base URLs, {listed_hp}/{secret_hp} their host:port
BENT_URLS = [
    "{secret}/admin/keys?x=",
    "{secret}",
    "{secret}/v1",
    "{listed}?",
    "{listed}/v1?",
    "{listed}/v1?x=/../../admin/keys",
    "{listed}#",
    "{listed}/v1#frag",
    "{listed}?@{secret_hp}",
    "http://{listed_hp}@{secret_hp}/v1",
    "http://user:pw@{listed_hp}/v1",
    "{listed}/admin/keys",
    "{listed}/v1/../admin",
    "{listed}/v1/v1",
]


def _bend(template: str, listed: Upstream, secret: Upstream) -> str:
    return template.format(
        listed=listed.url,
        secret=secret.url,
        listed_hp=listed.url.removeprefix("http://"),
        secret_hp=secret.url.removeprefix("http://"),
    )


@pytest.fixture(scope="module")
def vllm() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def internal() -> Iterator[Upstream]:
    """A service on loopback that no request may reach through unidb."""
    with Upstream(secret_answer) as server:
        yield server


@pytest.fixture
def built(engine: Engine, collection: str) -> dict[str, Any]:
    """A registered context prefix, built on the session engine."""
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(
        collection, [{"id": "w1", "text": "warm the cache before the first request " * 5}]
    )
    return client.context(collection, "warm", salt=uuid.uuid4().hex).model_dump()


def _api(engine: Engine) -> TestClient:
    """The REST API of ``engine``, called as a local client is."""
    return TestClient(
        create_app(engine=engine), base_url="http://127.0.0.1", raise_server_exceptions=False
    )


def test_warm_up_calls_a_listed_engine_by_name_or_by_its_url(
    engine: Engine, built: dict[str, Any], vllm: Upstream
) -> None:
    events = KvEngine(name="vllm-a", events=f"tcp://127.0.0.1:{free_port()}", url=vllm.url)
    with (
        listed_engine(
            engine, kv_engines=[events], outbound_urls={"vllm-b": vllm.url + "/v1"}
        ) as own,
        _api(own) as api,
    ):
        key = built["prefix_key"]
        expected = {
            "prefix_key": key,
            "model": "tiny-model",
            "prompt_tokens": built["prefix_tokens"],
            "cached_tokens": 16,
        }
        requests: list[tuple[dict[str, Any], dict[str, Any]]] = [
            ({"engine": "vllm-a"}, {"engine": "vllm-a", "engine_url": None}),
            ({"engine": "vllm-b"}, {"engine": "vllm-b", "engine_url": None}),
            ({"engine_url": vllm.url}, {"engine": "vllm-b", "engine_url": vllm.url}),
            (
                {"engine_url": vllm.url + "/v1/"},
                {"engine": "vllm-b", "engine_url": vllm.url + "/v1/"},
            ),
        ]
        for request, names in requests:
            del vllm.requests[:]
            warmed = api.post(f"/v1/prefixes/{key}/warm", json=request)
            assert warmed.status_code == 200, warmed.text
            assert warmed.json() == {**expected, **names}
            assert [(method, path) for method, path, _ in vllm.requests] == [
                ("GET", "/v1/models"),
                ("POST", "/v1/completions"),
            ]
            sent = vllm.requests[-1][2]
            assert sent["prompt"] == built["token_ids"][: built["prefix_tokens"]]
            assert sent["max_tokens"] == 1 and sent["cache_salt"] == built["cache_salt"]

        missing = api.post("/v1/prefixes/abc123/warm", json={"engine": "vllm-a"})
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "prefix_key"


@pytest.mark.parametrize("template", BENT_URLS)
def test_warm_up_refuses_a_url_not_listed_before_any_call(
    engine: Engine, built: dict[str, Any], vllm: Upstream, internal: Upstream, template: str
) -> None:
    with (
        listed_engine(engine, outbound_urls={"vllm": vllm.url}) as own,
        _api(own) as api,
    ):
        del vllm.requests[:], internal.requests[:]
        url = _bend(template, vllm, internal)
        refused = api.post(f"/v1/prefixes/{built['prefix_key']}/warm", json={"engine_url": url})
        assert refused.status_code == 400, (url, refused.text)
        assert refused.json()["error"] == {
            "code": "invalid_input",
            "message": REFUSED + "vllm",
            "field": "engine_url",
        }
        assert vllm.requests == [] and internal.requests == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"engine": "nope"}, "engine"),
        ({"engine": "vllm?x=1"}, "engine"),
        ({"engine": "../vllm"}, "engine"),
        ({}, "engine"),
        ({"engine": "vllm", "engine_url": "http://127.0.0.1:1"}, "engine"),
        ({"engine_url": "file:///etc/passwd"}, "engine_url"),
    ],
)
def test_warm_up_refuses_an_engine_not_listed(
    engine: Engine, built: dict[str, Any], vllm: Upstream, body: dict[str, Any], field: str
) -> None:
    with (
        listed_engine(engine, outbound_urls={"vllm": vllm.url}) as own,
        _api(own) as api,
    ):
        del vllm.requests[:]
        refused = api.post(f"/v1/prefixes/{built['prefix_key']}/warm", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["field"] == field
        assert vllm.requests == []


def test_warm_up_neither_echoes_nor_follows_an_upstream(
    engine: Engine, built: dict[str, Any], internal: Upstream
) -> None:
    with Upstream(redirect_to(internal.url)) as hop:
        listed = {"leaky": internal.url, "hop": hop.url, "gone": f"http://127.0.0.1:{free_port()}"}
        with (
            listed_engine(engine, outbound_urls=listed) as own,
            _api(own) as api,
        ):
            path = f"/v1/prefixes/{built['prefix_key']}/warm"
            leaky = api.post(path, json={"engine": "leaky"})
            assert leaky.status_code == 502 and SECRET not in leaky.text
            assert leaky.json()["error"] == {
                "code": "bad_gateway",
                "message": "the engine 'leaky' answered HTTP 500",
                "field": "engine",
            }
            del internal.requests[:]
            hopped = api.post(path, json={"engine_url": hop.url, "model": "tiny-model"})
            assert hopped.status_code == 502
            assert hopped.json()["error"] == {
                "code": "bad_gateway",
                "message": "the engine 'hop' answered HTTP 307",
                "field": "engine_url",
            }
            assert [(m, p) for m, p, _ in hop.requests] == [("POST", "/v1/completions")]
            assert internal.requests == []  # the redirect was not followed
            gone = api.post(path, json={"engine": "gone"})
            assert gone.status_code == 502
            assert gone.json()["error"]["message"] == "the engine 'gone' could not be reached"


@pytest.mark.parametrize("template", BENT_URLS)
def test_embedder_url_must_be_listed(
    engine: Engine, collection: str, vllm: Upstream, internal: Upstream, template: str
) -> None:
    with (
        listed_engine(engine, outbound_urls={"tei": vllm.url}) as own,
        _api(own) as api,
    ):
        del vllm.requests[:], internal.requests[:]
        url = _bend(template, vllm, internal)
        spec = {"name": collection, "dim": DIM, "embedder": {"kind": "openai", "url": url}}
        refused = api.post("/v1/collections", json=spec)
        assert refused.status_code == 400, (url, refused.text)
        assert refused.json()["error"] == {
            "code": "invalid_input",
            "message": REFUSED + "tei",
            "field": "embedder.url",
        }
        assert api.get(f"/v1/collections/{collection}").status_code == 404
        assert vllm.requests == [] and internal.requests == []


def test_embedder_by_name_calls_the_listed_url(
    engine: Engine, collection: str, vllm: Upstream
) -> None:
    with listed_engine(engine, outbound_urls={"tei": vllm.url + "/v1"}) as own:
        client = unidb.Client(backend=own)
        client.create_collection(collection, dim=DIM, embedder={"kind": "openai", "url": "tei"})
        del vllm.requests[:]
        client.upsert(collection, [{"id": "a", "text": "felines purr"}])
        assert [(m, p) for m, p, _ in vllm.requests] == [("POST", "/v1/embeddings")]
        assert client.query(collection, text="felines", mode="vector", k=1).hits[0].id == "a"


def test_embedder_neither_echoes_nor_follows_an_upstream(
    engine: Engine, collection: str, internal: Upstream
) -> None:
    with Upstream(redirect_to(internal.url)) as hop:
        listed = {"leaky": internal.url, "hop": hop.url}
        with listed_engine(engine, outbound_urls=listed) as own, serve(own) as url:
            client = unidb.Client(url)
            for name, status in (("leaky", 500), ("hop", 307)):
                made = f"{collection}_{name}"
                client.create_collection(made, dim=DIM, embedder={"kind": "openai", "url": name})
                try:
                    del internal.requests[:]
                    with pytest.raises(unidb.BadGateway) as error:
                        client.upsert(made, [{"id": "x", "text": "anything"}])
                    assert error.value.field == "embedder" and SECRET not in str(error.value)
                    assert error.value.message == f"the embedder {name!r} answered HTTP {status}"
                    with pytest.raises(unidb.BadGateway):
                        client.query(made, text="anything", mode="vector")
                    assert client.get_collection(made).documents == 0
                    if name == "hop":
                        assert internal.requests == []  # the redirect was not followed
                finally:
                    client.delete_collection(made)


def test_a_collection_whose_embedder_left_the_list(
    engine: Engine, collection: str, vllm: Upstream
) -> None:
    with listed_engine(engine, outbound_urls={"tei": vllm.url}) as before:
        unidb.Client(backend=before).create_collection(
            collection, dim=DIM, embedder={"kind": "openai", "url": "tei"}
        )
    with listed_engine(engine, outbound_urls={}) as after:
        client = unidb.Client(backend=after)
        del vllm.requests[:]
        with pytest.raises(unidb.InvalidInput) as error:
            client.query(collection, text="anything", mode="vector")
        assert error.value.field == "embedder.url"
        with pytest.raises(unidb.InvalidInput):
            client.upsert(collection, [{"id": "x", "text": "anything"}])
        # what needs no embedder still works
        client.upsert(collection, [{"id": "y", "text": "anything", "embedding": [0.5] * DIM}])
        assert [h.id for h in client.query(collection, text="anything", mode="bm25").hits] == ["y"]
        assert vllm.requests == []
