"""Application state: JSON values under (namespace, key), versioned for compare-and-set."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from unidb.errors import Conflict, NotFound
from unidb.indexing.pg import Connection
from unidb.models import StateEntry, StateList
from unidb.service.store.json_values import encode_json


def _entry(row: tuple[Any, ...]) -> StateEntry:
    namespace, key, value, version, created_at, updated_at = row
    return StateEntry(
        namespace=namespace,
        key=key,
        value=value,
        version=version,
        created_at=created_at,
        updated_at=updated_at,
    )


def check_value(value: Any, *, max_bytes: int, field: str = "value") -> None:
    encode_json(value, field=field, max_bytes=max_bytes)


def get(conn: Connection, namespace: str, key: str) -> StateEntry:
    row = conn.execute(
        "SELECT namespace, key, value, version, created_at, updated_at FROM unidb.state WHERE namespace = %s AND key = %s",
        (namespace, key),
    ).fetchone()
    if row is None:
        raise NotFound(f"no state at {namespace}/{key}", field="key")
    return _entry(row)


def put(
    conn: Connection, namespace: str, key: str, value: Any, *, if_version: int | None
) -> StateEntry:
    """Write ``value``; with ``if_version``, only over that version (0: only a new key)."""
    if if_version is None:
        row = conn.execute(
            "INSERT INTO unidb.state AS s (namespace, key, value) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant, namespace, key) DO UPDATE"
            "   SET value = excluded.value, version = s.version + 1, updated_at = now()"
            " RETURNING namespace, key, value, version, created_at, updated_at",
            (namespace, key, Jsonb(value)),
        ).fetchone()
    elif if_version == 0:
        row = conn.execute(
            "INSERT INTO unidb.state (namespace, key, value) VALUES (%s, %s, %s)"
            " ON CONFLICT (tenant, namespace, key) DO NOTHING RETURNING namespace, key, value, version, created_at, updated_at",
            (namespace, key, Jsonb(value)),
        ).fetchone()
    else:
        row = conn.execute(
            "UPDATE unidb.state SET value = %s, version = version + 1, updated_at = now()"
            " WHERE namespace = %s AND key = %s AND version = %s RETURNING namespace, key, value, version, created_at, updated_at",
            (Jsonb(value), namespace, key, if_version),
        ).fetchone()
    if row is None:
        raise Conflict(_mismatch(conn, namespace, key, if_version), field="if_version")
    return _entry(row)


def _mismatch(conn: Connection, namespace: str, key: str, expected: int | None) -> str:
    current = conn.execute(
        "SELECT version FROM unidb.state WHERE namespace = %s AND key = %s", (namespace, key)
    ).fetchone()
    found = current[0] if current else 0
    return f"{namespace}/{key} is at version {found}, not {expected}"


def delete(conn: Connection, namespace: str, key: str, *, if_version: int | None) -> None:
    if if_version is None:
        row = conn.execute(
            "DELETE FROM unidb.state WHERE namespace = %s AND key = %s RETURNING version",
            (namespace, key),
        ).fetchone()
        if row is None:
            raise NotFound(f"no state at {namespace}/{key}", field="key")
        return
    row = conn.execute(
        "DELETE FROM unidb.state WHERE namespace = %s AND key = %s AND version = %s"
        " RETURNING version",
        (namespace, key, if_version),
    ).fetchone()
    if row is None:
        raise Conflict(_mismatch(conn, namespace, key, if_version), field="if_version")


def list_entries(
    conn: Connection, namespace: str, *, prefix: str, after: str | None, limit: int
) -> StateList:
    """Entries of ``namespace`` whose key starts with ``prefix``, in key order, after ``after``."""
    rows = conn.execute(
        "SELECT namespace, key, value, version, created_at, updated_at FROM unidb.state"
        " WHERE namespace = %s AND starts_with(key, %s) AND key > %s"
        " ORDER BY key LIMIT %s",
        (namespace, prefix, after or "", limit + 1),
    ).fetchall()
    entries = [_entry(row) for row in rows[:limit]]
    next_after = entries[-1].key if len(rows) > limit else None
    return StateList(entries=entries, next_after=next_after)
