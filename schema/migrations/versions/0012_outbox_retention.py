"""outbox retention: followers say when they last reported, and the pruned horizon is kept

Every follower of the outbox (each data directory's indexes, the prefix registry) reports
its watermark with ``seen_at``; rows below the lowest watermark of the followers seen
recently are pruned, and ``outbox_horizon`` records how far: a follower that finds its
watermark below it rebuilds from the tables.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SERVICE = "unidb_service"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE unidb.outbox_followers ADD COLUMN seen_at timestamptz NOT NULL DEFAULT now()"
    )
    op.execute(
        """
        CREATE TABLE unidb.outbox_horizon (
            only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
            horizon   bigint NOT NULL DEFAULT 0,
            pruned_at timestamptz
        )
        """
    )
    op.execute("INSERT INTO unidb.outbox_horizon (only_row) VALUES (true)")
    op.execute(f"ALTER TABLE unidb.outbox_horizon OWNER TO {SERVICE}")
    # a collection's changes since a watermark (each strong query, each lag count) without
    # reading every other collection's
    op.execute("CREATE INDEX changes_collection_xid ON unidb.changes (collection_id, xid)")


def downgrade() -> None:
    op.execute("DROP INDEX unidb.changes_collection_xid")
    op.execute("DROP TABLE unidb.outbox_horizon")
    op.execute("ALTER TABLE unidb.outbox_followers DROP COLUMN seen_at")
