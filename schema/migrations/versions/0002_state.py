"""application state: JSON values under (namespace, key) with a version for compare-and-set

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE unidb.state (
            namespace   text COLLATE "C" NOT NULL,
            key         text COLLATE "C" NOT NULL,
            value       jsonb NOT NULL,
            version     bigint NOT NULL DEFAULT 1,
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (namespace, key)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE unidb.state")
