"""Collections that embed for themselves: MiniLM in-process, and an OpenAI-compatible endpoint
(one the operator lists), bounded in time and in calls in flight."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

import unidb
from unidb.indexing.embedders import EmbedderError, EmbeddingEndpoint, MiniLM, OpenAICompatible
from unidb.service.engine import Engine

from .loopback import DIM, Tarpit, Upstream, listed_engine, serve
from .loopback import vector as _vector


@pytest.fixture(scope="module")
def embedder_server() -> Iterator[Upstream]:
    with Upstream() as server:
        yield server


@pytest.fixture(scope="module")
def embeddings_url(embedder_server: Upstream) -> str:
    return embedder_server.url + "/v1"


@pytest.fixture
def listed(engine: Engine, embeddings_url: str) -> Iterator[Engine]:
    """The session's database, with the loopback embedder on the operator's list."""
    servers = {"test-embedder": embeddings_url, "nope": embeddings_url + "/nope"}
    with listed_engine(engine, outbound_urls=servers) as own:
        yield own


def test_openai_compatible_endpoint_embeds_documents_and_queries(
    listed: Engine, collection: str, embeddings_url: str, embedder_server: Upstream
) -> None:
    client = unidb.Client(backend=listed)
    spec = {"kind": "openai", "url": embeddings_url, "model": "test-embedder"}
    created = client.create_collection(collection, dim=DIM, embedder=spec)
    assert created.embedder is not None and created.embedder.kind == "openai"
    client.upsert(
        collection,
        [
            {"id": "cats", "text": "felines purr softly"},
            {"id": "dogs", "text": "canines bark loudly"},
            {"id": "given", "text": "felines again", "embedding": _vector("canines")},
        ],
    )
    stored = client.get(collection, "cats")
    assert stored.embedding == pytest.approx(_vector("felines purr"), rel=1e-5)
    # a supplied embedding is kept as it is
    assert client.get(collection, "given").embedding == pytest.approx(_vector("canines"), rel=1e-5)
    assert embedder_server.requests[-1][2]["model"] == "test-embedder"
    hits = client.query(collection, text="felines everywhere", mode="vector", k=1).hits
    assert hits[0].id == "cats"
    hybrid = client.query(collection, text="canines", k=3).hits
    assert hybrid[0].scores.vector is not None and hybrid[0].scores.bm25 is not None


def test_embedder_failure_is_502_and_writes_nothing(listed: Engine, collection: str) -> None:
    client = unidb.Client(backend=listed)
    client.create_collection(collection, dim=DIM, embedder={"kind": "openai", "url": "nope"})
    with pytest.raises(unidb.BadGateway) as error:
        client.upsert(collection, [{"id": "x", "text": "anything"}])
    assert error.value.field == "embedder"
    assert error.value.message == "the embedder 'nope' answered HTTP 404"
    assert client.get_collection(collection).documents == 0


def test_embedder_spec_is_checked(listed: Engine, collection: str) -> None:
    client = unidb.Client(backend=listed)
    with pytest.raises(unidb.InvalidInput) as error:
        client.create_collection(collection, dim=16, embedder={"kind": "minilm"})
    assert error.value.field == "dim"
    with pytest.raises(unidb.InvalidInput) as error:
        client.create_collection(collection, dim=16, embedder={"kind": "openai"})
    assert error.value.field == "embedder.url"


def test_openai_client_checks_the_answer(embeddings_url: str) -> None:
    endpoint = EmbeddingEndpoint("test", embeddings_url + "/embeddings")
    try:
        with pytest.raises(EmbedderError, match="shape"):
            OpenAICompatible(endpoint, dim=DIM + 1).embed_documents(["a b"])
    finally:
        endpoint.close()


QUERIES = 40
SLOTS = 4


def test_a_stalled_embedder_does_not_starve_the_server(engine: Engine, collection: str) -> None:
    """40 queries at an embedder that never answers: at most SLOTS wait on it (504 after the
    timeout), the rest are refused at once (503), and the service keeps answering."""
    limits = {"embedder_timeout_s": 2.0, "embedder_concurrency": SLOTS, "embedder_wait_s": 0.2}
    with (
        Tarpit() as tarpit,
        listed_engine(engine, outbound_urls={"tarpit": tarpit.url}, **limits) as own,
        serve(own) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        spec = {"kind": "openai", "url": "tarpit"}
        made = http.post("/v1/collections", json={"name": collection, "dim": DIM, "embedder": spec})
        assert made.status_code == 201, made.text
        start = threading.Barrier(QUERIES)
        answers: list[httpx.Response] = []

        def query() -> None:
            start.wait()
            body = {"text": "anything at all", "mode": "vector"}
            answers.append(http.post(f"/v1/collections/{collection}/query", json=body))

        threads = [threading.Thread(target=query) for _ in range(QUERIES)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while tarpit.open < SLOTS:
            assert time.monotonic() < deadline, "the queries never reached the embedder"
            time.sleep(0.01)
        # the embedder holds SLOTS calls now: the rest of the service still answers
        began = time.monotonic()
        health = http.get("/healthz")
        health_s = time.monotonic() - began
        listed_collections = http.get("/v1/collections")
        both_s = time.monotonic() - began
        for thread in threads:
            thread.join()
        with pytest.raises(unidb.GatewayTimeout) as error:
            unidb.Client(url).query(collection, text="once more", mode="vector")
    assert health.status_code == 200 and health_s < 2.0
    assert listed_collections.status_code == 200 and both_s < 2.0
    assert tarpit.most_open == SLOTS
    timed_out = tarpit.accepted - 1  # the SDK's query was the last one to reach it
    assert Counter(a.status_code for a in answers) == {504: timed_out, 503: QUERIES - timed_out}
    for answer in answers:
        error_body = answer.json()["error"]
        assert error_body["field"] == "embedder" and "'tarpit'" in error_body["message"]
        assert error_body["code"] == (
            "gateway_timeout" if answer.status_code == 504 else "unavailable"
        )
    assert error.value.field == "embedder"
    assert error.value.message == (
        "the embedder 'tarpit' did not answer within 2 s (UNIDB_EMBEDDER_TIMEOUT_S)"
    )


@pytest.mark.slow
def test_minilm_collection_finds_by_meaning(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=MiniLM.dim, embedder={"kind": "minilm"})
    client.upsert(
        collection,
        [
            {"id": "weather", "text": "Heavy rain and strong winds are expected tomorrow."},
            {"id": "finance", "text": "The central bank raised interest rates by a quarter point."},
            {"id": "sport", "text": "The home team won the championship final in overtime."},
        ],
    )
    hits = client.query(collection, text="Will it storm later this week?", mode="vector", k=3).hits
    assert hits[0].id == "weather"
    hits = client.query(
        collection, text="monetary policy and borrowing costs", mode="vector", k=1
    ).hits
    assert hits[0].id == "finance"
    vector = MiniLM().embed_query("basketball playoffs")
    assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
