"""Against a real vLLM engine on the CPU (one per run, `cpu_engine`): unidb's block keys are
the engine's own block hashes, its cached_tokens is what the engine reports, tenants' salts
never share a block, warm-up leaves the prefix cached, evictions and restarts reach unidb's
residency, and a subscriber started late learns what the engine holds from its replay
socket.

Every assertion compares what unidb said with what the engine did: the engine's usage
(``prompt_tokens_details.cached_tokens``) and its KV event stream, read here by a plain ZMQ
subscriber and msgpack, not by unidb's decoder. These tests run in file order and the last
one restarts the engine."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgpack
import pytest
import zmq
from fastapi.testclient import TestClient

from unidb.service.api.main import create_app
from unidb.service.config import KvEngine, Settings
from unidb.service.context.kv_events import Residency, Subscriber
from unidb.service.context.vllm_cpu import BLOCK_SIZE, CpuEngine
from unidb.service.engine import Engine

from .conftest import ENGINE_KV_BLOCKS, LocalClient

pytestmark = [pytest.mark.engine, pytest.mark.slow]


class EngineEvents:
    """The engine's KV event batches, in the order it published them."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.batches: list[tuple[int, list[dict[str, Any]]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sub = self.context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt_string(zmq.SUBSCRIBE, "")
        self._sub.connect(endpoint)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sub.poll(50):
                continue
            _, seq, payload = self._sub.recv_multipart()
            batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            with self._lock:
                self.batches.append((int.from_bytes(seq, "big"), list(batch[1])))

    def mark(self) -> int:
        with self._lock:
            return len(self.batches)

    def last_seq(self) -> int:
        with self._lock:
            return self.batches[-1][0] if self.batches else -1

    def _hashes(self, kind: str, since: int) -> list[int]:
        with self._lock:
            batches = self.batches[since:]
        return [h for _, events in batches for e in events if e["type"] == kind
                for h in e["block_hashes"]]  # fmt: skip

    def stored_since(self, mark: int) -> list[int]:
        return self._hashes("BlockStored", mark)

    def removed_since(self, mark: int) -> set[int]:
        return set(self._hashes("BlockRemoved", mark))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sub.close()
        self.context.term()


