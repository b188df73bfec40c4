"""Tenants' SQL roles: a Postgres role that reads its tenant's rows and nothing else."""

from __future__ import annotations

from psycopg import sql

from unidb.errors import InvalidInput, NotFound
from unidb.indexing.pg import Connection
from unidb.service.auth.keys import check_tenant

# what a tenant's SQL role may read; row-level security narrows each to its tenant
# (tenant_roles: its own mapping only, which unidb.current_tenant() reads)
READABLE = ("collections", "documents", "chunks", "state", "tenant_roles")


def grant_sql_role(conn: Connection, role: str, tenant: str) -> None:
    """Let the existing Postgres ``role`` read ``tenant``'s collections, documents and state
    (and call unidb.search_*) — whatever it sets unidb.tenant to."""
    check_tenant(tenant)
    flags = conn.execute(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = %s", (role,)
    ).fetchone()
    if flags is None:
        raise NotFound(
            f"no Postgres role {role!r}; create it first (CREATE ROLE ...)", field="role"
        )
    if flags[0]:
        raise InvalidInput(
            f"role {role!r} is a superuser or bypasses row-level security", field="role"
        )
    conn.execute(
        "INSERT INTO unidb.tenant_roles (role, tenant) VALUES (%s, %s)"
        " ON CONFLICT (role) DO UPDATE SET tenant = excluded.tenant",
        (role, tenant),
    )
    name = sql.Identifier(role)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA unidb TO {}").format(name))
    tables = sql.SQL(", ").join(sql.Identifier("unidb", t) for t in READABLE)
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tables, name))
