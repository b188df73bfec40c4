"""row-level security binds the service on every tenant table, and the service can log in

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# the tables whose every row belongs to one tenant (migration 0007)
OWNED = (
    "collections",
    "documents",
    "chunks",
    "changes",
    "state",
    "jobs",
    "prefixes",
    "context_sessions",
    "tenant_secrets",
)
# 0007 left these unforced, so their owner (the service) skipped their policy
BULK = ("documents", "chunks", "changes")
# Each sub-select is an InitPlan: the tenant is read once per statement, not once per row
# (a bare call runs the SQL function, and its look-up in tenant_roles, for every row).
TENANT_ROWS = "(SELECT unidb.current_tenant()) = '*' OR tenant = (SELECT unidb.current_tenant())"
PER_ROW = "tenant = unidb.current_tenant() OR unidb.current_tenant() = '*'"


def upgrade() -> None:
    for table in OWNED:
        op.execute(
            f"ALTER POLICY tenant_rows ON unidb.{table}"
            f" USING ({TENANT_ROWS}) WITH CHECK ({TENANT_ROWS})"
        )
    # The service owns these tables (it builds and drops their indexes), so FORCE is what
    # makes their policy bind it; its writes load through INSERT, since Postgres refuses
    # COPY FROM into a table whose policy binds the writer.
    for table in BULK:
        op.execute(f"ALTER TABLE unidb.{table} FORCE ROW LEVEL SECURITY")
    # Embedded Postgres connects as unidb_service; on another server an operator gives it a
    # password (or grants it to a login role) to run the service without a superuser. A
    # migrating role that may not alter it leaves it as it was.
    op.execute(
        """
        DO $$ BEGIN
            IF NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = 'unidb_service') THEN
                ALTER ROLE unidb_service LOGIN;
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'role unidb_service stays NOLOGIN: connect as a role granted it';
        END $$
        """
    )
    # so a service that may not migrate can tell that the schema is at its head
    op.execute("GRANT SELECT ON unidb.alembic_version TO unidb_service")


def downgrade() -> None:
    # unidb_service keeps LOGIN: roles belong to the cluster, and 0007 leaves it in place too
    op.execute("REVOKE SELECT ON unidb.alembic_version FROM unidb_service")
    for table in BULK:
        op.execute(f"ALTER TABLE unidb.{table} NO FORCE ROW LEVEL SECURITY")
    for table in OWNED:
        op.execute(
            f"ALTER POLICY tenant_rows ON unidb.{table} USING ({PER_ROW}) WITH CHECK ({PER_ROW})"
        )