def _until(predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def events(cpu_engine: CpuEngine) -> Iterator[EngineEvents]:
    recorder = EngineEvents(cpu_engine.events)
    time.sleep(0.5)  # a SUB socket hears only what is published after it has joined
    try:
        yield recorder
    finally:
        recorder.close()


@pytest.fixture(scope="module")
def unidb_engine(
    settings: Settings, engine: Engine, cpu_engine: CpuEngine, tmp_path_factory: Any
) -> Iterator[Engine]:
    """unidb following the real engine's KV events (and allowed to call it for warm-up)."""
    followed = KvEngine(**cpu_engine.kv_engine_setting())
    own = Engine(
        settings.model_copy(
            update={"kv_engines": [followed], "data_dir": tmp_path_factory.mktemp("kv")}
        ),
        engine.pool,
        engine.dsn,
        background_pool=engine.background_pool,
    )
    own.context.start()
    try:
        yield own
    finally:
        own.context.close()


@pytest.fixture(scope="module")
def api(unidb_engine: Engine) -> Iterator[TestClient]:
    with LocalClient(create_app(engine=unidb_engine)) as client:
        yield client


def _load(api: TestClient, collection: str) -> str:
    """Documents no other test has sent, so every block of their prompts is new; returns
    their tag (``fact{tag}{i}x{j}`` is a word of document ``d{i}`` alone)."""
    tag = uuid.uuid4().hex[:8]
    words = ["alpha", "beta", "gamma", "delta"]
    docs = [
        {"id": f"d{i}", "text": f"{tag} note {i}: " + " ".join(
            f"{words[(i + j) % 4]} fact{tag}{i}x{j}" for j in range(24))}
        for i in range(6)
    ]  # fmt: skip
    assert api.post("/v1/collections", json={"name": collection, "dim": 2}).status_code == 201
    written = api.post(f"/v1/collections/{collection}/documents", json={"documents": docs})
    assert written.status_code == 200, written.text
    return tag


def _context(api: TestClient, collection: str, query: str, **fields: Any) -> dict[str, Any]:
    answer = api.post("/v1/context", json={"collection": collection, "query": query,
                                           "block_size": BLOCK_SIZE, "mode": "bm25", **fields})  # fmt: skip
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _sent(cpu_engine: CpuEngine, context: dict[str, Any], events: EngineEvents) -> int:
    """Send the prompt's tokens to the engine; the tokens it says it found cached. Returns
    once the engine has published the blocks it stored for it."""
    mark = events.mark()
    answer = cpu_engine.complete(context["token_ids"], cache_salt=context["cache_salt"])
    assert answer["usage"]["prompt_tokens"] == len(context["token_ids"])
    cached = cpu_engine.cached_tokens(answer)
    keys = context["block_keys"]
    if cached // BLOCK_SIZE < len(keys):  # it stored the rest: wait for the event
        _until(lambda: keys[-1] in events.stored_since(mark), "the engine's BlockStored")
    return cached


def _caught_up(unidb_engine: Engine, events: EngineEvents) -> None:
    """Wait until unidb has applied every batch the engine published so far."""
    subscriber = unidb_engine.context.subscribers[0]
    _until(lambda: subscriber.last_seq[0] >= events.last_seq(), "unidb to apply the events")


def _held_context(
    api: TestClient, collection: str, query: str, cpu_engine: CpuEngine, events: EngineEvents,
    unidb_engine: Engine,
) -> tuple[dict[str, Any], int]:  # fmt: skip
    """Fresh documents, one context for ``query`` sent to the engine, and unidb caught up
    with its events: the context and unidb's cached_tokens for it now."""
    _load(api, collection)
    context = _context(api, collection, query, k=3)
    _sent(cpu_engine, context, events)
    _caught_up(unidb_engine, events)
    return context, _context(api, collection, query, k=3)["cached_tokens"]


def test_block_keys_are_the_engines_block_hashes(
    api: TestClient, cpu_engine: CpuEngine, events: EngineEvents, collection: str
) -> None:
    _load(api, collection)
    relevance = _context(api, collection, "alpha", k=3, order="relevance")
    # the engine tokenizes the prompt's text into exactly unidb's token ids
    tokenized = httpx.post(f"{cpu_engine.url}/tokenize", json={
        "model": cpu_engine.name, "prompt": relevance["prompt"], "add_special_tokens": False}).json()  # fmt: skip
    assert tokenized["tokens"] == relevance["token_ids"]

    session = f"{collection}-s"
    contexts = [
        relevance,
        _context(api, collection, "alpha", k=3, order="relevance", salt="tenant-a"),
        _context(api, collection, "beta gamma", k=4, order="reuse"),
        _context(api, collection, "gamma", k=2, session=session),
        _context(api, collection, "delta", k=2, session=session),
    ]
    assert contexts[1]["token_ids"] == relevance["token_ids"]
    for at, context in enumerate(contexts):
        keys = context["block_keys"]
        assert len(keys) == len(context["token_ids"]) // BLOCK_SIZE >= 4
        mark = events.mark()
        cached = _sent(cpu_engine, context, events)
        assert cached % BLOCK_SIZE == 0
        fresh = keys[cached // BLOCK_SIZE :]
        _until(
            lambda mark=mark, fresh=fresh: len(events.stored_since(mark)) >= len(fresh),
            "the engine's BlockStored",
        )
        # the engine stored exactly the blocks it did not have, under unidb's keys, in order
        assert events.stored_since(mark)[: len(fresh)] == fresh, f"context {at}"
        if at == 1:
            assert cached == 0  # the salted prompt shares no block with the unsalted one
        if at == 4:  # the session's second turn grew the first: its prefix was reused
            first = contexts[3]
            assert (
                context["token_ids"][: first["prefix_tokens"]]
                == first["token_ids"][: first["prefix_tokens"]]
            )
            assert cached >= first["prefix_tokens"] // BLOCK_SIZE * BLOCK_SIZE > 0


def test_cached_tokens_is_what_the_engine_reports(
    api: TestClient,
    cpu_engine: CpuEngine,
    events: EngineEvents,
    unidb_engine: Engine,
    collection: str,
) -> None:
    _load(api, collection)
    # a prompt of whole blocks too: the engine computes its last token, so one block less
    question = "alpha"
    while len(_context(api, collection, question, k=3)["token_ids"]) % BLOCK_SIZE:
        question += " alpha"
    for case, query in enumerate(("beta", question)):
        # both lay out the same chunks (reuse order): a salt of its own keeps each apart
        first = _context(api, collection, query, k=3, salt=f"case-{case}")
        assert first["cached_tokens"] == 0 and first["engine_hint"] is None
        assert _sent(cpu_engine, first, events) == 0
        _caught_up(unidb_engine, events)
        predicted = _context(api, collection, query, k=3, salt=f"case-{case}")
        reported = _sent(cpu_engine, predicted, events)
        assert reported == (len(first["token_ids"]) - 1) // BLOCK_SIZE * BLOCK_SIZE
        assert predicted["cached_tokens"] == reported
        assert predicted["cached_tokens_by_engine"] == {cpu_engine.name: reported}
        assert predicted["engine_hint"] == cpu_engine.name


def test_tenants_salts_never_share_a_block_on_the_engine(
    api: TestClient,
    cpu_engine: CpuEngine,
    events: EngineEvents,
    unidb_engine: Engine,
    collection: str,
) -> None:
    _load(api, collection)
    tenant_a = _context(api, collection, "gamma", k=3, salt="tenant-a")
    tenant_b = _context(api, collection, "gamma", k=3, salt="tenant-b")
    assert tenant_a["token_ids"] == tenant_b["token_ids"]
    assert set(tenant_a["block_keys"]).isdisjoint(tenant_b["block_keys"])
    assert _sent(cpu_engine, tenant_a, events) == 0
    mark = events.mark()
    assert _sent(cpu_engine, tenant_b, events) == 0  # the same tokens, none of tenant A's blocks
    _until(lambda: len(events.stored_since(mark)) >= len(tenant_b["block_keys"]), "BlockStored")
    assert events.stored_since(mark) == tenant_b["block_keys"]
    _caught_up(unidb_engine, events)
    # each tenant's prompt now finds its own blocks, and unidb says so for each
    for tenant in (tenant_a, tenant_b):
        predicted = _context(api, collection, "gamma", k=3, salt=tenant["cache_salt"])
        assert predicted["cached_tokens"] == _sent(cpu_engine, tenant, events) > 0


def test_warm_up_leaves_the_prefix_cached_on_the_engine(
    api: TestClient, cpu_engine: CpuEngine, events: EngineEvents, collection: str
) -> None:
    _load(api, collection)
    context = _context(api, collection, "delta", k=3, salt="warm")
    warmed = api.post(f"/v1/prefixes/{context['prefix_key']}/warm",
                      json={"engine": cpu_engine.name})  # fmt: skip
    assert warmed.status_code == 200, warmed.text
    body = warmed.json()
    assert body["engine"] == cpu_engine.name and body["model"] == cpu_engine.name
    assert body["prompt_tokens"] == context["prefix_tokens"] and body["cached_tokens"] == 0
    # the real request, retrieved context plus question, starts with the prefix cached
    assert (
        _sent(cpu_engine, context, events)
        == context["prefix_tokens"] // BLOCK_SIZE * BLOCK_SIZE
        > 0
    )


def test_evictions_reach_unidbs_residency(
    api: TestClient,
    cpu_engine: CpuEngine,
    events: EngineEvents,
    unidb_engine: Engine,
    collection: str,
) -> None:
    context, held = _held_context(api, collection, "alpha beta", cpu_engine, events, unidb_engine)
    assert held > 0

    # prompts of new tokens filling more than the whole cache: the engine evicts the
    # least recently used blocks, this context's among them
    _flood(cpu_engine, events, evicted=context["block_keys"][0])
    _caught_up(unidb_engine, events)
    predicted = _context(api, collection, "alpha beta", k=3)
    reported = _sent(cpu_engine, context, events)
    assert predicted["cached_tokens"] == reported < held


def test_a_subscriber_started_late_learns_what_the_engine_holds(
    api: TestClient, cpu_engine: CpuEngine, events: EngineEvents, collection: str
) -> None:
    _load(api, collection)
    context = _context(api, collection, "gamma delta", k=3)
    _sent(cpu_engine, context, events)
    _until(lambda: context["block_keys"][0] in events.stored_since(0), "BlockStored")
    # the engine published all of that before this subscriber existed: it learns it from
    # the replay socket when it connects
    residency = Residency()
    late = Subscriber(
        "late", residency, endpoint=cpu_engine.events, replay_endpoint=cpu_engine.replay
    )
    late.start()
    try:
        # the whole replay, not its first batch: the engine buffers every earlier test's
        _until(lambda: late.replays >= 1 and late.replayed > 0, "the replay")
        held = residency.resident_blocks(context["block_keys"])["late"]
        whole = (len(context["token_ids"]) - 1) // BLOCK_SIZE
        assert min(held, whole) * BLOCK_SIZE == _sent(cpu_engine, context, events) > 0
    finally:
        late.close()


def _flood(cpu_engine: CpuEngine, events: EngineEvents, evicted: int) -> None:
    """Prompts of fresh tokens until the engine has evicted block ``evicted``."""
    mark = events.mark()
    flood_tokens = 40 * BLOCK_SIZE
    for n in range(ENGINE_KV_BLOCKS // 40 + 2):
        cpu_engine.complete([1000 + (n * flood_tokens + i) % 28000 for i in range(flood_tokens)])
    _until(lambda: evicted in events.removed_since(mark), "BlockRemoved")


def test_a_session_follows_what_the_engine_holds(
    api: TestClient,
    cpu_engine: CpuEngine,
    events: EngineEvents,
    unidb_engine: Engine,
    collection: str,
) -> None:
    tag = _load(api, collection)
    session = uuid.uuid4().hex

    def turn(*docs: int) -> dict[str, Any]:
        query = " ".join(f"fact{tag}{d}x1" for d in docs)
        context = _context(api, collection, query, k=len(docs), session=session)
        return context

    def whole_blocks(context: dict[str, Any]) -> int:
        return int(context["prefix_tokens"]) // BLOCK_SIZE * BLOCK_SIZE

    first = turn(0, 1)
    _sent(cpu_engine, first, events)
    _caught_up(unidb_engine, events)
    # held: the next turn grows, and the engine finds the whole earlier prefix cached
    second = turn(2)
    assert second["session"]["reset"] is False
    assert [s["id"] for s in second["segments"]][-1] == "d2"
    assert (
        second["token_ids"][: first["prefix_tokens"]]
        == first["token_ids"][: first["prefix_tokens"]]
    )
    cached = _sent(cpu_engine, second, events)
    assert cached == second["cached_tokens"] and cached >= whole_blocks(first)

    # evicted: growing would prefill d0..d4 again; the turn starts a compact prefix instead
    _flood(cpu_engine, events, evicted=second["block_keys"][0])
    _caught_up(unidb_engine, events)
    third = turn(3, 4)
    assert third["session"]["reset"] is True
    assert sorted(s["id"] for s in third["segments"]) == ["d3", "d4"]
    assert sorted(third["session"]["dropped"]) == ["d0", "d1", "d2"]
    assert _sent(cpu_engine, third, events) == third["cached_tokens"]

    # and the session grows again from the compact prefix, which the engine now holds
    _caught_up(unidb_engine, events)
    fourth = turn(5)
    assert fourth["session"]["reset"] is False
    assert [s["id"] for s in fourth["segments"]] == [s["id"] for s in third["segments"]] + ["d5"]
    cached = _sent(cpu_engine, fourth, events)
    assert cached == fourth["cached_tokens"] and cached >= whole_blocks(third)
    # the grown prefix really was gone: the engine holds no more of it than the shared head
    assert _sent(cpu_engine, second, events) < whole_blocks(first)


def test_the_engine_check_finds_its_hash_settings(api: TestClient, cpu_engine: CpuEngine) -> None:
    answer = api.get("/v1/engines")
    assert answer.status_code == 200, answer.text
    [check] = answer.json()["engines"]
    assert check["name"] == cpu_engine.name and check["reachable"] is True
    assert check["model"] == cpu_engine.name and check["block_size"] == BLOCK_SIZE
    default = {"algo": "sha256", "seed": None, "salt_style": "tagged"}
    assert check["configured"] == default and check["found"] == default
    assert check["matches"] is True and check["tokenizer_matches"] is True


def test_an_engine_restart_empties_unidbs_residency(
    api: TestClient,
    cpu_engine: CpuEngine,
    events: EngineEvents,
    unidb_engine: Engine,
    collection: str,
) -> None:
    context, held = _held_context(api, collection, "beta delta", cpu_engine, events, unidb_engine)
    assert held > 0
    subscriber = unidb_engine.context.subscribers[0]
    restarts, connections = subscriber.restarts, subscriber.connections

    cpu_engine.stop()  # silent from now on: the disconnect alone tells unidb
    _until(lambda: subscriber.restarts > restarts, "unidb to see the engine go")
    assert _context(api, collection, "beta delta", k=3)["cached_tokens"] == 0

    cpu_engine.start()
    _until(lambda: subscriber.connections > connections, "unidb to reconnect", timeout_s=60)
    assert _sent(cpu_engine, context, events) == 0  # the engine came back empty, as unidb said
    # and unidb follows the new engine's events from its first batch
    _until(
        lambda: _context(api, collection, "beta delta", k=3)["cached_tokens"] > 0,
        "unidb to follow the restarted engine",
    )
    again = _context(api, collection, "beta delta", k=3)
    assert again["cached_tokens"] == _sent(cpu_engine, context, events)


def test_the_engine_check_finds_other_hash_settings(
    settings: Settings,
    engine: Engine,
    api: TestClient,
    unidb_engine: Engine,
    cpu_engine: CpuEngine,
    events: EngineEvents,
    tmp_path_factory: Any,
    collection: str,
) -> None:
    cpu_engine.stop()
    cpu_engine.hash_algo, cpu_engine.hash_seed = "sha256_cbor", "0"
    cpu_engine.start()
    found = {"algo": "sha256_cbor", "seed": "0", "salt_style": "tagged"}
    # unidb still hashes with the defaults: the check says so, and what the engine does
    [check] = api.get("/v1/engines").json()["engines"]
    assert check["found"] == found and check["matches"] is False
    assert "UNIDB_KV_HASH_ALGO" in check["detail"]

    # configured as found, unidb's block keys are the engine's again
    configured = Engine(
        settings.model_copy(update={
            "kv_engines": [KvEngine(**cpu_engine.kv_engine_setting())],
            "kv_hash_algo": "sha256_cbor", "kv_hash_seed": "0",
            "data_dir": tmp_path_factory.mktemp("cbor")}),
        engine.pool,
        engine.dsn,
        background_pool=engine.background_pool,
    )  # fmt: skip
    configured.context.start()
    try:
        with LocalClient(create_app(engine=configured)) as other:
            [check] = other.get("/v1/engines").json()["engines"]
            assert check["configured"] == check["found"] == found and check["matches"] is True
            _load(other, collection)
            context = _context(other, collection, "alpha", k=3)
            mark = events.mark()
            assert _sent(cpu_engine, context, events) == 0
            assert events.stored_since(mark)[: len(context["block_keys"])] == context["block_keys"]
    finally:
        configured.context.close()

    # unidb with the other settings names the blocks wrongly, yet its cached_tokens is
    # right: the engine's events carry their tokens, and residency follows those too
    mismatched = _context(api, collection, "alpha", k=3)
    assert mismatched["token_ids"] == context["token_ids"]
    assert set(mismatched["block_keys"]).isdisjoint(context["block_keys"])
    _caught_up(unidb_engine, events)
    predicted = _context(api, collection, "alpha", k=3)["cached_tokens"]
    assert predicted == _sent(cpu_engine, mismatched, events) > 0
