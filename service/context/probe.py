"""Finding an engine's block-hash settings from the engine itself, not from its docs.

A block key that does not match the engine's own is silent: every ``cached_tokens`` is 0 and
nothing says why. So unidb sends each engine it follows (one with a ``url``) a short probe
prompt of random tokens, once without and once with a ``cache_salt``, reads the
``BlockStored`` event the engine publishes for block 0, and tries every combination of the
settings it knows (hash algorithm, seed, salt style) at the block size the event gives. It
reports the one that reproduces the engine's hash, or that none does, beside the configured
one; and whether unidb's tokenizer splits a probe sentence as the engine's ``/tokenize``
does.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from tokenizers import Tokenizer

from unidb.models import ContextTemplate, EngineCheck, HashSettings
from unidb.service.context.hashing import BlockHasher, event_key
from unidb.service.context.kv_events import KvEvent, Subscriber
from unidb.service.context.prompt import Chunk, encode, frame, render
from unidb.service.outbound import Upstream

PROBE_TOKENS = 512  # whole blocks for any block size up to 512 (fewer if the engine's limit is)
PROBE_TEXT = "Retrieval-augmented generation reuses the KV cache of a shared prompt prefix."
PROBE_QUESTION = "Which tokens does the engine see?"
_EVENT_WAIT_S = 10.0
# each call to the engine; a probe of one engine makes four
_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# token ids drawn from 1000 .. 4999: ordinary word pieces in any vocabulary of 5,000 or more
_PROBE_IDS = (1000, 4000)
_ALGOS = ("sha256", "sha256_cbor")
_STYLES = ("tagged", "bare")


@dataclass(frozen=True)
class _Stored:
    key: int
    block_size: int


def _send(http: httpx.Client, upstream: Upstream, model: str, tokens: list[int],
          salt: str | None) -> None:  # fmt: skip
    body: dict[str, Any] = {"model": model, "prompt": tokens, "max_tokens": 1}
    if salt is not None:
        body["cache_salt"] = salt
    answer = http.post(upstream.url("/v1/completions"), json=body)
    if answer.status_code != 200:
        raise _ProbeFailed(f"the engine answered the probe with HTTP {answer.status_code}")


class _ProbeFailed(Exception):
    pass


def _stored(
    subscriber: Subscriber, tokens: Sequence[int], *, other_than: int | None = None
) -> _Stored:
    """Block 0 of ``tokens`` as the engine stored it (a key other than ``other_than``)."""
    deadline = time.monotonic() + _EVENT_WAIT_S
    while time.monotonic() < deadline:
        event: KvEvent | None = subscriber.stored_first_block(tokens, other_than=other_than)
        if event is not None:
            return _Stored(event.block_keys[0], len(event.token_ids))
        time.sleep(0.05)
    raise _ProbeFailed(
        f"no BlockStored event for the probe within {_EVENT_WAIT_S:g} s (are KV events on, "
        "prefix caching on, and the block size at most the probe's length?)"
    )


def _seeds(configured: str | None) -> list[str | None]:
    seeds: list[str | None] = [configured, None, "0"]
    return list(dict.fromkeys(seeds))


def _reproduces(
    hasher: BlockHasher, tokens: Sequence[int], stored: _Stored, salt: str | None
) -> bool:
    block = hasher.chain(tokens[: stored.block_size], block_size=stored.block_size, salt=salt)
    return bool(block) and event_key(block[0]) == stored.key


def check_engine(
    upstream: Upstream,
    subscriber: Subscriber,
    configured: BlockHasher,
    tokenizer: Tokenizer,
) -> EngineCheck:
    """Probe one engine; never raises for what the engine does (the answer says)."""
    settings = HashSettings(algo=configured.algo, seed=configured.seed,
                            salt_style=configured.salt_style)  # fmt: skip
    check = EngineCheck(name=subscriber.name, configured=settings)
    try:
        with httpx.Client(timeout=_TIMEOUT, follow_redirects=False) as http:
            listed = http.get(upstream.url("/v1/models"))
            if listed.status_code != 200:
                raise _ProbeFailed(f"the engine answered /v1/models with HTTP {listed.status_code}")
            models = listed.json()["data"]
            if not models:
                raise _ProbeFailed("the engine lists no model")
            model = str(models[0]["id"])
            check.reachable, check.model = True, model
            limit = int(models[0].get("max_model_len") or PROBE_TOKENS + 1)
            length = min(PROBE_TOKENS, limit - 1)
            # random tokens from the ordinary range of any vocabulary: blocks nobody sent
            low, span = _PROBE_IDS
            tokens = [low + secrets.randbelow(span) for _ in range(length)]
            _send(http, upstream, model, tokens, None)
            plain = _stored(subscriber, tokens)
            check.block_size = plain.block_size
            found = next(
                (
                    (algo, seed)
                    for algo in _ALGOS
                    for seed in _seeds(configured.seed)
                    if _reproduces(BlockHasher(algo=algo, seed=seed), tokens, plain, None)  # type: ignore[arg-type]
                ),
                None,
            )
            if found is not None:
                algo, seed = found
                salt = "unidb-probe-" + secrets.token_hex(8)
                _send(http, upstream, model, tokens, salt)
                salted = _stored(subscriber, tokens, other_than=plain.key)
                style = next(
                    (
                        s
                        for s in _STYLES
                        if _reproduces(
                            BlockHasher(algo=algo, seed=seed, salt_style=s),  # type: ignore[arg-type]
                            tokens,
                            salted,
                            salt,
                        )
                    ),
                    None,
                )
                if style is not None:
                    check.found = HashSettings(algo=algo, seed=seed, salt_style=style)  # type: ignore[arg-type]
            check.tokenizer_matches = _same_tokens(http, upstream, model, tokenizer)
    except _ProbeFailed as failure:
        check.detail = str(failure)
    except httpx.HTTPError:
        check.detail = "the engine could not be reached"
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        check.detail = "the engine sent an answer that is not OpenAI's"
    check.matches = check.found == settings
    if check.detail is None:
        check.detail = (
            "unidb's block keys are the engine's"
            if check.matches
            else "the engine hashes blocks with other settings: set UNIDB_KV_HASH_ALGO, "
            "UNIDB_KV_HASH_SEED and UNIDB_KV_SALT_STYLE as found"
            if check.found is not None
            else "none of the hash settings unidb knows reproduces the engine's block hash"
        )
    return check


def _same_tokens(
    http: httpx.Client, upstream: Upstream, model: str, tokenizer: Tokenizer
) -> bool | None:
    """Whether unidb's piecewise tokenization of a probe prompt (head, one chunk, the
    question, each tokenized on its own as `/v1/context` does) is the engine's ``/tokenize``
    of the whole text (None: the engine has no ``/tokenize``)."""
    template = ContextTemplate()
    chunk = Chunk(key=0, id="probe", version=1, text=PROBE_TEXT, title="")
    head_text, head, tail_text, tail = frame(tokenizer, template, PROBE_QUESTION)
    [body] = encode(tokenizer, [render(template, chunk)])
    text = head_text + render(template, chunk) + tail_text
    answer = http.post(upstream.url("/tokenize"), json={
        "model": model, "prompt": text, "add_special_tokens": False})  # fmt: skip
    if answer.status_code == 404:
        return None
    if answer.status_code != 200:
        raise _ProbeFailed(f"the engine answered /tokenize with HTTP {answer.status_code}")
    return list(answer.json()["tokens"]) == head + body + tail
