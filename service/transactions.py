"""Several writes, state and documents, in one Postgres transaction, and its commit token.

A commit token names the writing transaction (``1:<xid>``). Every index watermark above that
xid includes the commit, so a reader holding the token knows when an index alone can answer.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from unidb.errors import InvalidInput, UnidbError

Connection = psycopg.Connection[Any]

_TOKEN = re.compile(r"^1:(\d{1,20})$")


def current_token(conn: Connection) -> str:
    """The token of the transaction open on ``conn`` (which must have written)."""
    row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
    assert row is not None
    return f"1:{row[0]}"


def token_xid(token: str, *, field: str = "after") -> int:
    match = _TOKEN.match(token)
    if match is None:
        raise InvalidInput("is not a commit token (as returned by a transaction)", field=field)
    return int(match.group(1))


def at_op(error: UnidbError, index: int) -> UnidbError:
    """``error`` from the ``index``-th operation, its field and message saying so."""
    field = f"ops[{index}]" + (f".{error.field}" if error.field else "")
    shifted = type(error)(f"ops[{index}]: {error.message}", field=field)
    return shifted
