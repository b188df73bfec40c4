"""job owner: which service process runs a job, so a live one can take over a dead one's

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # "host:pid:nonce" of the process whose heartbeat keeps the job alive; only that process
    # beats it or records its end, so a process that lost a job it was slow to beat cannot
    # overwrite the result of the one that took it over
    op.execute("ALTER TABLE unidb.jobs ADD COLUMN owner text")


def downgrade() -> None:
    op.execute("ALTER TABLE unidb.jobs DROP COLUMN owner")
