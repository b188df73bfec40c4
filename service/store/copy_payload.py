"""Postgres binary COPY payloads built in bulk, without a Python call per field.

The binary format: a signature, then per row a 16-bit field count and, per field, a 32-bit
length (-1 for NULL) and the value in network byte order; a 16-bit -1 ends the data.
Fixed-width rows are laid out as numpy structured arrays and written in one piece.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"

_int4 = struct.Struct("!i").pack
_row_head = struct.Struct("!hii").pack  # field count, length 4, an int4
_int8_field = struct.Struct("!iq").pack  # length 8, an int8


def documents_payload(
    collection_id: int,
    keys: Sequence[int],
    ids: Sequence[bytes],
    texts: Sequence[bytes],
    metadata_json: Sequence[bytes],
    content_hashes: Sequence[bytes],
) -> bytes:
    """Rows of (collection_id int4, key int8, id text, text text, metadata jsonb, content_hash
    bytea); ids and texts come UTF-8 encoded."""
    head = _row_head(6, 4, collection_id)
    parts: list[bytes] = [SIGNATURE]
    append = parts.append
    for key, id_bytes, text_bytes, metadata, content_hash in zip(
        keys, ids, texts, metadata_json, content_hashes, strict=True
    ):
        append(head)
        append(_int8_field(8, key))
        append(_int4(len(id_bytes)))
        append(id_bytes)
        append(_int4(len(text_bytes)))
        append(text_bytes)
        append(_int4(len(metadata) + 1))
        append(b"\x01")  # jsonb binary format version
        append(metadata)
        append(_int4(len(content_hash)))
        append(content_hash)
    append(TRAILER)
    return b"".join(parts)


def _int4_field(name: str) -> list[tuple[str, str]]:
    return [(f"{name}_len", ">i4"), (name, ">i4")]


def chunks_payload(
    collection_id: int,
    document_keys: np.ndarray,
    chunk_nos: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    vectors: np.ndarray,
    has_vector: np.ndarray,
) -> bytes:
    """Chunks, the i-th of them ``chunk_nos[i]`` of ``document_keys[i]``: (document_key int8,
    chunk_no int4, collection_id int4, start_char int4, end_char int4, embedding vector) with
    NULL where ``has_vector`` is false."""
    dim = vectors.shape[1]
    common = [
        ("fields", ">i2"),
        ("key_len", ">i4"),
        ("key", ">i8"),
        *_int4_field("chunk_no"),
        *_int4_field("collection"),
        *_int4_field("start"),
        *_int4_field("end"),
    ]
    parts = [SIGNATURE]
    for with_vector in (True, False):
        selected = has_vector if with_vector else ~has_vector
        n = int(selected.sum())
        if n == 0:
            continue
        layout = common + (
            [("vec_len", ">i4"), ("dim", ">i2"), ("unused", ">i2"), ("vec", ">f4", (dim,))]
            if with_vector
            else [("vec_len", ">i4")]
        )
        rows = np.zeros(n, dtype=np.dtype(layout))
        rows["fields"] = 6
        rows["key_len"] = 8
        rows["key"] = document_keys[selected]
        for name in ("chunk_no", "collection", "start", "end"):
            rows[f"{name}_len"] = 4
        rows["collection"] = collection_id
        rows["chunk_no"] = chunk_nos[selected]
        rows["start"] = starts[selected]
        rows["end"] = ends[selected]
        if with_vector:
            rows["vec_len"] = 4 + 4 * dim
            rows["dim"] = dim
            rows["vec"] = vectors[selected]
        else:
            rows["vec_len"] = -1
        parts.append(rows.tobytes())
    parts.append(TRAILER)
    return b"".join(parts)
