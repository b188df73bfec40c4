"""Which blocks each LLM engine holds, from the engine's own KV event stream.

vLLM publishes KV events on a ZMQ PUB socket (``--kv-events-config``; default
``tcp://*:5557``, the port offset by the data-parallel rank). A message is three frames:
topic, an 8-byte big-endian sequence number, and a msgpack ``EventBatch``
``[ts, events, data_parallel_rank]``. Events are ``BlockStored``, ``BlockRemoved`` and
``AllBlocksCleared``: maps with a ``"type"`` tag since vLLM 0.24, tagged positional arrays
before. Block hashes arrive as 64-bit integers or as 32 raw bytes. A gap in the sequence is
filled from the engine's replay ROUTER socket when one is configured.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgpack
import zmq

from unidb.service.context.hashing import event_key

log = logging.getLogger("unidb.kv_events")

GPU = "GPU"
_REPLAY_TIMEOUT_MS = 1000
_POLL_MS = 100


@dataclass(frozen=True, slots=True)
class KvEvent:
    kind: str  # BlockStored | BlockRemoved | AllBlocksCleared
    block_keys: list[int]
    medium: str


# positions of the fields we read in the array encoding (after the tag)
_ARRAY_FIELDS = {"BlockStored": (1, 6), "BlockRemoved": (1, 2), "AllBlocksCleared": (None, None)}


def _event(raw: Any) -> KvEvent | None:
    if isinstance(raw, dict):
        kind = raw.get("type")
        hashes, medium = raw.get("block_hashes"), raw.get("medium")
    elif isinstance(raw, list | tuple) and raw and isinstance(raw[0], str):
        kind = raw[0]
        hashes_at, medium_at = _ARRAY_FIELDS.get(kind, (None, None))
        hashes = raw[hashes_at] if hashes_at is not None and len(raw) > hashes_at else None
        medium = raw[medium_at] if medium_at is not None and len(raw) > medium_at else None
    else:
        return None
    if kind not in _ARRAY_FIELDS:
        return None  # an event kind this version does not know
    keys = [event_key(h) for h in hashes or () if isinstance(h, int | bytes)]
    return KvEvent(kind, keys, medium if isinstance(medium, str) else GPU)


@dataclass(frozen=True, slots=True)
class EventBatch:
    events: list[KvEvent]
    rank: int | None  # the data-parallel rank that sent it, when it says
    ts: float  # when the engine made it (seconds since the epoch)


def decode_batch(payload: bytes) -> EventBatch:
    """One ``EventBatch`` (either encoding)."""
    batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if isinstance(batch, dict):
        events, rank, ts = batch.get("events", []), batch.get("data_parallel_rank"), batch.get("ts")
    else:
        events = batch[1] if len(batch) > 1 else []
        rank = batch[2] if len(batch) > 2 else None
        ts = batch[0] if batch else None
    decoded = [e for e in (_event(raw) for raw in events or ()) if e is not None]
    return EventBatch(
        decoded,
        rank if isinstance(rank, int) else None,
        float(ts) if isinstance(ts, int | float) else 0.0,
    )


class Residency:
    """Per engine and medium, the block keys its KV cache holds now."""

    def __init__(self) -> None:
        self._blocks: dict[str, dict[str, set[int]]] = {}
        self._lock = threading.Lock()

    def apply(self, engine: str, events: Iterable[KvEvent]) -> None:
        with self._lock:
            media = self._blocks.setdefault(engine, {})
            for event in events:
                if event.kind == "BlockStored":
                    media.setdefault(event.medium, set()).update(event.block_keys)
                elif event.kind == "BlockRemoved":
                    media.get(event.medium, set()).difference_update(event.block_keys)
                else:
                    media.clear()

    def forget(self, engine: str) -> None:
        """The engine's cache is gone (it stopped or restarted): it holds nothing."""
        with self._lock:
            self._blocks.pop(engine, None)

    def resident_blocks(self, block_keys: Sequence[int]) -> dict[str, int]:
        """For each engine, how many leading blocks of ``block_keys`` it holds (any medium)."""
        with self._lock:
            found = {}
            for engine, media in self._blocks.items():
                count = 0
                for key in block_keys:
                    if not any(key in blocks for blocks in media.values()):
                        break
                    count += 1
                found[engine] = count
            return found

    def held(self, block_keys: Iterable[int]) -> set[int]:
        """Those of ``block_keys`` that some engine holds."""
        with self._lock:
            every = [b for media in self._blocks.values() for b in media.values()]
            return {key for key in block_keys if any(key in blocks for blocks in every)}


def rank_endpoint(endpoint: str, rank: int) -> str:
    """vLLM offsets each data-parallel rank's port by its rank."""
    if rank == 0:
        return endpoint
    parts = urlsplit(endpoint)
    if parts.port is None:
        raise ValueError(f"{endpoint!r} has no port to offset")
    return f"{parts.scheme}://{parts.hostname}:{parts.port + rank}"


