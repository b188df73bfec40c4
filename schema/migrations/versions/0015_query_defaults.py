"""A collection's query defaults: the fusion and alpha its queries use unless they say

NULL (every existing collection) is the service's defaults, as before.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE unidb.collections ADD COLUMN query_defaults jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE unidb.collections DROP COLUMN query_defaults")
