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

import hashlib
import logging
import threading
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgpack
import zmq

from unidb.service.context.hashing import event_key

log = logging.getLogger("unidb.kv_events")

GPU = "GPU"
_REPLAY_TIMEOUT_MS = 1000
_POLL_MS = 100
_RECENT_STORED = 256
# the largest block size an event may give (hybrid models align blocks to 528..2048)
MAX_BLOCK_SIZE = 2048


@dataclass(frozen=True, slots=True)
class KvEvent:
    kind: str  # BlockStored | BlockRemoved | AllBlocksCleared
    block_keys: list[int]
    medium: str
    # BlockStored only, where the engine sends them: the blocks' tokens, the key of the
    # block before the first (None: the first is block 0) and the engine's block size
    token_ids: tuple[int, ...] = ()
    parent_key: int | None = None
    block_size: int | None = None
    extra_keys: tuple[Any, ...] = ()  # per block: what besides tokens its hash took (salt...)
    group: int = 0  # the KV cache group (hybrid models keep several)


# positions of the fields we read in the array encoding (after the tag): hashes, medium;
# BlockStored is [tag, hashes, parent, token_ids, block_size, lora_id, medium, ...]
_ARRAY_FIELDS = {"BlockStored": (1, 6), "BlockRemoved": (1, 2), "AllBlocksCleared": (None, None)}


def _key_or_none(value: Any) -> int | None:
    return event_key(value) if isinstance(value, int | bytes) else None


def _event(raw: Any) -> KvEvent | None:
    stored: dict[str, Any] = {}
    if isinstance(raw, dict):
        kind = raw.get("type")
        hashes, medium = raw.get("block_hashes"), raw.get("medium")
        stored = {"group": raw.get("group_idx")}
        if kind == "BlockStored":
            stored |= {"token_ids": raw.get("token_ids"), "parent": raw.get("parent_block_hash"),
                       "block_size": raw.get("block_size"), "extra": raw.get("extra_keys")}  # fmt: skip
    elif isinstance(raw, list | tuple) and raw and isinstance(raw[0], str):
        kind = raw[0]
        hashes_at, medium_at = _ARRAY_FIELDS.get(kind, (None, None))
        hashes = raw[hashes_at] if hashes_at is not None and len(raw) > hashes_at else None
        medium = raw[medium_at] if medium_at is not None and len(raw) > medium_at else None
        if kind == "BlockStored":
            stored = {"parent": raw[2] if len(raw) > 2 else None,
                      "token_ids": raw[3] if len(raw) > 3 else None,
                      "block_size": raw[4] if len(raw) > 4 else None}  # fmt: skip
    else:
        return None
    if kind not in _ARRAY_FIELDS:
        return None  # an event kind this version does not know
    keys = [event_key(h) for h in hashes or () if isinstance(h, int | bytes)]
    tokens = stored.get("token_ids")
    block_size = stored.get("block_size")
    extra = stored.get("extra")
    group = stored.get("group")
    return KvEvent(
        kind,
        keys,
        medium if isinstance(medium, str) else GPU,
        tuple(int(t) for t in tokens) if isinstance(tokens, list | tuple) else (),
        _key_or_none(stored.get("parent")),
        block_size if isinstance(block_size, int) and 0 < block_size <= MAX_BLOCK_SIZE else None,
        tuple(extra) if isinstance(extra, list | tuple) else (),
        group if isinstance(group, int) and group >= 0 else 0,
    )


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


_ROOT = b"\x00" * 16


def _root_block(event: KvEvent) -> KvEvent | None:
    """Block 0 of a BlockStored event that starts a prompt, alone."""
    size = event.block_size or len(event.token_ids) // max(len(event.block_keys), 1)
    if size < 1 or len(event.token_ids) < size or not event.block_keys:
        return None
    extra = event.extra_keys[:1]
    return KvEvent("BlockStored", event.block_keys[:1], event.medium,
                   event.token_ids[:size], None, size, extra, event.group)  # fmt: skip


