"""Row-level security binds the service itself: the role it logs in as is no superuser, and
without a tenant named it sees no document, chunk or outbox row."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

import unidb
from unidb.models import CollectionCreate, Document
from unidb.service.auth.tenancy import SERVICE_ROLE, SERVICE_WIDE, current_tenant
from unidb.service.config import Settings
from unidb.service.engine import Engine

TABLES = ("documents", "chunks", "changes")
COUNTS = (
    "SELECT (SELECT count(*) FROM unidb.documents), (SELECT count(*) FROM unidb.chunks),"
    " (SELECT count(*) FROM unidb.changes)"
)


@contextmanager
def _as_tenant(tenant: str) -> Iterator[None]:
    token = current_tenant.set(tenant)
    try:
        yield
    finally:
        current_tenant.reset(token)


@pytest.fixture
def two_tenants(engine: Engine) -> Iterator[dict[str, int]]:
    """A collection in each of two fresh tenants, two documents each: its id by tenant."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    tenants: dict[str, int] = {}
    try:
        for letter in "ab":
            tenant = f"rls-{letter}-{uuid.uuid4().hex[:8]}"
            with _as_tenant(tenant):
                engine.create_collection(CollectionCreate(name=name, dim=2))
                engine.upsert_documents(
                    name,
                    [
                        Document(id="one", text="one", embedding=[1.0, 0.0]),
                        Document(id="two", text="two", embedding=[0.0, 1.0]),
                    ],
                )
                with engine.transaction() as conn:
                    row = conn.execute(
                        "SELECT id FROM unidb.collections WHERE name = %s", (name,)
                    ).fetchone()
                assert row is not None
                tenants[tenant] = row[0]
        yield tenants
    finally:
        for tenant in tenants:
            with _as_tenant(tenant):
                engine.delete_collection(name)


def _seen(conn: psycopg.Connection[Any], tenant: str, collections: list[int]) -> list[Any]:
    """Per table, the (collection, tenant, rows) of ``collections`` that the session sees with
    ``unidb.tenant`` set to ``tenant``."""
    conn.execute("SELECT set_config('unidb.tenant', %s, true)", (tenant,))
    return [
        conn.execute(
            f"SELECT collection_id, tenant, count(*) FROM unidb.{table}"
            " WHERE collection_id = ANY(%s) GROUP BY 1, 2 ORDER BY 1",
            (collections,),
        ).fetchall()
        for table in TABLES
    ]


def test_the_service_role_sees_no_rows_without_a_tenant(
    settings: Settings, two_tenants: dict[str, int]
) -> None:
    (a, a_id), (b, b_id) = two_tenants.items()
    ids = [a_id, b_id]
    assert settings.database_url
    # a raw session logged in as the engine's pools log in; one snapshot for every look
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        assert conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (SERVICE_ROLE, False, False)
        # service-wide, the rows are there
        assert _seen(conn, SERVICE_WIDE, ids) == [[(a_id, a, 2), (b_id, b, 2)]] * 3
        # no tenant named: no row of any tenant at all
        conn.execute("SELECT set_config('unidb.tenant', '', true)")
        assert conn.execute(COUNTS).fetchone() == (0, 0, 0)
        assert _seen(conn, "", ids) == [[]] * 3
        # one tenant named: its rows only
        assert _seen(conn, a, ids) == [[(a_id, a, 2)]] * 3
        assert _seen(conn, b, ids) == [[(b_id, b, 2)]] * 3


def test_the_pools_log_in_as_the_service_role(engine: Engine) -> None:
    for pool in (engine.pool, engine.background_pool):
        with pool.connection() as conn:
            conn.execute("RESET ROLE")  # nothing to fall back to: the login is the service's
            row = conn.execute(
                "SELECT session_user, current_user, rolsuper, rolbypassrls"
                " FROM pg_roles WHERE rolname = session_user"
            ).fetchone()
            conn.rollback()
        assert row == (SERVICE_ROLE, SERVICE_ROLE, False, False)


def test_embedded_postgres_runs_the_service_without_a_superuser(tmp_path: Path) -> None:
    with unidb.Client.embedded(tmp_path / "db") as client:
        client.create_collection("notes", dim=2)
        client.upsert("notes", [{"id": "n1", "text": "kept", "embedding": [1.0, 0.0]}])
        engine = client.backend
        assert isinstance(engine, Engine)
        with psycopg.connect(engine.dsn) as conn:
            assert conn.execute(
                "SELECT session_user, rolsuper, rolbypassrls FROM pg_roles"
                " WHERE rolname = session_user"
            ).fetchone() == (SERVICE_ROLE, False, False)
            assert conn.execute(COUNTS).fetchone() == (0, 0, 0)
            conn.execute("SELECT set_config('unidb.tenant', 'default', true)")
            assert conn.execute(COUNTS).fetchone() == (1, 1, 1)
        assert client.get("notes", "n1").text == "kept"
