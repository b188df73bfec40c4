"""Several writes, state and documents, in one Postgres transaction, and its commit token.

A commit token (``2:<xid>:<lsn>``) names the writing transaction and a WAL position at or past
its commit record. Every index watermark above the xid includes the commit, so a reader
holding the token knows when an index alone can answer; a read replica that has replayed
past the LSN has the commit. Tokens of the first form (``1:<xid>``) are still accepted; they
carry no LSN, so a read given one goes to the primary.
"""

from __future__ import annotations

import re

from unidb.errors import InvalidInput, UnidbError
from unidb.indexing.pg import Connection

_TOKEN = re.compile(r"^(?:1:(\d{1,20})|2:(\d{1,20}):([0-9A-F]{1,8}/[0-9A-F]{1,8}))$")


def current_xid(conn: Connection) -> int:
    """The id of the transaction open on ``conn`` (which must have written)."""
    row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
    assert row is not None
    return int(row[0])


def wal_position(conn: Connection) -> str:
    """The primary's WAL write position: past every commit acknowledged so far."""
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def commit_token(xid: int, lsn: str) -> str:
    return f"2:{xid}:{lsn}"


def _parsed(token: str, field: str) -> re.Match[str]:
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise InvalidInput("is not a commit token (as returned by a transaction)", field=field)
    return match


def token_xid(token: str, *, field: str = "after") -> int:
    match = _parsed(token, field)
    return int(match.group(1) or match.group(2))


def token_lsn(token: str, *, field: str = "after") -> str | None:
    """The token's WAL position, or None for a token of the first form."""
    return _parsed(token, field).group(3)


def at_op(error: UnidbError, index: int) -> UnidbError:
    """``error`` from the ``index``-th operation, its field and message saying so."""
    field = f"ops[{index}]" + (f".{error.field}" if error.field else "")
    shifted = type(error)(f"ops[{index}]: {error.message}", field=field)
    return shifted
