"""metadata filters keep the GIN index under row-level security

Row-level security evaluates a policy before any condition that is not LEAKPROOF, so
``metadata @> …`` (jsonb_contains) could no longer be an index condition on documents, and
every filtered query read its whole collection. jsonb_contains raises no error that depends
on the values it compares, so it cannot leak a row through an error message; marking it
LEAKPROOF lets the planner use the GIN index again. Only a superuser may do so: a migrating
role that is not one leaves it as it was, with a notice (filters then scan the collection).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        DO $$ BEGIN
            IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                ALTER FUNCTION pg_catalog.jsonb_contains(jsonb, jsonb) LEAKPROOF;
            ELSE
                RAISE NOTICE 'jsonb_contains is not LEAKPROOF: metadata filters will not use '
                    'the GIN index under row-level security; a superuser can run ALTER '
                    'FUNCTION pg_catalog.jsonb_contains(jsonb, jsonb) LEAKPROOF';
            END IF;
        END $$
        """
    )


def downgrade() -> None:
    # other databases' users may rely on it too: a superuser clears it by hand if wanted
    pass
