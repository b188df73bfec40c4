"""The rerank stage's two protocols and its reading of answers, against loopback servers
that score by a rule a test can check (the real engine's scores are noise: test_rerank)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import unidb
from unidb.service.engine import Engine

from .loopback import Answer, Upstream, listed_engine, serve

TEXTS = [
    "Ribosomes build proteins from amino acids.",
    "Mitochondria turn nutrients into chemical energy.",
    "Protein folding is helped by chaperones; misfolded protein aggregates.",
    "The nucleus holds most of the cell's DNA.",
    "Enzymes are proteins that speed up reactions, protein by protein.",
]


def protein_count(text: str) -> float:
    return float(text.lower().count("protein"))


def _json(body: Any) -> Answer:
    return 200, {"content-type": "application/json"}, json.dumps(body).encode()


def cohere_answer(method: str, path: str, body: Any) -> Answer:
    scored = [(i, protein_count(t)) for i, t in enumerate(body["documents"])]
    scored.sort(key=lambda pair: -pair[1])  # Cohere and vLLM answer best first
    return _json({"results": [{"index": i, "relevance_score": s} for i, s in scored]})


def tei_answer(method: str, path: str, body: Any) -> Answer:
    return _json([{"index": i, "score": protein_count(t)} for i, t in enumerate(body["texts"])])


def garbled_answer(method: str, path: str, body: Any) -> Answer:
    return _json({"results": [{"index": 99, "relevance_score": 1.0}]})


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Upstream]]:
    with Upstream(cohere_answer) as cohere, Upstream(tei_answer) as tei:
        with Upstream(garbled_answer) as garbled:
            yield {"cohere": cohere, "tei": tei, "garbled": garbled}


@pytest.fixture
def rest(engine: Engine, upstreams: dict[str, Upstream], collection: str) -> Iterator[str]:
    servers = {name: upstream.url for name, upstream in upstreams.items()}
    with listed_engine(engine, outbound_urls=servers) as own, serve(own) as url:
        client = unidb.Client(url)
        client.create_collection(collection, dim=384, embedder={"kind": "minilm"})
        client.upsert(collection, [{"id": f"s{i}", "text": t} for i, t in enumerate(TEXTS)])
        yield url


def _query(url: str, collection: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/collections/{collection}/query", json=body, timeout=60)


@pytest.mark.parametrize("protocol", ["cohere", "tei"])
def test_hits_are_put_in_the_rerankers_order(
    rest: str, upstreams: dict[str, Upstream], collection: str, protocol: str
) -> None:
    spec = {"url": protocol, "protocol": protocol, "top_n": 5, "model": "ranker"}
    answer = _query(rest, collection, text="cell biology", k=3, rerank=spec)
    assert answer.status_code == 200, answer.text
    hits = answer.json()["hits"]
    assert [h["id"] for h in hits] == ["s4", "s2", "s0"]  # 3, 2 then 1 "protein"s
    assert [h["scores"]["rerank"] for h in hits] == [3.0, 2.0, 1.0]
    method, path, sent = upstreams[protocol].requests[-1]
    assert (method, path) == ("POST", "/rerank")
    texts = sent["documents"] if protocol == "cohere" else sent["texts"]
    assert sent["query"] == "cell biology" and sent["model"] == "ranker"
    # the fused top 5, in fused order
    fused = _query(rest, collection, text="cell biology", k=5).json()["hits"]
    assert texts == [h["text"] for h in fused]


def test_an_answer_that_cannot_be_read_is_a_502(rest: str, collection: str) -> None:
    answer = _query(rest, collection, text="cell", rerank={"url": "garbled"})
    assert answer.status_code == 502
    assert answer.json()["error"]["message"] == (
        "the reranker 'garbled' sent an answer unidb cannot read as cohere rerank results"
    )


def test_a_collection_default_rerank_applies_unless_a_query_names_its_own(
    rest: str, collection: str
) -> None:
    client = unidb.Client(rest)
    assert _query(rest, collection, text="cell biology", k=3).json()["reranked"] is None
    made = client.set_query_defaults(collection, rerank={"url": "cohere", "top_n": 5})
    assert made.query_defaults is not None and made.query_defaults.rerank is not None
    assert made.query_defaults.fusion is None  # the service's fusion still
    answer = _query(rest, collection, text="cell biology", k=3).json()
    assert answer["reranked"] is True
    assert [h["id"] for h in answer["hits"]] == ["s4", "s2", "s0"]
    # rerank: null turns the default off for one query, and so does the SDK's False
    plain = _query(rest, collection, text="cell biology", k=3, rerank=None).json()
    assert plain["reranked"] is None
    assert client.query(collection, text="cell biology", k=3, rerank=False).reranked is None
    # a query without text is not reranked: there is nothing to rerank by
    vector_only = _query(rest, collection, vector=[0.05] * 384, mode="vector", k=3)
    assert vector_only.status_code == 200 and vector_only.json()["reranked"] is None
    # an unlisted server is refused when the defaults are set, not at query time
    with pytest.raises(unidb.InvalidInput) as refused:
        client.set_query_defaults(collection, rerank={"url": "http://10.0.0.1"})
    assert refused.value.field == "rerank.url"
    client.set_query_defaults(collection)
    assert _query(rest, collection, text="cell biology", k=3).json()["reranked"] is None


def test_past_top_n_the_fused_order_follows(rest: str, collection: str) -> None:
    fused = [h["id"] for h in _query(rest, collection, text="cell biology", k=5).json()["hits"]]
    spec = {"url": "cohere", "top_n": 2}
    answer = _query(rest, collection, text="cell biology", k=5, rerank=spec).json()
    ids = [h["id"] for h in answer["hits"]]
    first_two = sorted(fused[:2], key=lambda i: -protein_count(TEXTS[int(i[1:])]))
    assert ids == first_two + fused[2:]
    assert [h["scores"]["rerank"] is not None for h in answer["hits"]] == [True] * 2 + [False] * 3
