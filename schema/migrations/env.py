"""Alembic environment: migrations run on the connection handed in by `unidb.schema.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, text

from unidb.schema.tables import SCHEMA, metadata


def _run(connection: Connection) -> None:
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table="alembic_version",
        version_table_schema=SCHEMA,
        include_schemas=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url, or run migrations through `unidb migrate`")
    with create_engine(url).begin() as owned:
        _run(owned)
