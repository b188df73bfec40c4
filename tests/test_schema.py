"""Migrations and the outbox: the schema comes and goes cleanly; every write leaves its change row."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

import unidb
from unidb.schema import downgrade, head_revision, upgrade
from unidb.service.db.pool import sqlalchemy_engine
from unidb.service.engine import Engine


def _tables(url: str) -> set[str]:
    engine = sqlalchemy_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names(schema="unidb")) - {"alembic_version"}
    finally:
        engine.dispose()


TABLES = {
    "collections",
    "documents",
    "chunks",
    "changes",
    "state",
    "prefixes",
    "context_sessions",
    "outbox_followers",
    "outbox_horizon",
    "jobs",
    "api_keys",
    "tenant_roles",
    "tenant_secrets",
}


def test_upgrade_downgrade_upgrade(scratch_database: str) -> None:
    engine = sqlalchemy_engine(scratch_database)
    try:
        with engine.begin() as connection:
            upgrade(connection)
        assert _tables(scratch_database) == TABLES
        with engine.begin() as connection:
            version = connection.execute(
                text("SELECT version_num FROM unidb.alembic_version")
            ).scalar()
            assert version == head_revision()
            downgrade(connection, "base")
        assert _tables(scratch_database) == set()
        with engine.begin() as connection:
            upgrade(connection)
            connection.execute(
                text("INSERT INTO unidb.collections (name, dim, metric) VALUES ('c', 3, 'cosine')")
            )
        assert _tables(scratch_database) == TABLES
    finally:
        engine.dispose()


def test_every_write_has_its_outbox_row_in_the_same_transaction(
    engine: Engine, collection: str
) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(collection, [{"id": "a", "embedding": [1, 0]}, {"id": "b", "embedding": [0, 1]}])
    with engine.transaction() as conn:
        (collection_id,) = conn.execute(
            "SELECT id FROM unidb.collections WHERE name = %s", (collection,)
        ).fetchone()  # type: ignore[misc]
        keys = dict(
            conn.execute(
                "SELECT id, key FROM unidb.documents WHERE collection_id = %s", (collection_id,)
            ).fetchall()
        )
    client.upsert(collection, [{"id": "a", "embedding": [1, 0]}])  # unchanged: no change row
    client.upsert(collection, [{"id": "a", "text": "new", "embedding": [1, 0]}])  # merged
    client.upsert(
        collection,
        [{"id": "c", "embedding": [1, 1]}, {"id": "a", "text": "newer", "embedding": [1, 0]}],
    )
    client.delete(collection, "b")
    with engine.transaction() as conn:
        keys.update(
            conn.execute(
                "SELECT id, key FROM unidb.documents WHERE collection_id = %s", (collection_id,)
            ).fetchall()
        )
        rows = conn.execute(
            "SELECT document_key, op, version, xid::text::bigint > 0 FROM unidb.changes"
            " WHERE collection_id = %s ORDER BY seq",
            (collection_id,),
        ).fetchall()
    by_key = {key: doc_id for doc_id, key in keys.items()}
    assert len(set(keys.values())) == 3  # every document its own key
    named = [(by_key[key], op, version, has_xid) for key, op, version, has_xid in rows]
    assert sorted(named[:2]) == [("a", "upsert", 1, True), ("b", "upsert", 1, True)]
    assert named[2] == ("a", "upsert", 2, True)
    assert sorted(named[3:5]) == [("a", "upsert", 3, True), ("c", "upsert", 1, True)]
    assert named[5:] == [("b", "delete", 1, True)]
    # the upserted document kept its key through both merges
    assert client.get(collection, "a").version == 3
    client.delete_collection(collection)
    with engine.transaction() as conn:
        last = conn.execute(
            "SELECT op FROM unidb.changes WHERE collection_id = %s ORDER BY seq DESC LIMIT 1",
            (collection_id,),
        ).fetchone()
        leftovers = conn.execute(
            "SELECT (SELECT count(*) FROM unidb.documents WHERE collection_id = %s),"
            " (SELECT count(*) FROM unidb.chunks WHERE collection_id = %s)",
            (collection_id, collection_id),
        ).fetchone()
    assert last == ("drop",)
    assert leftovers == (0, 0)


def test_failed_batch_rolls_back_documents_chunks_and_outbox(
    engine: Engine, collection: str
) -> None:
    """A failure inside the database (not caught by validation) leaves no partial batch."""
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    with engine.transaction() as conn:
        before = conn.execute("SELECT max(seq) FROM unidb.changes").fetchone()
    with pytest.raises(unidb.ServerError):
        with engine.transaction() as conn:
            from unidb.models import Document
            from unidb.service.store import catalog, documents

            row = catalog.get(conn, collection)
            documents.upsert(conn, row, [Document(id="x", embedding=[1, 0])], engine.writes.limits)
            conn.execute("SELECT 1/0")
    with engine.transaction() as conn:
        assert conn.execute("SELECT max(seq) FROM unidb.changes").fetchone() == before
    assert client.get_collection(collection).documents == 0
