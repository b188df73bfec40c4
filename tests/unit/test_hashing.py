"""KV block hashes: vLLM's own test vectors, byte for byte."""

from __future__ import annotations

from unidb.service.context.hashing import BlockHasher, event_key

TOKENS = list(range(40))  # two full blocks of 16, and a partial one that is never hashed


def _hex_and_keys(hasher: BlockHasher, salt: str | None = None) -> list[tuple[str, int]]:
    return [(h.hex(), event_key(h)) for h in hasher.chain(TOKENS, block_size=16, salt=salt)]


def test_block_hashes_equal_vllm() -> None:
    cbor0 = BlockHasher(algo="sha256_cbor", seed="0")
    assert (
        cbor0.none_hash.hex() == "4e1195df020de59e0d65a33a4279f1183e7ae4e5d980e309f8b55adff2e61c3e"
    )
    assert _hex_and_keys(cbor0) == [
        ("d830de3d42c00f25a2949b5d12d98642664a44872c1614c5b0147556276afc9c", 12687895063098490012),
        ("fedd9e4abebebbe6f6cf96b682f08d316063fe2f22a5c552192dd62904fcccac", 1814341696565857452),
    ]
    assert _hex_and_keys(cbor0, "tenant-a") == [
        ("3be36890effbb5e0d90d6506b68f1365539bcf2a82688a430612688636e0959d", 437527039463953821),
        ("dbf6c5153b17752a570472ec341a7288bd20baa787893439ed060feba018cfca", 17079356141526896586),
    ]
    bare = BlockHasher(algo="sha256_cbor", seed="0", salt_style="bare")
    assert _hex_and_keys(bare, "tenant-a")[0] == (
        "a31aa6d7bd52d1db44c2e2c50ce6687164f2a198c45e6f9c6f5025e7d8dff1f7",
        8020952614053081591,
    )
    unseeded = BlockHasher(algo="sha256_cbor")
    assert unseeded.none_hash.hex() == (
        "9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0"
    )
    assert _hex_and_keys(unseeded) == [
        ("dc918a88b139e5afe60b88eda27508d4aee16c10fdc354791efea06206ac0749", 2233398808101521225),
        ("c300ec275d7bf08af8fc63e76cdc0086911bbc7091e03c5cf892553bef84ef0c", 17911472383915781900),
    ]
    pickle0 = BlockHasher(algo="sha256", seed="0")
    assert pickle0.none_hash.hex() == (
        "1973e23848344dc43a988a9b478663803cfffe1243480253f9a3cf004b14aa7c"
    )
    assert _hex_and_keys(pickle0) == [
        ("6358e31578a64b75ebe28cdb99d3beae65de82a2087321dc6ec84ae048faaaa6", 7982712666671721126),
        ("3c3c50f324aefbdfbb124dfdc541efac3e94e59c40f4be08afe70601eeca92c8", 12675106281628537544),
    ]
    pickle_unseeded = BlockHasher(algo="sha256")
    assert _hex_and_keys(pickle_unseeded)[0] == (
        "fe8fa5dda3210d0ca2031e37cbe3b001186773cd1c710beb2d45fcb51d434798",
        3262291359910021016,
    )
    assert _hex_and_keys(pickle_unseeded, "tenant-a")[0] == (
        "255b152c89e763273cf1498dce0dfd4efdf44000fe683cd2af1845b5b8426a35",
        12616911002861201973,
    )
    # KV events may carry the 32 raw bytes: folded to the same integer
    raw = pickle_unseeded.chain(TOKENS, block_size=16)[0]
    assert event_key(raw) == event_key(int.from_bytes(raw, "big")) == 3262291359910021016
    assert BlockHasher().chain(TOKENS[:15], block_size=16) == []
