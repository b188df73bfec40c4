"""Prefix reuse: prefill tokens of a replayed RAG workload under a block-level KV cache.

    python bench/prefix_reuse.py [--sessions 64] [--turns 4] [--active 16] [--k 5 10]

The workload: SciFact test claims (../shared/data/scifact), one per session. Each session
asks its claim, then follow-ups that re-retrieve with reworded queries (see `rewordings`);
`--active` sessions run interleaved, one turn each in round robin, so sessions evict one
another's blocks. Retrieval is BM25 over the 5,183 abstracts; prompts come from
`/v1/context` of a real `unidb serve` with the MiniLM tokenizer, block size 16 and a
prompt budget of `--max-tokens` (8,192; a session that outgrows it starts a new prefix,
counted as `session_resets`).

Every returned prompt is fed, in order, to an LRU cache of KV blocks keyed by the returned
hashes (a request's blocks freed tail first, as vLLM frees them), holding a quarter of the distinct blocks the `relevance` workload touches. A
request's prefill is its tokens minus those its cached blocks cover:
- prefix reuse (`relevance`, `reuse`, `session`): the longest run of leading blocks
  cached, as vLLM's automatic prefix caching reuses;
- chunk keys (`chunk_keys` on `relevance` prompts, `session_chunk_keys` on session
  prompts): the head's leading blocks, then each segment's own blocks
  (`segments[i].block_hashes`) up to its first miss, wherever the segment sits, as an
  engine with position-independent chunk reuse (LMCache blending) would.

Prints one JSON line per (k, method), each with the `relevance` figure of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import unidb
from unidb.service.cli.evaluation import read_qrels, read_queries

sys.path.insert(0, str(Path(__file__).parent))
from ingest import free_port, wait_healthy  # noqa: E402

BLOCK = 16


def rewordings(claim: str) -> list[str]:
    """The claim, then follow-ups a user might ask about it."""
    words = claim.rstrip(".").split()
    lowered = claim[0].lower() + claim[1:] if claim else claim
    return [
        claim,
        f"What evidence supports or refutes that {lowered}",
        " ".join(w for i, w in enumerate(words) if i % 3 != 2) + "?",
        f"Which studies discuss {' '.join(words[: max(3, len(words) // 2)])}?",
        f"Explain the mechanism behind: {lowered}",
        f"Are there contradicting results on {' '.join(words[len(words) // 2 :])}?",
    ]


def workload(claims: list[str], turns: int, active: int) -> Iterator[tuple[int, str]]:
    """(session, query) in replay order: waves of ``active`` sessions, turns interleaved."""
    for wave in range(0, len(claims), active):
        sessions = range(wave, min(wave + active, len(claims)))
        for turn in range(turns):
            for session in sessions:
                yield session, rewordings(claims[session])[turn]


class LruBlocks:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def has(self, key: int) -> bool:
        return key in self.blocks

    def touch(self, keys: list[int]) -> None:
        """A finished request's blocks, freed as vLLM frees them: tail first, so that under
        pressure a prompt's tail is evicted before the prefix others share."""
        for key in reversed(keys):
            self.blocks[key] = None
            self.blocks.move_to_end(key)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


def leading_hits(cache: LruBlocks, keys: list[int]) -> int:
    hits = 0
    for key in keys:
        if not cache.has(key):
            break
        hits += 1
    return hits


def prefix_prefill(responses: list[dict[str, Any]], capacity: int) -> int:
    cache = LruBlocks(capacity)
    prefill = 0
    for r in responses:
        prefill += len(r["token_ids"]) - leading_hits(cache, r["block_keys"]) * BLOCK
        cache.touch(r["block_keys"])
    return prefill


def _key(hex_hash: str) -> int:
    return int(hex_hash, 16) & ((1 << 64) - 1)


