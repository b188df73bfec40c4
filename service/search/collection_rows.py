"""Collection rows remembered between queries, so a query needs no catalog lookup first.

A remembered row is only a guess: every query that used one reads the collection's row
again in its last round trip, and if the collection has been dropped or re-created since
(here or by another process) the query is answered again from the catalog. A row whose
other state changed (its HNSW index built) is refreshed for the next query.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from unidb.service.store import catalog

# collections remembered per process, the least recently queried forgotten first
MAX_REMEMBERED = 4096

Key = tuple[str, str]  # tenant, collection name


class StaleCollection(Exception):
    """The remembered row no longer describes the collection: answer again."""


class CollectionRows:
    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self.limit = limit
        self._rows: OrderedDict[Key, catalog.CollectionRow] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Key) -> catalog.CollectionRow | None:
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                self._rows.move_to_end(key)
            return row

    def remember(self, key: Key, row: catalog.CollectionRow) -> catalog.CollectionRow:
        with self._lock:
            self._rows[key] = row
            self._rows.move_to_end(key)
            while len(self._rows) > self.limit:
                self._rows.popitem(last=False)
        return row

    def forget(self, key: Key) -> None:
        with self._lock:
            self._rows.pop(key, None)

    def forget_id(self, collection_id: int) -> None:
        """Forget the collection with that id (its HNSW index was built here)."""
        with self._lock:
            for key in [k for k, row in self._rows.items() if row.id == collection_id]:
                del self._rows[key]

    def forget_name(self, name: str) -> None:
        """Forget the collection ``name`` for every tenant (it was dropped here)."""
        with self._lock:
            for key in [k for k in self._rows if k[1] == name]:
                del self._rows[key]

    def check(
        self, key: Key, used: catalog.CollectionRow, rows: list[tuple[Any, ...]], remembered: bool
    ) -> None:
        """Compare the row a query used with ``rows`` (``catalog.lookup`` read at its end).
        Raises StaleCollection if a remembered row named another collection than the one
        that exists now."""
        current = catalog.found(rows, key[1]) if rows else None
        if current is None or current.id != used.id:
            self.forget(key)
            if remembered:
                raise StaleCollection(key[1])
            return
        if current != used:
            self.remember(key, current)
            if remembered and current.query_defaults != used.query_defaults:
                # the answer fused by the old defaults: answer again by the new ones
                raise StaleCollection(key[1])
