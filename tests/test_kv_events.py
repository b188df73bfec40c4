"""KV events from a real ZMQ publisher drive residency; a gap is filled by replay; warm-up
reaches a real HTTP completions server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from unidb.service.api.main import create_app
from unidb.service.config import KvEngine, Settings
from unidb.service.engine import Engine

from .conftest import LocalClient, free_port


def _map_event(kind: str, hashes: list[Any], medium: str | None = None) -> dict[str, Any]:
    # vLLM >= 0.24: events are maps tagged with "type"; unknown fields are ignored
    event: dict[str, Any] = {"type": kind}
    if kind == "BlockStored":
        event |= {"block_hashes": hashes, "parent_block_hash": None, "token_ids": [],
                  "block_size": 16, "lora_id": None, "medium": medium, "lora_name": None,
                  "extra_keys": None, "future_field": 1}  # fmt: skip
    elif kind == "BlockRemoved":
        event |= {"block_hashes": hashes, "medium": medium}
    return event


def _array_event(kind: str, hashes: list[Any], medium: str | None = None) -> list[Any]:
    # before vLLM 0.24: tagged positional arrays, trailing defaults omitted
    if kind == "BlockStored":
        return [kind, hashes, None, [], 16, None, *([medium] if medium else [])]
    if kind == "BlockRemoved":
        return [kind, hashes, *([medium] if medium else [])]
    return [kind]


def _batch(events: list[Any], rank: int | None = 0) -> bytes:
    payload: bytes = msgpack.packb([time.time(), events, rank])
    return payload


class Publisher:
    """A stand-in for a vLLM engine's KV event sockets: PUB plus a replay ROUTER."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.port, self.replay_port = free_port(), free_port()
        self.pub = self.context.socket(zmq.PUB)
        self.pub.bind(f"tcp://127.0.0.1:{self.port}")
        self.sent: dict[int, bytes] = {}
        self.seq = 0
        self._stop = threading.Event()
        self._router = threading.Thread(target=self._serve_replay, daemon=True)
        self._router.start()

    def publish(self, payload: bytes, *, deliver: bool = True) -> int:
        self.seq += 1
        self.sent[self.seq] = payload
        if deliver:
            self.pub.send_multipart([b"", self.seq.to_bytes(8, "big"), payload])
        return self.seq

    def _serve_replay(self) -> None:
        router = self.context.socket(zmq.ROUTER)
        router.bind(f"tcp://127.0.0.1:{self.replay_port}")
        try:
            while not self._stop.is_set():
                if not router.poll(50):
                    continue
                identity, _, start = router.recv_multipart()
                first = int.from_bytes(start, "big")
                for seq in sorted(s for s in self.sent if s >= first):
                    router.send_multipart([identity, b"", seq.to_bytes(8, "big"), self.sent[seq]])
                router.send_multipart([identity, b"", (-1).to_bytes(8, "big", signed=True), b""])
        finally:
            router.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        self._router.join()
        self.pub.close(linger=0)
        self.context.term()


def _wait(predicate: Callable[[], bool], poke: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + 20
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        if poke is not None:
            poke()
        time.sleep(0.05)


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    publisher = Publisher()
    try:
        yield publisher
    finally:
        publisher.close()


@pytest.fixture
def engine_with_events(
    settings: Settings, engine: Engine, publisher: Publisher, tmp_path: Any
) -> Iterator[Engine]:
    events = KvEngine(
        name="vllm-a",
        events=f"tcp://127.0.0.1:{publisher.port}",
        replay=f"tcp://127.0.0.1:{publisher.replay_port}",
    )
    own = Engine(
        settings.model_copy(update={"kv_engines": [events], "data_dir": tmp_path}),
        engine.pool,
        engine.dsn,
        background_pool=engine.background_pool,
    )
    own.context.start()  # the KV-event subscribers; the session engine follows the outbox
    try:
        yield own
    finally:
        own.context.close()


def test_kv_events_drive_cached_tokens(
    engine_with_events: Engine, publisher: Publisher, collection: str
) -> None:
    subscriber = engine_with_events.context.subscribers[0]
    with LocalClient(create_app(engine=engine_with_events)) as api:
        api.post("/v1/collections", json={"name": collection, "dim": 2})
        docs = [{"id": f"k{i}", "text": f"kv cache block {i} " * 30} for i in range(3)]
        api.post(f"/v1/collections/{collection}/documents", json={"documents": docs})

        def context() -> dict[str, Any]:
            body: dict[str, Any] = api.post(
                "/v1/context", json={"collection": collection, "query": "kv cache", "k": 3}
            ).json()
            return body

        first = context()
        assert first["cached_tokens"] == 0 and first["engine_hint"] is None
        keys = first["block_keys"]
        assert len(keys) > 6

        # the subscriber may connect after the first messages: publish until one lands
        stored = _batch([_map_event("BlockStored", keys[:6])])
        _wait(lambda: subscriber.batches > 0, lambda: publisher.publish(stored))
        warm = context()
        assert warm["cached_tokens"] == 6 * 16
        assert warm["cached_tokens_by_engine"] == {"vllm-a": 6 * 16}
        assert warm["engine_hint"] == "vllm-a"

        # the older array encoding with raw 32-byte hashes: block 3 leaves the GPU
        raw = [bytes.fromhex(h) for h in first["block_hashes"]]
        seen = subscriber.batches
        publisher.publish(_batch([_array_event("BlockRemoved", [raw[3]])]))
        _wait(lambda: subscriber.batches > seen)
        assert context()["cached_tokens"] == 3 * 16

        # two batches never arrive: the gap is filled from the replay socket
        publisher.publish(_batch([_map_event("BlockStored", keys[3:5], "CPU")]), deliver=False)
        publisher.publish(_batch([_array_event("BlockStored", [raw[5], keys[6]])]), deliver=False)
        seen = subscriber.replayed
        publisher.publish(_batch([_map_event("BlockStored", [keys[7]])]))
        _wait(lambda: subscriber.replayed >= seen + 2)
        _wait(lambda: context()["cached_tokens"] == 8 * 16)

        seen = subscriber.batches
        publisher.publish(_batch([_map_event("AllBlocksCleared", [])]))
        _wait(lambda: subscriber.batches > seen)
        cleared = context()
        assert cleared["cached_tokens"] == 0 and cleared["engine_hint"] is None
