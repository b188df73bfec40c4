"""What an index may answer for a query: the keys a filter admits, and the keys changed
since the index's watermark (masked in its answer and scored from their current rows)."""

from __future__ import annotations

import numpy as np
from psycopg import sql

from unidb.indexing.outbox import changed_since
from unidb.indexing.pg import Connection
from unidb.service.query_stages import note_changed
from unidb.service.search.filters import CompiledFilter
from unidb.service.store.catalog import CollectionRow


def admitted_keys(conn: Connection, collection: CollectionRow, where: CompiledFilter) -> np.ndarray:
    """The keys of the collection's documents that ``where`` admits, as int64."""
    statement = sql.SQL(
        "SELECT d.key FROM unidb.documents d WHERE d.collection_id = {} AND {}"
    ).format(sql.Literal(collection.id), where.expression)
    rows = conn.execute(statement, where.params).fetchall()
    return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))


def changed_keys(conn: Connection, collection: CollectionRow, *, since: int) -> set[int]:
    """The documents written or deleted by transactions at or past ``since`` that this
    transaction sees: what an index with that watermark does not hold as Postgres has it."""
    keys = {
        change.document_key
        for change in changed_since(conn, collection.id, since=since)
        if change.document_key is not None
    }
    note_changed(len(keys))
    return keys
