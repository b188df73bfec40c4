"""The `unidb` Postgres schema: table definitions and the migrations that create them."""

from unidb.schema.migrate import at_head, downgrade, head_revision, upgrade
from unidb.schema.tables import SCHEMA, changes, chunks, collections, documents, metadata, state

__all__ = [
    "SCHEMA",
    "at_head",
    "changes",
    "chunks",
    "collections",
    "documents",
    "downgrade",
    "head_revision",
    "metadata",
    "state",
    "upgrade",
]
