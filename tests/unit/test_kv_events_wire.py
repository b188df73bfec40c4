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


def test_residency_by_content_needs_no_matching_hash() -> None:
    from unidb.service.context.kv_events import KvEvent, Residency

    size = 4
    prompt = list(range(100, 114))  # three whole blocks and two tokens
    residency = Residency()

    # the engine names its blocks with keys unidb cannot compute (other hash settings)
    def stored(keys: list[int], parent: int | None, tokens: list[int], salt: str | None = None,
               medium: str = "GPU") -> KvEvent:  # fmt: skip
        extra = tuple([salt] if salt and parent is None and i == 0 else None
                      for i in range(len(keys)))  # fmt: skip
        return KvEvent("BlockStored", keys, medium, tuple(tokens), parent, size, extra)

    residency.apply("e", [stored([901, 902], None, prompt[:8])])
    assert residency.resident_tokens(prompt, None) == {"e": 8}
    assert residency.resident_tokens(prompt, "tenant-a") == {"e": 0}  # salted: other blocks
    residency.apply("e", [stored([903], 902, prompt[8:12])])
    assert residency.resident_tokens(prompt, None) == {"e": 12}
    assert residency.resident_tokens(prompt[:12], None) == {"e": 8}  # the last token computed
    assert residency.resident_tokens([7, *prompt[1:]], None) == {"e": 0}  # other tokens

    # the same block on the CPU too: it stays until both media drop it
    residency.apply("e", [stored([902], 901, prompt[4:8], medium="CPU")])
    residency.apply("e", [KvEvent("BlockRemoved", [902], "GPU")])
    assert residency.resident_tokens(prompt, None) == {"e": 12}
    residency.apply("e", [KvEvent("BlockRemoved", [902], "CPU")])
    assert residency.resident_tokens(prompt, None) == {"e": 4}

    salted = Residency()
    salted.apply("e", [stored([801, 802], None, prompt[:8], salt="tenant-a")])
    assert salted.resident_tokens(prompt, "tenant-a") == {"e": 8}
    assert salted.resident_tokens(prompt, None) == {"e": 0}

    # a block whose parent's event was missed has no known content; a clear forgets all
    orphan = Residency()
    orphan.apply("e", [stored([905], 904, prompt[4:8])])
    assert orphan.resident_tokens(prompt, None) == {"e": 0}
    residency.apply("e", [KvEvent("AllBlocksCleared", [], "GPU")])
    assert residency.resident_tokens(prompt, None) == {}


def test_residency_by_content_in_every_kv_cache_group() -> None:
    from unidb.service.context.kv_events import KvEvent, Residency

    prompt = list(range(200, 233))  # 33 tokens
    residency = Residency()
    # a hybrid model: group 0 in blocks of 4, group 1 in blocks of 8, each its own events
    residency.apply("e", [
        KvEvent("BlockStored", [1, 2, 3, 4, 5, 6], "GPU", tuple(prompt[:24]), None, 4, (), 0),
        KvEvent("BlockStored", [7, 8], "GPU", tuple(prompt[:16]), None, 8, (), 1),
    ])  # fmt: skip
    # the prompt is cached as far as every group holds it: 16 tokens, not 24
    assert residency.resident_tokens(prompt, None) == {"e": 16}
    # one group's events never reset the other's
    residency.apply("e", [KvEvent("BlockStored", [9], "GPU", tuple(prompt[16:24]), 8, 8, (), 1)])
    assert residency.resident_tokens(prompt, None) == {"e": 24}
    residency.apply("e", [KvEvent("BlockRemoved", [2], "GPU", group=0)])
    assert residency.resident_tokens(prompt, None) == {"e": 4}