def chunk_prefill(responses: list[dict[str, Any]], capacity: int) -> int:
    cache = LruBlocks(capacity)
    prefill = 0
    for r in responses:
        head_end = r["segments"][0]["start_token"] if r["segments"] else r["prefix_tokens"]
        head = r["block_keys"][: head_end // BLOCK]
        saved = leading_hits(cache, head) * BLOCK
        touched = list(head)
        for segment in r["segments"]:
            own = [_key(h) for h in segment["block_hashes"]]
            saved += leading_hits(cache, own) * BLOCK
            touched += own
        prefill += len(r["token_ids"]) - saved
        cache.touch(touched)
    return prefill


def distinct_blocks(responses: list[dict[str, Any]]) -> int:
    return len({key for r in responses for key in r["block_keys"]})


def run_k(client: unidb.Client, claims: list[str], args: argparse.Namespace, k: int) -> None:
    replay = list(workload(claims, args.turns, args.active))

    def responses(**options: Any) -> list[dict[str, Any]]:
        salt = uuid.uuid4().hex  # a fresh salt: each method starts with an empty registry
        out = []
        for session, query in replay:
            extra = {"session": f"{salt}-{session}"} if options.get("session") else {}
            answer = client.context(
                "scifact",
                query,
                k=k,
                salt=salt,
                max_tokens=args.max_tokens,
                order=options.get("order", "reuse"),
                mode="bm25",
                **extra,
            )
            out.append(answer.model_dump())
        return out

    relevance = responses(order="relevance")
    reuse = responses(order="reuse")
    session = responses(session=True)
    resets = sum(1 for r in session if r["session"]["reset"])
    capacity = max(1, distinct_blocks(relevance) // 4)
    base = prefix_prefill(relevance, capacity)
    figures = {
        "no_cache": sum(len(r["token_ids"]) for r in relevance),
        "relevance": base,
        "reuse": prefix_prefill(reuse, capacity),
        "session": prefix_prefill(session, capacity),
        "chunk_keys": chunk_prefill(relevance, capacity),
        "session_chunk_keys": chunk_prefill(session, capacity),
    }
    prompt_tokens = {
        "no_cache": figures["no_cache"],
        "relevance": figures["no_cache"],
        "reuse": sum(len(r["token_ids"]) for r in reuse),
        "session": sum(len(r["token_ids"]) for r in session),
        "chunk_keys": figures["no_cache"],
        "session_chunk_keys": sum(len(r["token_ids"]) for r in session),
    }
    for method, prefill in figures.items():
        print(
            json.dumps(
                {
                    "bench": "prefix_reuse",
                    "k": k,
                    "method": method,
                    "requests": len(replay),
                    "prompt_tokens": prompt_tokens[method],
                    "prefill_tokens": prefill,
                    "relevance_prefill_tokens": base,
                    "saving_vs_relevance": round(base / max(prefill, 1), 3),
                    "cache_blocks": capacity,
                    "max_tokens": args.max_tokens,
                    "session_resets": resets if method.startswith("session") else None,
                }
            ),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--beir", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--turns", type=int, default=4, choices=range(1, 7))
    parser.add_argument("--active", type=int, default=16, help="sessions interleaved")
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10])
    parser.add_argument(
        "--max-tokens", type=int, default=8192, help="prompt budget (the engine's context)"
    )
    args = parser.parse_args()

    queries = read_queries(args.beir / "queries.jsonl")
    judged = read_qrels(args.beir / "qrels-test.tsv")
    claims = [queries[qid] for qid in sorted(judged, key=int)][: args.sessions]

    with tempfile.TemporaryDirectory(prefix="unidb-bench-") as tmp:
        data_dir = Path(tmp)
        with unidb.Client.embedded(data_dir):
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, "-m", "unidb.service.cli", "--log-level", "warning", "serve",
                 "--port", str(port), "--data-dir", str(data_dir)],
                env=dict(os.environ),
            )  # fmt: skip
            try:
                url = f"http://127.0.0.1:{port}"
                wait_healthy(url)
                with unidb.Client(url, timeout=300) as client:
                    client.create_collection("scifact", dim=384)
                    with (args.beir / "corpus.jsonl").open() as stream:
                        corpus = [json.loads(line) for line in stream if line.strip()]
                    client.ingest(
                        "scifact",
                        (
                            {"id": d["_id"], "text": d["text"], "metadata": {"title": d["title"]}}
                            for d in corpus
                        ),
                    )
                    for k in args.k:
                        run_k(client, claims, args, k)
            finally:
                server.terminate()
                server.wait(60)


if __name__ == "__main__":
    main()
