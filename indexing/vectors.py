"""A collection's vectors streamed out of Postgres in chunks, over binary COPY.

Every row of a collection has the same shape (a bigint key, a vector of the collection's
dimension), so each chunk of the COPY stream is parsed by numpy in one step rather than row
by row. Memory holds one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from unidb.indexing.pg import Connection

_HEADER = b"PGCOPY\n\xff\r\n\x00"
_HEADER_BYTES = len(_HEADER) + 8  # signature, flags, header extension length
_TRAILER = b"\xff\xff"


def count_vectors(conn: Connection, collection_id: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM unidb.chunks WHERE collection_id = %s AND embedding IS NOT NULL",
        (collection_id,),
    ).fetchone()
    return int(row[0]) if row else 0


def _row_dtype(dim: int) -> np.dtype[Any]:
    return np.dtype(
        [
            ("fields", ">i2"),
            ("key_bytes", ">i4"),
            ("key", ">i8"),
            ("vector_bytes", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("values", ">f4", (dim,)),
        ]
    )


def stream_vectors(
    conn: Connection,
    collection_id: int,
    dim: int,
    *,
    chunk_rows: int = 10_000,
    shard: tuple[int, int] | None = None,
    limit: int | None = None,
    keys: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(document keys int64, vectors float32 of shape (n, dim)) chunks, in key order.

    ``shard=(i, n)`` streams only the keys congruent to i modulo n; ``limit`` the first
    ``limit`` rows; ``keys`` only those documents."""
    dtype = _row_dtype(dim)
    buffer = bytearray()
    started = False
    where = "collection_id = %s AND embedding IS NOT NULL"
    params: list[Any] = [collection_id]
    if keys is not None:
        where += " AND document_key = ANY(%s::bigint[])"
        params.append([int(key) for key in keys])
    if shard is not None:
        where += " AND (document_key %% %s + %s) %% %s = %s"  # non-negative for any key
        params += [shard[1], shard[1], shard[1], shard[0]]
    query = f"SELECT document_key, embedding FROM unidb.chunks WHERE {where} ORDER BY document_key"  # noqa: S608
    if limit is not None:
        query += " LIMIT %s"
        params.append(limit)
    with conn.cursor().copy(
        f"COPY ({query}) TO STDOUT (FORMAT BINARY)",
        params,
    ) as copy:
        for data in copy:
            buffer += data
            if not started and len(buffer) >= _HEADER_BYTES:
                if not buffer.startswith(_HEADER):
                    raise ValueError("not a binary COPY stream")
                del buffer[:_HEADER_BYTES]
                started = True
            while started and len(buffer) >= dtype.itemsize * chunk_rows:
                yield _parse(buffer, dtype, chunk_rows, dim)
    if buffer.endswith(_TRAILER):
        del buffer[-len(_TRAILER) :]
    if len(buffer) % dtype.itemsize:
        raise ValueError("a vector of another dimension is in the collection")
    if buffer:
        yield _parse(buffer, dtype, len(buffer) // dtype.itemsize, dim)


def _parse(
    buffer: bytearray, dtype: np.dtype[Any], rows: int, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    size = dtype.itemsize * rows
    records = np.frombuffer(bytes(buffer[:size]), dtype=dtype)
    del buffer[:size]
    if not (
        (records["fields"] == 2).all()
        and (records["key_bytes"] == 8).all()
        and (records["vector_bytes"] == 4 + 4 * dim).all()
        and (records["dim"] == dim).all()
    ):
        raise ValueError("a vector of another dimension is in the collection")
    return records["key"].astype(np.int64), records["values"].astype(np.float32)
