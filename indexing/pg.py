"""The one spelling of a psycopg connection and pool, for type annotations everywhere."""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg
from psycopg_pool import ConnectionPool

Connection: TypeAlias = psycopg.Connection[Any]
Pool: TypeAlias = ConnectionPool[Connection]
