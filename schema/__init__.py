"""The `unidb` Postgres schema: table definitions and the migrations that create them."""

from .migrate import downgrade, head_revision, upgrade
from .tables import SCHEMA, changes, chunks, collections, documents, metadata, state

__all__ = [
    "SCHEMA",
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
