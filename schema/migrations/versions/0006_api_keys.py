"""api_keys: bearer keys by tenant and scope, stored only as argon2 hashes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A key reads "unidb_<id>_<secret>": the id finds the row, the secret is checked against
    # its argon2 hash. The secret itself is printed once and never stored.
    op.execute(
        """
        CREATE TABLE unidb.api_keys (
            id          text PRIMARY KEY,
            tenant      text NOT NULL,
            scopes      text[] NOT NULL,
            secret_hash text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            revoked_at  timestamptz,
            CONSTRAINT api_keys_scopes_known CHECK (scopes <@ ARRAY['read', 'write', 'admin']),
            CONSTRAINT api_keys_tenant_named CHECK (tenant ~ '^[A-Za-z0-9_.-]{1,64}$')
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE unidb.api_keys")
