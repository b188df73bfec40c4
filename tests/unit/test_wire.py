"""Wire encodings: base64 embeddings (packed by the SDK, unpacked by the server), commit
tokens, and Postgres binary COPY payloads."""

from __future__ import annotations

import base64
import struct
from typing import Any

import numpy as np
import pytest

from unidb.errors import InvalidInput, NotFound
from unidb.service.store.commit_tokens import at_op, commit_token, token_lsn, token_xid
from unidb.service.store.copy_payload import SIGNATURE, chunks_payload, documents_payload
from unidb.service.store.documents import _unpacked
from unidb.vector_encoding import pack


def test_embeddings_travel_as_little_endian_float32() -> None:
    values = [0.5, -1.0, 2.0, 3.25]
    expected = base64.b64encode(struct.pack("<4f", *values)).decode()
    assert pack(values) == expected
    assert pack(np.asarray(values, dtype=">f8")) == expected
    assert _unpacked(expected, "documents[0].embedding").tolist() == values
    # nothing to pack, or nothing the SDK can pack: passed on for the server to judge
    assert pack(None) is None
    assert pack(expected) == expected
    assert pack(["x"]) == ["x"]
    assert _unpacked([1.0, 2.0], "f") == [1.0, 2.0]


@pytest.mark.parametrize(
    ("packed", "message"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"\x00" * 5).decode(), "whole float32"),
    ],
)
def test_bad_base64_embeddings_name_their_field(packed: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as refused:
        _unpacked(packed, "documents[3].embedding")
    assert refused.value.field == "documents[3].embedding"


def test_commit_tokens_round_trip() -> None:
    token = commit_token(123456789, "0/16B3748")
    assert token == "2:123456789:0/16B3748"
    assert token_xid(token) == 123456789 and token_lsn(token) == "0/16B3748"
    # the first form: no WAL position, so reads go to the primary
    assert token_xid("1:42") == 42 and token_lsn("1:42") is None


@pytest.mark.parametrize(
    "token", ["", "3:1", "1:", "1:x", "2:1", "2:1:0/zz", "1:" + "9" * 21, " 1:1", "2:1:0/1\n"]
)
def test_malformed_commit_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidInput, match="not a commit token") as refused:
        token_xid(token, field="ops[0].after")
    assert refused.value.field == "ops[0].after"
    with pytest.raises(InvalidInput):
        token_lsn(token)


def test_errors_inside_a_transaction_name_the_operation() -> None:
    shifted = at_op(InvalidInput("must be an object", field="filter"), 2)
    assert isinstance(shifted, InvalidInput)
    assert (shifted.field, shifted.message) == ("ops[2].filter", "ops[2]: must be an object")
    assert at_op(NotFound("no collection"), 0).field == "ops[0]"


def _copy_rows(payload: bytes) -> list[list[bytes | None]]:
    """Rows of a binary COPY payload, each field's raw bytes (None for NULL)."""
    assert payload.startswith(SIGNATURE) and payload.endswith(b"\xff\xff")
    at, rows = len(SIGNATURE), []
    while True:
        (fields,) = struct.unpack_from("!h", payload, at)
        at += 2
        if fields == -1:
            assert at == len(payload)
            return rows
        row: list[bytes | None] = []
        for _ in range(fields):
            (length,) = struct.unpack_from("!i", payload, at)
            at += 4
            if length == -1:
                row.append(None)
            else:
                row.append(payload[at : at + length])
                at += length
        rows.append(row)


def _int(raw: Any) -> int:
    return int.from_bytes(raw, "big", signed=True)


def test_documents_payload_is_binary_copy() -> None:
    payload = documents_payload(
        7, [1, 2**40], [b"a", "é".encode()], [b"", b"text"], [b"{}", b'{"x":1}'], [b"h1", b"h2"]
    )
    rows = _copy_rows(payload)
    assert [[_int(r[0]), _int(r[1]), *r[2:]] for r in rows] == [
        [7, 1, b"a", b"", b"\x01{}", b"h1"],
        [7, 2**40, "é".encode(), b"text", b'\x01{"x":1}', b"h2"],
    ]
    assert _copy_rows(documents_payload(7, [], [], [], [], [])) == []


def test_chunks_payload_is_binary_copy_with_pgvector_values() -> None:
    vectors = np.asarray([[1.0, 2.0], [0.0, 0.0], [-0.5, 4.0]], dtype=np.float32)
    payload = chunks_payload(
        3,
        np.asarray([10, 11, 11]),
        np.asarray([0, 0, 1]),
        np.asarray([0, 0, 4]),
        np.asarray([5, 6, 9]),
        vectors,
        np.asarray([True, False, True]),
    )
    rows = _copy_rows(payload)
    # rows with a vector first, then those without
    assert [[_int(f) for f in row[:5]] for row in rows] == [
        [10, 0, 3, 0, 5],
        [11, 1, 3, 4, 9],
        [11, 0, 3, 0, 6],
    ]
    assert rows[2][5] is None
    for row, expected in ((rows[0], [1.0, 2.0]), (rows[1], [-0.5, 4.0])):
        vector = row[5]
        assert vector is not None
        dim, unused = struct.unpack_from("!hh", vector)
        assert (dim, unused) == (2, 0)
        assert list(struct.unpack_from("!2f", vector, 4)) == expected
