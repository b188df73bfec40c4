"""Table definitions of the `unidb` schema. Migrations create them; nothing calls create_all."""

from __future__ import annotations

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Identity,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import UserDefinedType


class Xid8(UserDefinedType[int]):
    """Postgres' 64-bit transaction id (``pg_current_xact_id()``)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "xid8"


SCHEMA = "unidb"

metadata = MetaData(schema=SCHEMA)

collections = Table(
    "collections",
    metadata,
    Column("tenant", Text, nullable=False, server_default=text("unidb.row_tenant()")),
    Column("id", Integer, Identity(), primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("dim", Integer, nullable=False),
    Column("metric", Text, nullable=False),
    Column("embedder", JSONB, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # a pgvector HNSW index kept on the collection's embeddings, for ANN from plain SQL
    Column("pgvector_hnsw", Boolean, nullable=False, server_default=text("false")),
    # how each document is split on upsert; NULL is one chunk per document
    Column("chunker", JSONB, nullable=True),
    # the fusion and alpha a query uses when it names none (unidb tune); NULL: the service's
    Column("query_defaults", JSONB, nullable=True),
    CheckConstraint("dim BETWEEN 1 AND 16000", name="collections_dim_range"),
    CheckConstraint("metric IN ('cosine', 'l2', 'ip')", name="collections_metric_known"),
)

documents = Table(
    "documents",
    metadata,
    Column("tenant", Text, nullable=False, server_default=text("unidb.row_tenant()")),
    Column("collection_id", Integer, primary_key=True),
    Column("id", Text, primary_key=True),
    # the document's number for chunks, the outbox and the derived indexes
    Column(
        "key",
        BigInteger,
        nullable=False,
        unique=True,
        server_default=text("nextval('unidb.document_key_blocks') << 20"),
    ),
    Column("text", Text, nullable=False, server_default=""),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # blake2b of (text, metadata, embedding): an upsert of identical content is a no-op
    Column("content_hash", LargeBinary, nullable=False),
    Column("version", BigInteger, nullable=False, server_default=text("1")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

chunks = Table(
    "chunks",
    metadata,
    Column("tenant", Text, nullable=False, server_default=text("unidb.row_tenant()")),
    Column("collection_id", Integer, primary_key=True),
    Column("document_key", BigInteger, primary_key=True),
    Column("chunk_no", Integer, primary_key=True),
    # a chunk is a span of its document's text, so text is stored once
    Column("start_char", Integer, nullable=False),
    Column("end_char", Integer, nullable=False),
    Column("embedding", Vector(), nullable=True),
)

changes = Table(
    "changes",
    metadata,
    Column("tenant", Text, nullable=False, server_default=text("unidb.row_tenant()")),
    Column("seq", BigInteger, Identity(), primary_key=True),
    # the writing transaction's id: indexers read only below the snapshot xmin
    Column("xid", Xid8, nullable=False, server_default=func.pg_current_xact_id()),
    Column("collection_id", Integer, nullable=False),
    Column("document_key", BigInteger, nullable=True),
    Column("op", Text, nullable=False),
    Column("version", BigInteger, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("op IN ('upsert', 'delete', 'drop')", name="changes_op_known"),
)

state = Table(
    "state",
    metadata,
    Column("tenant", Text, nullable=False, server_default=text("unidb.row_tenant()")),
    Column("namespace", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", JSONB, nullable=False),
    Column("version", BigInteger, nullable=False, server_default=text("1")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

prefixes = Table(
    "prefixes",
    metadata,
    Column("prefix_key", Text, primary_key=True),
    Column("tenant", Text, nullable=False, server_default=text("unidb.row_tenant()")),
    Column("collection_id", Integer, nullable=False),
    # hash of what else decides the prefix's tokens: tokenizer, template, block size, salt
    Column("shape", Text, nullable=False),
    Column("document_keys", ARRAY(BigInteger), nullable=False),
    Column("document_ids", ARRAY(Text), nullable=False),
    Column("versions", ARRAY(BigInteger), nullable=False),
    Column("token_ids", ARRAY(Integer), nullable=False),
    Column("block_hashes", ARRAY(LargeBinary), nullable=False),
    Column("cache_salt", Text, nullable=True),
    Column("hits", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_used_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

context_sessions = Table(
    "context_sessions",
    metadata,
    Column("tenant", Text, primary_key=True, server_default=text("unidb.row_tenant()")),
    Column("session", Text, primary_key=True),
    Column("collection_id", Integer, nullable=False),
    Column("shape", Text, nullable=False),
    Column("document_keys", ARRAY(BigInteger), nullable=False),
    Column("turn", Integer, nullable=False, server_default=text("0")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

outbox_followers = Table(
    "outbox_followers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("watermark", BigInteger, nullable=False, server_default=text("0")),
    # when the follower last reported: one silent past UNIDB_OUTBOX_FOLLOWER_STALE_S is
    # not waited on
    Column("seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# how far the outbox has been pruned: no row below ``horizon`` is left
outbox_horizon = Table(
    "outbox_horizon",
    metadata,
    Column("only_row", Boolean, primary_key=True, server_default=text("true")),
    Column("horizon", BigInteger, nullable=False, server_default=text("0")),
    Column("pruned_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("only_row", name="outbox_horizon_only_row_check"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("tenant", Text, nullable=False, server_default=text("unidb.row_tenant()")),
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("collection_id", Integer, nullable=False),
    Column("collection", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="queued"),
    Column("progress", Float, nullable=False, server_default=text("0")),
    Column("error", Text, nullable=True),
    Column("params", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("stats", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    # touched by the running process; a stopped heartbeat means a dead process
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    # the process ("host:pid:nonce") that runs it; a live process takes over a silent one's
    Column("owner", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    CheckConstraint(
        "status IN ('queued', 'running', 'done', 'failed', 'cancelled')", name="jobs_status_known"
    ),
)

api_keys = Table(
    "api_keys",
    metadata,
    # a key reads unidb_<id>_<secret>; only the secret's argon2 hash is kept
    Column("id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("scopes <@ ARRAY['read', 'write', 'admin']", name="api_keys_scopes_known"),
    CheckConstraint("tenant ~ '^[A-Za-z0-9_.-]{1,64}$'", name="api_keys_tenant_named"),
)

tenant_roles = Table(
    "tenant_roles",
    metadata,
    # a SQL role mapped here acts as its tenant whatever it sets unidb.tenant to
    Column("role", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
)

tenant_secrets = Table(
    "tenant_secrets",
    metadata,
    # the tenant's secret part of every engine cache salt it is given
    Column("tenant", Text, primary_key=True, server_default=text("unidb.row_tenant()")),
    Column("kv_salt", Text, nullable=False),
)
