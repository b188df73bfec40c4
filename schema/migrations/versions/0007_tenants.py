"""tenants: a tenant column on every tenant-owned table, enforced by row-level security

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# tables whose every row belongs to one tenant
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
# Postgres refuses COPY FROM into a table whose row-level security binds the writer, so these
# bind every role but their owner, the service. The service reaches their rows only through
# a collection id that the forced policy on collections gave it; other roles (a tenant's
# SQL role) are held to their tenant here too.
BULK = ("documents", "chunks", "changes")
NEW_COLUMN = ("collections", "documents", "chunks", "changes", "state", "jobs")
SERVICE = "unidb_service"


def upgrade() -> None:
    # The service works as unidb_service, which is no superuser (superusers skip row-level
    # security) and owns the tables, with FORCE so their policies bind the owner too. A
    # request's transaction names its tenant in `unidb.tenant`; the service's own background
    # work uses '*'. A SQL role mapped in tenant_roles is its tenant whatever it sets.
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{SERVICE}') THEN
                CREATE ROLE {SERVICE} NOLOGIN NOSUPERUSER NOBYPASSRLS;
            END IF;
        END $$
        """
    )
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT pg_has_role(current_user, '{SERVICE}', 'MEMBER') THEN
                EXECUTE format('GRANT {SERVICE} TO %I', current_user);
            END IF;
        END $$
        """
    )
    op.execute(
        """
        CREATE TABLE unidb.tenant_roles (
            role    text PRIMARY KEY,
            tenant  text NOT NULL CONSTRAINT tenant_roles_tenant_named
                        CHECK (tenant ~ '^[A-Za-z0-9_.-]{1,64}$')
        )
        """
    )
    op.execute(
        """
        CREATE FUNCTION unidb.current_tenant() RETURNS text
        LANGUAGE sql STABLE PARALLEL SAFE AS $$
            SELECT coalesce(
                (SELECT tenant FROM unidb.tenant_roles WHERE role = current_user::text),
                nullif(current_setting('unidb.tenant', true), '')
            )
        $$
        """
    )
    # what a new row records: service-wide and unset sessions write to the default tenant
    op.execute(
        """
        CREATE FUNCTION unidb.row_tenant() RETURNS text
        LANGUAGE sql STABLE PARALLEL SAFE AS $$
            SELECT CASE WHEN t IS NULL OR t = '*' THEN 'default' ELSE t END
            FROM (SELECT unidb.current_tenant() AS t) AS current
        $$
        """
    )
    # each tenant's secret part of the engine cache salt, so no tenant can compute another's
    # block hashes (the default tenant has none: a single-tenant install keeps its salts)
    op.execute(
        """
        CREATE TABLE unidb.tenant_secrets (
            tenant   text PRIMARY KEY DEFAULT 'default',
            kv_salt  text NOT NULL
        )
        """
    )
    for table in NEW_COLUMN:
        op.execute(f"ALTER TABLE unidb.{table} ADD COLUMN tenant text NOT NULL DEFAULT 'default'")
    for table in OWNED:
        op.execute(f"ALTER TABLE unidb.{table} ALTER COLUMN tenant SET DEFAULT unidb.row_tenant()")
        op.execute(f"ALTER TABLE unidb.{table} ENABLE ROW LEVEL SECURITY")
        if table not in BULK:
            op.execute(f"ALTER TABLE unidb.{table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_rows ON unidb.{table}"
            " USING (tenant = unidb.current_tenant() OR unidb.current_tenant() = '*')"
            " WITH CHECK (tenant = unidb.current_tenant() OR unidb.current_tenant() = '*')"
        )
    op.execute("ALTER TABLE unidb.collections DROP CONSTRAINT collections_name_key")
    op.execute(
        "ALTER TABLE unidb.collections ADD CONSTRAINT collections_tenant_name UNIQUE (tenant, name)"
    )
    op.execute("ALTER TABLE unidb.state DROP CONSTRAINT state_pkey")
    op.execute("ALTER TABLE unidb.state ADD PRIMARY KEY (tenant, namespace, key)")
    op.execute("ALTER TABLE unidb.tenant_roles ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE unidb.tenant_roles FORCE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY own_mapping ON unidb.tenant_roles USING (role = current_user::text)")
    op.execute(f"CREATE POLICY service_maps ON unidb.tenant_roles TO {SERVICE} USING (true)")
    # with grant option: `unidb tenants sql-role` lets a tenant's SQL role into the schema
    op.execute(f"GRANT USAGE ON SCHEMA unidb TO {SERVICE} WITH GRANT OPTION")
    op.execute(f"GRANT CREATE ON SCHEMA unidb TO {SERVICE}")
    for table in (*OWNED, "tenant_roles", "outbox_followers", "api_keys"):
        op.execute(f"ALTER TABLE unidb.{table} OWNER TO {SERVICE}")
    op.execute(f"ALTER SEQUENCE unidb.document_key_blocks OWNER TO {SERVICE}")


def downgrade() -> None:
    for table in (*OWNED, "outbox_followers", "api_keys"):
        op.execute(f"ALTER TABLE unidb.{table} OWNER TO current_user")
    op.execute("ALTER SEQUENCE unidb.document_key_blocks OWNER TO current_user")
    op.execute("ALTER TABLE unidb.state DROP CONSTRAINT state_pkey")
    op.execute("ALTER TABLE unidb.state ADD PRIMARY KEY (namespace, key)")
    op.execute("ALTER TABLE unidb.collections DROP CONSTRAINT collections_tenant_name")
    op.execute("ALTER TABLE unidb.collections ADD CONSTRAINT collections_name_key UNIQUE (name)")
    for table in OWNED:
        op.execute(f"DROP POLICY tenant_rows ON unidb.{table}")
        op.execute(f"ALTER TABLE unidb.{table} NO FORCE ROW LEVEL SECURITY")  # if forced
        op.execute(f"ALTER TABLE unidb.{table} DISABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE unidb.{table} ALTER COLUMN tenant SET DEFAULT 'default'")
    for table in NEW_COLUMN:
        op.execute(f"ALTER TABLE unidb.{table} DROP COLUMN tenant")
    op.execute("DROP FUNCTION unidb.row_tenant()")
    op.execute("DROP FUNCTION unidb.current_tenant()")
    op.execute("DROP TABLE unidb.tenant_roles")
    op.execute("DROP TABLE unidb.tenant_secrets")
    op.execute(f"REVOKE ALL ON SCHEMA unidb FROM {SERVICE} CASCADE")
