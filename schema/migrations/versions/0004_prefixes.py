"""context prefixes sent to LLM engines, context sessions, and outbox followers' watermarks

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A prefix is the context part of a prompt (head + chunks, no question) as sent to an
    # engine. `shape` hashes what else decides its tokens and hashes (tenant, tokenizer,
    # template, block size, hash settings, salt): only prefixes of one shape can share
    # cache blocks. Member documents are listed by key so a change to one finds its
    # prefixes through the GIN index.
    op.execute(
        """
        CREATE TABLE unidb.prefixes (
            prefix_key     text PRIMARY KEY,
            tenant         text NOT NULL DEFAULT 'default',
            collection_id  integer NOT NULL,
            shape          text NOT NULL,
            document_keys  bigint[] NOT NULL,
            document_ids   text[] NOT NULL,
            versions       bigint[] NOT NULL,
            token_ids      integer[] NOT NULL,
            block_hashes   bytea[] NOT NULL,
            cache_salt     text,
            hits           bigint NOT NULL DEFAULT 0,
            created_at     timestamptz NOT NULL DEFAULT now(),
            last_used_at   timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX prefixes_document_keys ON unidb.prefixes USING gin (document_keys)")
    op.execute(
        "CREATE INDEX prefixes_by_first_chunk"
        " ON unidb.prefixes (collection_id, shape, (document_keys[1]))"
    )
    op.execute(
        """
        CREATE TABLE unidb.context_sessions (
            tenant         text NOT NULL DEFAULT 'default',
            session        text COLLATE "C" NOT NULL,
            collection_id  integer NOT NULL,
            shape          text NOT NULL,
            document_keys  bigint[] NOT NULL,
            turn           integer NOT NULL DEFAULT 0,
            updated_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant, session)
        )
        """
    )
    # each process-independent follower of the outbox keeps its watermark here, moved in
    # the same transaction as what it applied
    op.execute(
        """
        CREATE TABLE unidb.outbox_followers (
            name       text PRIMARY KEY,
            watermark  bigint NOT NULL DEFAULT 0
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE unidb.outbox_followers")
    op.execute("DROP TABLE unidb.context_sessions")
    op.execute("DROP TABLE unidb.prefixes")