class Subscriber:
    """Follows one engine's KV events (every data-parallel rank) into a `Residency`.

    Besides the stream itself it watches the connection: when the engine's publisher goes
    away (the engine stopped, crashed or restarts) its cache is gone with it, so the
    engine's residency is forgotten at once, not at its next event. On every connection
    (the first, and each after an engine restart) it asks the replay socket for what the
    engine still buffers, so a subscriber started after the engine knows what it holds.
    A batch numbered at or below the last one applied is either a duplicate (a replay
    overlapped the stream: not newer than the last applied) or the first of a restarted
    engine that came back before the disconnect was seen (newer): then residency starts
    again from that batch."""

    def __init__(
        self,
        name: str,
        residency: Residency,
        *,
        endpoint: str,
        replay_endpoint: str | None = None,
        topic: str = "",
        data_parallel_size: int = 1,
    ) -> None:
        self.name = name
        self.residency = residency
        self.endpoints = [rank_endpoint(endpoint, r) for r in range(data_parallel_size)]
        self.replay_endpoints = [
            rank_endpoint(replay_endpoint, r) if replay_endpoint else None
            for r in range(data_parallel_size)
        ]
        self.topic = topic
        self.batches = 0
        self.replayed = 0
        self.restarts = 0  # times the engine's cache was found gone (disconnect or restart)
        self.connections = 0
        self.last_seq: list[int] = [-1] * data_parallel_size
        self.last_ts: list[float] = [0.0] * data_parallel_size
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._thread = threading.Thread(target=self._run, name=f"kv-events-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # never started: nothing to wait for
            self._thread.join()
        self._context.term()

    def _apply(self, rank: int, seq: int, batch: EventBatch) -> None:
        self.residency.apply(self.name, batch.events)
        self.last_seq[rank] = seq
        self.last_ts[rank] = max(self.last_ts[rank], batch.ts)
        self.batches += 1

    def _gone(self, rank: int) -> None:
        """The engine's cache is gone: forget what it held; its numbering starts again."""
        self.residency.forget(self.name)
        self.last_seq[rank] = -1
        self.restarts += 1

    def _run(self) -> None:
        sockets, monitors = [], []
        for endpoint in self.endpoints:
            sub = self._context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt_string(zmq.SUBSCRIBE, self.topic)
            monitors.append(sub.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED))
            sub.connect(endpoint)
            sockets.append(sub)
        poller = zmq.Poller()
        for sub, monitor in zip(sockets, monitors, strict=True):
            poller.register(sub, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for socket, _ in poller.poll(_POLL_MS):
                    try:
                        if socket in monitors:
                            self._connection_event(monitors.index(socket), socket)
                        else:
                            self._receive(sockets.index(socket), socket.recv_multipart())
                    except Exception:
                        log.exception("engine %s sent a KV event batch we cannot read", self.name)
        finally:
            for sub in sockets:
                sub.disable_monitor()
                sub.close()
            for monitor in monitors:
                monitor.close()

    def _connection_event(self, rank: int, monitor: zmq.Socket[bytes]) -> None:
        from zmq.utils.monitor import recv_monitor_message

        event = recv_monitor_message(monitor)["event"]
        if event == zmq.EVENT_DISCONNECTED:
            log.info("engine %s: its KV event publisher went away; it holds nothing now", self.name)
            self._gone(rank)
        elif event == zmq.EVENT_CONNECTED:
            self.connections += 1
            self._replay(rank, self.last_seq[rank] + 1, None)  # what it buffers

    def _receive(self, rank: int, frames: list[bytes]) -> None:
        if len(frames) != 3:
            log.warning("engine %s: a KV event message of %d frames", self.name, len(frames))
            return
        _, seq_bytes, payload = frames
        seq = int.from_bytes(seq_bytes, "big")
        batch = decode_batch(payload)
        last = self.last_seq[rank]
        if 0 <= seq <= last:
            if batch.ts <= self.last_ts[rank]:
                return  # applied already: a replay overlapped the stream
            self._gone(rank)  # a restarted engine numbers its batches from 0 again
            last = -1
        if seq > last + 1:
            self._replay(rank, last + 1, seq)
        self._apply(rank, seq, batch)

    def _replay(self, rank: int, start: int, upto: int | None) -> None:
        """Ask the engine's replay socket for batches ``start`` .. ``upto - 1`` (everything
        it buffers from ``start``, when ``upto`` is None)."""
        endpoint = self.replay_endpoints[rank]
        if endpoint is None:
            if upto is not None:
                log.warning(
                    "engine %s missed KV event batches %d..%d and has no replay endpoint",
                    self.name,
                    start,
                    upto - 1,
                )
            return
        dealer = self._context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        try:
            # the empty frame makes the request look like a REQ socket's to the ROUTER
            dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while dealer.poll(_REPLAY_TIMEOUT_MS):
                frames = dealer.recv_multipart()
                if frames and frames[0] == b"":
                    frames = frames[1:]
                # vLLM 0.32 sends topic, seq, payload; earlier engines sent seq, payload
                if len(frames) == 3:
                    frames = frames[1:]
                if len(frames) != 2 or not frames[1]:
                    break  # an empty payload ends the replay
                seq = int.from_bytes(frames[0], "big")
                if self.last_seq[rank] < seq and (upto is None or seq < upto):
                    self._apply(rank, seq, decode_batch(frames[1]))
                    self.replayed += 1
                if upto is not None and seq >= upto - 1:
                    break
        finally:
            dealer.close()
