"""vLLM's KV-event wire encodings (both of them) and its data-parallel endpoints."""

from __future__ import annotations

from unidb.service.context.kv_events import decode_batch

from ..test_kv_events import _array_event, _batch, _map_event


def test_decode_both_encodings() -> None:
    raw = bytes(range(32))
    for make in (_map_event, _array_event):
        batch = decode_batch(
            _batch(
                [
                    make("BlockStored", [5, raw], "CPU"),
                    make("BlockRemoved", [5]),
                    make("AllBlocksCleared", []),
                    ["SomethingNew", 1, 2] if make is _array_event else {"type": "SomethingNew"},
                ],
                rank=3,
            )
        )
        assert batch.rank == 3 and batch.ts > 0
        assert [(e.kind, e.block_keys, e.medium) for e in batch.events] == [
            ("BlockStored", [5, int.from_bytes(raw, "big") & (2**64 - 1)], "CPU"),
            ("BlockRemoved", [5], "GPU"),
            ("AllBlocksCleared", [], "GPU"),
        ]


def test_data_parallel_ranks_offset_the_port() -> None:
    from unidb.service.context.kv_events import rank_endpoint

    assert rank_endpoint("tcp://vllm:5557", 0) == "tcp://vllm:5557"
    assert rank_endpoint("tcp://vllm:5557", 3) == "tcp://vllm:5560"
