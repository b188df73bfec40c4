"""jobs: long work (index builds) with status and progress, kept across restarts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A running job's process touches heartbeat_at while it works; a job whose heartbeat
    # stopped belongs to a process that died, and is failed rather than left running.
    op.execute(
        """
        CREATE TABLE unidb.jobs (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            collection_id   integer NOT NULL,
            collection      text NOT NULL,
            kind            text NOT NULL,
            status          text NOT NULL DEFAULT 'queued',
            progress        real NOT NULL DEFAULT 0,
            error           text,
            params          jsonb NOT NULL DEFAULT '{}',
            stats           jsonb NOT NULL DEFAULT '{}',
            cancel_requested boolean NOT NULL DEFAULT false,
            heartbeat_at    timestamptz,
            created_at      timestamptz NOT NULL DEFAULT now(),
            started_at      timestamptz,
            finished_at     timestamptz,
            CONSTRAINT jobs_status_known
                CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            CONSTRAINT jobs_progress_range CHECK (progress BETWEEN 0 AND 1)
        )
        """
    )
    op.execute("CREATE INDEX jobs_by_collection ON unidb.jobs (collection_id, created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE unidb.jobs")
