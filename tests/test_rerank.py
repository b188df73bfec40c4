"""The rerank stage against a real vLLM serving /rerank on the CPU (a dummy-weight
cross-encoder: its scores are noise, its protocol is real), and against servers that fail."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

import unidb
from unidb.service.context.vllm_cpu import CpuEngine
from unidb.service.engine import Engine

from .loopback import Tarpit, listed_engine, serve

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TEXTS = [
    "Ribosomes build proteins from amino acids.",
    "Mitochondria turn nutrients into chemical energy.",
    "Photosynthesis captures light in chloroplasts.",
    "Protein folding is helped by chaperones.",
    "The nucleus holds most of the cell's DNA.",
    "Lysosomes break down worn-out proteins and organelles.",
    "Cell membranes are lipid bilayers with proteins.",
    "Enzymes are proteins that speed up reactions.",
]


@pytest.fixture
def reranking(engine: Engine, cpu_reranker: CpuEngine, collection: str) -> Iterator[str]:
    """A REST server whose operator lists the reranker (and a port nothing listens on),
    with a collection of a few sentences."""
    with Tarpit() as tarpit:
        servers = {
            "reranker": cpu_reranker.url,
            "closed": "http://127.0.0.1:9",
            "tarpit": tarpit.url,
        }
        limits = {"rerank_timeout_s": 1.0, "rerank_concurrency": 2, "rerank_wait_s": 0.2}
        with listed_engine(engine, outbound_urls=servers, **limits) as own, serve(own) as url:
            client = unidb.Client(url)
            client.create_collection(collection, dim=384, embedder={"kind": "minilm"})
            client.upsert(collection, [{"id": f"s{i}", "text": t} for i, t in enumerate(TEXTS)])
            yield url


def _query(url: str, collection: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/collections/{collection}/query", json=body, timeout=60)


def test_hits_come_in_the_rerankers_order_with_its_scores(
    reranking: str, cpu_reranker: CpuEngine, collection: str
) -> None:
    fused = _query(reranking, collection, text="which proteins", k=6, mode="hybrid").json()
    spec = {"url": "reranker", "model": "reranker", "top_n": 6}
    answer = _query(reranking, collection, text="which proteins", k=3, rerank=spec)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["reranked"] is True and body["rerank_error"] is None
    # what the engine itself says of the same six texts
    candidates = [hit["text"] for hit in fused["hits"]]
    direct = httpx.post(
        f"{cpu_reranker.url}/rerank",
        json={"model": "reranker", "query": "which proteins", "documents": candidates},
        timeout=60,
    ).json()["results"]
    by_text = {candidates[r["index"]]: r["relevance_score"] for r in direct}
    expected = sorted(candidates, key=lambda text: -by_text[text])[:3]
    assert [hit["text"] for hit in body["hits"]] == expected
    for hit in body["hits"]:
        assert hit["scores"]["rerank"] == pytest.approx(by_text[hit["text"]], rel=1e-5)
        assert hit["score"] == hit["scores"]["rerank"]
        assert hit["scores"]["fused"] is not None


def test_a_failing_reranker_is_a_502_or_the_fused_order_when_asked(
    reranking: str, collection: str
) -> None:
    plain = _query(reranking, collection, text="which proteins", k=4).json()
    spec = {"url": "closed", "top_n": 8}
    failed = _query(reranking, collection, text="which proteins", k=4, rerank=spec)
    assert failed.status_code == 502, failed.text
    error = failed.json()["error"]
    assert error["field"] == "rerank" and "'closed'" in error["message"]

    kept = _query(reranking, collection, text="which proteins", k=4, rerank=spec,
                  rerank_fallback=True)  # fmt: skip
    assert kept.status_code == 200, kept.text
    body = kept.json()
    assert body["reranked"] is False and "'closed'" in body["rerank_error"]
    assert [h["id"] for h in body["hits"]] == [h["id"] for h in plain["hits"]]
    assert all(h["scores"]["rerank"] is None for h in body["hits"])


def test_a_silent_reranker_is_a_504(reranking: str, collection: str) -> None:
    answer = _query(reranking, collection, text="which proteins", rerank={"url": "tarpit"})
    assert answer.status_code == 504, answer.text
    assert answer.json()["error"]["message"] == (
        "the reranker 'tarpit' did not answer within 1 s (UNIDB_RERANK_TIMEOUT_S)"
    )


def test_a_rerank_is_checked_before_any_search(reranking: str, collection: str) -> None:
    unlisted = _query(reranking, collection, text="x", rerank={"url": "http://169.254.169.254"})
    assert unlisted.status_code == 400
    assert unlisted.json()["error"]["field"] == "rerank.url"
    textless = _query(reranking, collection, vector=[0.1] * 384, mode="vector",
                      rerank={"url": "reranker"})  # fmt: skip
    assert textless.status_code == 400
    assert textless.json()["error"]["field"] == "rerank"
    too_many = _query(reranking, collection, text="x", rerank={"url": "reranker", "top_n": 999})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["field"].startswith("rerank")
