"""Run the schema's Alembic migrations on a connection the caller owns."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from unidb.schema.tables import SCHEMA

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Bring the `unidb` schema up to ``revision`` inside the caller's transaction."""
    command.upgrade(_config(connection), revision)


def downgrade(connection: Connection, revision: str = "base") -> None:
    """Take the `unidb` schema down to ``revision`` (``base`` drops it all)."""
    command.downgrade(_config(connection), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def at_head(connection: Connection) -> bool:
    """Whether the schema is at the head revision; reads the version table only, so a role
    that may not migrate (the service's own, migration 0009) can ask."""
    context = MigrationContext.configure(
        connection, opts={"version_table": "alembic_version", "version_table_schema": SCHEMA}
    )
    return context.get_current_heads() == (head_revision(),)
