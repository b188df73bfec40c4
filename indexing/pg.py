"""The one spelling of a psycopg connection and pool, for type annotations everywhere."""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias

import psycopg
from psycopg.abc import Params
from psycopg_pool import ConnectionPool

Connection: TypeAlias = psycopg.Connection[Any]
Pool: TypeAlias = ConnectionPool[Connection]


class Fetches(Protocol):
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def fetchone(self) -> tuple[Any, ...] | None: ...


class Executor(Protocol):
    """What runs a read's statements: a connection, or a read transaction over one."""

    def execute(self, query: Any, params: Params | None = None) -> Fetches: ...