def content_key(parent: bytes, tokens: Sequence[int], extra: Any) -> bytes:
    """A block's name by what it holds: its parent's name, its tokens, and the extra keys
    its engine hashed with it (the cache salt of block 0). Independent of the engine's hash
    settings, so residency stays right when those are not unidb's."""
    digest = hashlib.blake2b(parent, digest_size=16)
    digest.update(array("q", tokens).tobytes())
    if extra:
        digest.update(repr(tuple(extra)).encode())
    return digest.digest()


@dataclass
class _GroupContents:
    """One KV cache group's blocks by content, at the group's own block size: which content
    each (medium, key) holds, and how many entries hold each content. Bounded by what the
    group holds: a removal (or a clear) drops what it named."""

    block_size: int
    of_entry: dict[tuple[str, int], bytes] = field(default_factory=dict)
    of_key: dict[int, bytes] = field(default_factory=dict)  # any medium
    held: dict[bytes, int] = field(default_factory=dict)
    media: set[str] = field(default_factory=set)

    def stored(self, event: KvEvent) -> None:
        size = self.block_size
        if len(event.token_ids) != size * len(event.block_keys):
            return
        if event.parent_key is None:
            parent = _ROOT
        else:
            known = self.of_key.get(event.parent_key)
            if known is None:
                return  # its parent's event was missed: its content chain is unknown
            parent = known
        self.media.add(event.medium)
        for i, key in enumerate(event.block_keys):
            extra = event.extra_keys[i] if i < len(event.extra_keys) else None
            parent = content_key(parent, event.token_ids[i * size : (i + 1) * size], extra)
            entry = (event.medium, key)
            if entry in self.of_entry:
                continue
            self.of_entry[entry] = parent
            self.of_key[key] = parent
            self.held[parent] = self.held.get(parent, 0) + 1

    def removed(self, event: KvEvent) -> None:
        for key in event.block_keys:
            content = self.of_entry.pop((event.medium, key), None)
            if content is None:
                continue
            if not any((medium, key) in self.of_entry for medium in self.media):
                self.of_key.pop(key, None)  # no other medium holds it
            left = self.held.get(content, 0) - 1
            if left > 0:
                self.held[content] = left
            else:
                self.held.pop(content, None)

    def leading_tokens(self, token_ids: Sequence[int], salt: str | None) -> int:
        """The leading tokens of ``token_ids`` this group holds, in whole blocks, at most
        one block fewer than the prompt holds whole (the engine computes the last token)."""
        size, parent, count = self.block_size, _ROOT, 0
        whole = max(len(token_ids) - 1, 0) // size
        for start in range(0, whole * size, size):
            extra = (salt,) if salt and start == 0 else None
            parent = content_key(parent, token_ids[start : start + size], extra)
            if parent not in self.held:
                break
            count += 1
        return count * size


