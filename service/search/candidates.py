"""What an index may answer for a query: the keys a filter admits, and the keys changed
since the index's watermark (masked in its answer and scored from their current rows)."""

from __future__ import annotations

from typing import Any

import numpy as np
from psycopg import sql

from unidb.indexing.outbox import changed_since
from unidb.indexing.pg import Executor
from unidb.service.query_stages import note_changed
from unidb.service.search.filters import CompiledFilter
from unidb.service.store.catalog import CollectionRow


def admitted_keys(conn: Executor, collection: CollectionRow, where: CompiledFilter) -> np.ndarray:
    """The keys of the collection's documents that ``where`` admits, as int64."""
    statement = sql.SQL(
        "SELECT d.key FROM unidb.documents d WHERE d.collection_id = {} AND {}"
    ).format(sql.Literal(collection.id), where.expression)
    rows = conn.execute(statement, where.params).fetchall()
    return np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))


# past every watermark: such a change is masked in every index's answer
_EVERY_WATERMARK = (1 << 63) - 1


class Changes:
    """The collection's changes since the oldest watermark a query's indexes have, read
    once (with the transaction's first round trip) and handed to each index by its own."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = [(int(xid), int(key)) for xid, key in rows]

    @staticmethod
    def statement(collection: CollectionRow, since: int) -> tuple[str, tuple[int, ...]]:
        if since == 0:
            # an index not built yet (another process builds it) lacks everything, and the
            # outbox may be pruned: every current document counts as changed
            return (
                "SELECT %s::bigint, key FROM unidb.documents WHERE collection_id = %s"
                " UNION ALL SELECT %s::bigint, document_key FROM unidb.changes"
                " WHERE collection_id = %s AND op = 'delete' AND document_key IS NOT NULL",
                (_EVERY_WATERMARK, collection.id, _EVERY_WATERMARK, collection.id),
            )
        return changed_since(collection.id, since)

    def since(self, watermark: int) -> set[int]:
        """The documents changed at or past ``watermark``: what that index lacks."""
        keys = {key for xid, key in self.rows if xid >= watermark}
        note_changed(len(keys))
        return keys
