"""Block hashes exactly as vLLM's automatic prefix caching computes them.

A prompt's KV cache is kept in blocks of ``block_size`` tokens; only full blocks are cached,
and each is named by a hash chained through its parent, so a block's hash names the whole
prefix up to it. Each setting here names the engine behaviour it matches:

- ``algo``: the engine's ``--prefix-caching-hash-algo``. ``sha256`` (vLLM's default) hashes
  ``pickle.dumps(x, protocol=HIGHEST_PROTOCOL)``; ``sha256_cbor`` hashes canonical CBOR.
- ``seed``: the engine's ``PYTHONHASHSEED``. The root hash is ``H(seed)``; with none set,
  vLLM >= 0.29 uses the string ``"vllm-none-hash"``. Older engines drew random bytes at
  start, which no one outside the engine can match.
- ``salt_style``: how block 0 carries a request's ``cache_salt``: ``tagged``
  (``(("cache_salt", salt),)``, vLLM >= 0.31) or ``bare`` (``(salt,)``, before).

KV events name a block by the low 64 bits of its hash (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``,
the default) or by its 32 raw bytes; `event_key` folds either to the integer form.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cbor2

HashAlgo = Literal["sha256", "sha256_cbor"]
SaltStyle = Literal["tagged", "bare"]

UNSEEDED = "vllm-none-hash"
_LOW_64 = (1 << 64) - 1


def _sha256_pickle(value: Any) -> bytes:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def _sha256_cbor(value: Any) -> bytes:
    return hashlib.sha256(cbor2.dumps(value, canonical=True)).digest()


_HASHERS: dict[str, Callable[[Any], bytes]] = {
    "sha256": _sha256_pickle,
    "sha256_cbor": _sha256_cbor,
}


@dataclass(frozen=True, slots=True)
class BlockHasher:
    """Hashes token blocks the way one engine configuration does."""

    algo: HashAlgo = "sha256"
    seed: str | None = None
    salt_style: SaltStyle = "tagged"

    @property
    def none_hash(self) -> bytes:
        """The parent of block 0."""
        return _HASHERS[self.algo](self.seed if self.seed is not None else UNSEEDED)

    def _salt_keys(self, salt: str | None) -> tuple[Any, ...] | None:
        if not salt:
            return None
        return (("cache_salt", salt),) if self.salt_style == "tagged" else (salt,)

    def chain(
        self,
        token_ids: Sequence[int],
        *,
        block_size: int,
        salt: str | None = None,
        parent: bytes | None = None,
    ) -> list[bytes]:
        """The hash of every full block of ``token_ids``, in order (a partial tail has none).

        With ``parent`` (the hash of the block before them) the blocks continue a chain, and
        none of them is block 0, which alone carries the salt."""
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        hasher = _HASHERS[self.algo]
        first = parent is None
        parent = self.none_hash if parent is None else parent
        hashes: list[bytes] = []
        for start in range(0, len(token_ids) - block_size + 1, block_size):
            extra = self._salt_keys(salt) if first and start == 0 else None
            block = tuple(int(t) for t in token_ids[start : start + block_size])
            parent = hasher((parent, block, extra))
            hashes.append(parent)
        return hashes


def event_key(block_hash: bytes | int) -> int:
    """A block's name in KV events: the low 64 bits of its hash, big-endian."""
    if isinstance(block_hash, int):
        return block_hash & _LOW_64
    return int.from_bytes(block_hash, "big") & _LOW_64