class Residency:
    """Per engine and medium, the block keys its KV cache holds now; and, where its events
    carry their tokens, the same blocks by content (see `content_key`)."""

    def __init__(self) -> None:
        self._blocks: dict[str, dict[str, set[int]]] = {}
        # per engine, per KV cache group (each at its own block size)
        self._contents: dict[str, dict[int, _GroupContents]] = {}
        # the engines whose every event since they started was applied, in order
        self._complete: set[str] = set()
        self._lock = threading.Lock()

    def apply(self, engine: str, events: Iterable[KvEvent]) -> None:
        with self._lock:
            media = self._blocks.setdefault(engine, {})
            groups = self._contents.setdefault(engine, {})
            for event in events:
                if event.kind == "BlockStored":
                    media.setdefault(event.medium, set()).update(event.block_keys)
                    if event.token_ids and event.block_keys:
                        size = event.block_size or len(event.token_ids) // len(event.block_keys)
                        contents = groups.get(event.group)
                        if contents is None or contents.block_size != size:
                            contents = groups[event.group] = _GroupContents(size)
                        contents.stored(event)
                elif event.kind == "BlockRemoved":
                    media.get(event.medium, set()).difference_update(event.block_keys)
                    if event.group in groups:
                        groups[event.group].removed(event)
                else:
                    media.clear()
                    groups.clear()

    def forget(self, engine: str) -> None:
        """The engine's cache is gone (it stopped or restarted): it holds nothing."""
        with self._lock:
            self._blocks.pop(engine, None)
            self._contents.pop(engine, None)
            self._complete.discard(engine)

    def mark_complete(self, engine: str, complete: bool) -> None:
        """Whether every event ``engine`` published since it started has been applied (its
        first batch, then each next one): only then is a block it lacks known to be gone."""
        with self._lock:
            if complete:
                self._complete.add(engine)
            else:
                self._complete.discard(engine)

    def knows_all(self) -> bool:
        """Whether some engine is followed and every engine heard from is followed
        completely (see `mark_complete`): then what residency lacks, no engine holds."""
        with self._lock:
            return bool(self._blocks) and set(self._blocks) <= self._complete

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

    def resident_tokens(self, token_ids: Sequence[int], salt: str | None) -> dict[str, int]:
        """For each engine whose events carry tokens: how many leading tokens of the prompt
        it holds in every KV cache group, each group in its own blocks, whatever the
        engine's hash settings (at most one block fewer than the prompt holds whole)."""
        with self._lock:
            found = {}
            for engine, groups in self._contents.items():
                if groups:
                    found[engine] = min(g.leading_tokens(token_ids, salt) for g in groups.values())
            return found

    def engines(self) -> list[str]:
        """The engines heard from since they last started."""
        with self._lock:
            return list(self._blocks)

    def held_by(self, engine: str, block_keys: Iterable[int]) -> set[int]:
        """Those of ``block_keys`` that ``engine`` holds (any medium)."""
        with self._lock:
            media = list(self._blocks.get(engine, {}).values())
            return {key for key in block_keys if any(key in blocks for blocks in media)}

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
        self.replayed = 0  # batches applied from the replay socket
        self.replays = 0  # replay requests finished (answered to the end, or timed out)
        self.restarts = 0  # times the engine's cache was found gone (disconnect or restart)
        self.connections = 0
        self.last_seq: list[int] = [-1] * data_parallel_size
        self.last_ts: list[float] = [0.0] * data_parallel_size
        # per rank: every batch since the engine started applied, in order
        self.complete: list[bool] = [False] * data_parallel_size
        # the first block of the latest BlockStored events that start a prompt (block 0),
        # for probing the engine: its key, block size and tokens only
        self._roots: deque[KvEvent] = deque(maxlen=_RECENT_STORED)
        self._roots_lock = threading.Lock()
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
        # an engine numbers its batches from 0: a view from batch 0 on, with no batch
        # skipped, is the engine's whole history; any other start or a gap is not
        self.complete[rank] = seq == self.last_seq[rank] + 1 and (seq == 0 or self.complete[rank])
        self.residency.apply(self.name, batch.events)
        self.residency.mark_complete(self.name, all(self.complete))
        roots = [_root_block(e) for e in batch.events
                 if e.kind == "BlockStored" and e.token_ids and e.parent_key is None]  # fmt: skip
        if roots:
            with self._roots_lock:
                self._roots.extend(r for r in roots if r is not None)
        self.last_seq[rank] = seq
        self.last_ts[rank] = max(self.last_ts[rank], batch.ts)
        self.batches += 1

    def stored_first_block(
        self, token_ids: Sequence[int], *, other_than: int | None = None
    ) -> KvEvent | None:
        """The latest stored block 0 of ``token_ids`` (its key other than ``other_than``),
        as a one-block event."""
        with self._roots_lock:
            roots = list(self._roots)
        for root in reversed(roots):
            size = len(root.token_ids)
            if root.block_keys[0] != other_than and tuple(token_ids[:size]) == root.token_ids:
                return root
        return None

    def _gone(self, rank: int) -> None:
        """The engine's cache is gone: forget what it held; its numbering starts again."""
        self.residency.forget(self.name)
        self.last_seq[rank] = -1
        self.complete[rank] = False
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
            self.replays += 1
