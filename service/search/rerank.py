"""The rerank stage: the fused top hits sent with the query to a cross-encoder's ``/rerank``
(Cohere's protocol, which vLLM and Jina speak, or text-embeddings-inference's), and put in
the order of its scores.

It runs after the query's read transaction, so a slow reranker holds no connection; each
server has its own bound on calls in flight and a timeout. A failure is a 502 (the server
failed or answered badly), 504 (it did not answer in time) or 503 (every slot stayed taken),
or with ``rerank_fallback`` the fused order, flagged ``reranked: false``.
"""

from __future__ import annotations

import math
from typing import Any

from unidb.errors import BadGateway, InvalidInput, UnidbError
from unidb.models import Hit, QueryRequest, QueryResponse, RerankSpec
from unidb.service.collection_embedders import upstream_errors
from unidb.service.outbound import Outbound

# what a cross-encoder reads of a hit: its best passage, or the start of its text (they
# read ~512 tokens; a whole long document would be refused or cut by the server anyway)
MAX_CHARS_PER_HIT = 2_000


class Reranker:
    def __init__(self, outbound: Outbound) -> None:
        self.outbound = outbound

    def check(self, request: QueryRequest) -> None:
        """Refuse a rerank that cannot run, before any retrieval."""
        spec = request.rerank
        if spec is None:
            return
        if not request.text:
            raise InvalidInput("rerank needs the query's text", field="rerank")
        self.outbound.rerank_endpoint(spec.url, field="rerank.url")

    def depth(self, request: QueryRequest) -> int:
        """How many fused hits the query retrieves for the reranker."""
        return max(request.k, request.rerank.top_n) if request.rerank else request.k

    def apply(self, request: QueryRequest, answer: QueryResponse) -> QueryResponse:
        """``answer`` (retrieved ``depth`` deep) reordered by the reranker and cut to k."""
        spec = request.rerank
        assert spec is not None and request.text
        candidates = answer.hits[: spec.top_n]
        rest = answer.hits[spec.top_n : request.k]  # past top_n, in fused order
        try:
            scores = self._scores(spec, request.text, candidates)
        except UnidbError as exc:
            if not request.rerank_fallback:
                raise
            answer.hits = answer.hits[: request.k]
            answer.reranked = False
            answer.rerank_error = exc.message
            return answer
        for hit, score in zip(candidates, scores, strict=True):
            hit.scores.rerank = score
            if score is not None:
                hit.score = score
        # scored first, best first; any the server left out after them, in fused order
        order = sorted(
            range(len(candidates)),
            key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i),
        )
        answer.hits = [*(candidates[i] for i in order), *rest][: request.k]
        answer.reranked = True
        return answer

    def _scores(self, spec: RerankSpec, query: str, hits: list[Hit]) -> list[float | None]:
        if not hits:
            return []
        endpoint = self.outbound.rerank_endpoint(spec.url, field="rerank.url")
        texts = [_text_of(hit) for hit in hits]
        body: dict[str, Any] = (
            {"query": query, "documents": texts, "top_n": len(texts)}
            if spec.protocol == "cohere"
            else {"query": query, "texts": texts, "truncate": True}
        )
        if spec.model:
            body["model"] = spec.model
        with upstream_errors("rerank", "UNIDB_RERANK"):
            answer = endpoint.post(body)
        return _parsed(endpoint.name, answer, spec.protocol, len(texts))


def _text_of(hit: Hit) -> str:
    text = hit.passages[0].text if hit.passages else hit.text
    return text[:MAX_CHARS_PER_HIT]


def _parsed(name: str, answer: Any, protocol: str, count: int) -> list[float | None]:
    """Each candidate's score from the server's answer (None for one it left out)."""
    unreadable = BadGateway(
        f"the reranker {name!r} sent an answer unidb cannot read as {protocol} rerank results",
        field="rerank",
    )
    results = answer.get("results") if protocol == "cohere" and isinstance(answer, dict) else answer
    if not isinstance(results, list):
        raise unreadable
    score_key = "relevance_score" if protocol == "cohere" else "score"
    scores: list[float | None] = [None] * count
    for result in results:
        if not isinstance(result, dict):
            raise unreadable
        index, score = result.get("index"), result.get(score_key)
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < count
            or scores[index] is not None
            or not isinstance(score, int | float)
            or isinstance(score, bool)
            or not math.isfinite(score)
        ):
            raise unreadable
        scores[index] = float(score)
    return scores
