"""pgvector HNSW per collection is opted into, not built for every large collection

A collection's own HNSW index (for ANN from plain SQL) slows every write to it; FAISS
snapshots and their live segments serve ANN by default. Collections that already have one
keep it, and are marked as having opted in.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE unidb.collections ADD COLUMN pgvector_hnsw boolean NOT NULL DEFAULT false"
    )
    # every tenant's collections, for a migrating role bound by their row policy too
    op.execute("SELECT set_config('unidb.tenant', '*', true)")
    op.execute(
        "UPDATE unidb.collections SET pgvector_hnsw = true"
        " WHERE to_regclass('unidb.chunks_embedding_hnsw_c' || id) IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE unidb.collections DROP COLUMN pgvector_hnsw")
