"""Collections that embed for themselves: MiniLM in-process, and an OpenAI-compatible endpoint."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

import unidb
from unidb.indexing.embedders import MiniLM, OpenAICompatible
from unidb.service.engine import Engine

DIM = 8


def _vector(text: str) -> list[float]:
    """A deterministic embedding: texts sharing their first word point the same way."""
    seed = int.from_bytes(hashlib.sha256(text.split()[0].lower().encode()).digest()[:4], "big")
    return np.random.default_rng(seed).normal(size=DIM).round(6).tolist()


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).requests.append(body)
        if self.path != "/v1/embeddings":
            self.send_response(404)
            self.end_headers()
            return
        inputs = body["input"]
        answer = {
            "object": "list",
            "model": body.get("model", "test"),
            # out of order on purpose: clients must go by "index"
            "data": [
                {"object": "embedding", "index": i, "embedding": _vector(t)}
                for i, t in reversed(list(enumerate(inputs)))
            ],
        }
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def embeddings_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_openai_compatible_endpoint_embeds_documents_and_queries(
    engine: Engine, collection: str, embeddings_url: str
) -> None:
    client = unidb.Client(backend=engine)
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
    assert _EmbeddingsHandler.requests[-1]["model"] == "test-embedder"
    hits = client.query(collection, text="felines everywhere", mode="vector", k=1).hits
    assert hits[0].id == "cats"
    hybrid = client.query(collection, text="canines", k=3).hits
    assert hybrid[0].scores.vector is not None and hybrid[0].scores.bm25 is not None


def test_embedder_failure_is_503_and_writes_nothing(
    engine: Engine, collection: str, embeddings_url: str
) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(
        collection, dim=DIM, embedder={"kind": "openai", "url": embeddings_url + "/nope"}
    )
    with pytest.raises(unidb.Unavailable) as error:
        client.upsert(collection, [{"id": "x", "text": "anything"}])
    assert error.value.field == "embedder"
    assert client.get_collection(collection).documents == 0


def test_embedder_spec_is_checked(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    with pytest.raises(unidb.InvalidInput) as error:
        client.create_collection(collection, dim=16, embedder={"kind": "minilm"})
    assert error.value.field == "dim"
    with pytest.raises(unidb.InvalidInput) as error:
        client.create_collection(collection, dim=16, embedder={"kind": "openai"})
    assert error.value.field == "embedder.url"


def test_openai_client_checks_the_answer(embeddings_url: str) -> None:
    embedder = OpenAICompatible(embeddings_url, dim=DIM + 1)
    from unidb.indexing.embedders import EmbedderError

    with pytest.raises(EmbedderError, match="shape"):
        embedder.embed_documents(["a b"])


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
