"""Settings: read once from the environment (prefix ``UNIDB_``) and passed down."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("unidb", appauthor=False))


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _outbound_url(value: str) -> str:
    """An operator-listed base URL: http(s), a host, and nothing a request could bend
    (no userinfo, query or fragment)."""
    if any(ch in value for ch in "?#@\\") or any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError("an outbound URL has no userinfo, query, fragment, backslash or space")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an outbound URL is http:// or https:// and names a host")
    return value.rstrip("/")


OutboundUrl = Annotated[str, Field(max_length=2048), AfterValidator(_outbound_url)]
OutboundName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]


class KvEngine(BaseModel):
    """An LLM engine whose KV events unidb follows (vLLM's ``--kv-events-config``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        min_length=1, max_length=128, description="how responses and metrics name this engine"
    )
    events: str = Field(description="its ZMQ publisher, e.g. tcp://vllm:5557")
    replay: str | None = Field(default=None, description="its replay ROUTER, e.g. tcp://vllm:5558")
    topic: str = Field(default="", description="the ZMQ topic its KV events carry (empty: all)")
    data_parallel_size: int = Field(
        default=1,
        ge=1,
        le=256,
        description="its data-parallel ranks, each publishing on its own port",
    )
    url: OutboundUrl | None = Field(
        default=None,
        description="its OpenAI-compatible HTTP API, e.g. http://vllm:8000: prefix warm-up "
        "may call it, by the engine's name",
    )
    tokenizer: str | None = Field(
        default=None,
        max_length=128,
        description="the name (in UNIDB_TOKENIZERS, or minilm) of the tokenizer this engine "
        "serves: /v1/context uses the first engine's when a request names none, and "
        "GET /v1/engines checks it against the engine's /tokenize",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNIDB_", extra="forbid")

    database_url: str | None = Field(
        default=None,
        description="Postgres with pgvector; unset starts embedded Postgres under data_dir",
    )
    migration_database_url: str | None = Field(
        default=None,
        description="the role that runs migrations at start (creates the schema, the vector "
        "extension and the unidb_service role), when database_url logs in as the service's "
        "own role; unset: database_url runs them",
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="embedded Postgres (pg/), the BM25 and FAISS indexes (indexes/) live here",
    )
    log_level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = (
        Field(
            default="info",
            description="unidb's own log lines (the `--log-level` flag wins); libraries log at "
            "WARNING unless this is debug",
        )
    )
    log_format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = Field(
        default="text",
        description="text, or one JSON object per line for a log collector (`--log-format`)",
    )
    host: str = Field(
        default="127.0.0.1",
        description="the address to bind; anything but loopback turns API keys on (auth auto)",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="the port to serve on")
    workers: int = Field(
        default_factory=lambda: len(os.sched_getaffinity(0)) or 1,
        ge=1,
        le=64,
        description="processes `unidb serve` answers requests with (default: this machine's "
        "cores); one more process keeps the indexes and runs builds",
    )
    auth: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="API keys on /v1 and /mcp; auto: on unless the service binds loopback only",
    )

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values the REST API answers (names, without ports; '*' for "
        "any); empty: the bound host, and the loopback names when it is loopback",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="browser origins (scheme://host:port) that may call the API besides the "
        "service's own; a request with any other Origin header is refused",
    )
    operator_key: SecretStr | None = Field(
        default=None,
        description="the service-wide key that reads /metrics when auth is on (Bearer); tenant "
        "keys never do",
    )
    max_unauthenticated_body_bytes: int = Field(
        default=64 * 1024,
        ge=0,
        description="body bytes read from a request that carries no valid key, on the routes "
        "that need none (a keyed route refuses it before reading anything)",
    )
    key_check_concurrency: int = Field(
        default=2, ge=1, le=32, description="API key hashes verified at once (argon2 is slow)"
    )
    key_failures_allowed: int = Field(
        default=10,
        ge=1,
        description="failed key checks from one client address, or for one key id, within a "
        "minute before further ones are refused with 429 without being hashed",
    )

    replica_urls: list[str] = Field(
        default_factory=list,
        description="streaming standbys of database_url that may serve reads (JSON list)",
    )
    replica_wait_ms: int = Field(
        default=500,
        ge=0,
        le=60_000,
        description="how long a read with a commit token waits for a replica to replay it "
        "before the primary answers",
    )

    pool_min_size: int = Field(default=1, ge=1, description="connections each process keeps open")
    pool_max_size: int = Field(
        default=10, ge=1, description="connections each process opens at most"
    )
    pool_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="how long a request waits for a pooled connection (then 503)",
    )
    statement_timeout_ms: int = Field(
        default=30_000, ge=0, description="Postgres statement_timeout of a request's statements"
    )
    background_statement_timeout_ms: int = Field(
        default=0,
        ge=0,
        description="statement_timeout of background work (index builds, tailers); 0 is none, "
        "so a build of any size finishes",
    )

    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="a request body larger than this gets 413"
    )
    max_batch_documents: int = Field(
        default=10_000, ge=1, le=1 << 20, description="documents one upsert may carry"
    )
    max_text_chars: int = Field(
        default=1_000_000, ge=1, description="characters of one document's text"
    )
    max_filter_depth: int = Field(
        default=8, ge=1, description="nesting of and/or/not a metadata filter may have"
    )
    max_filter_conditions: int = Field(
        default=1_000,
        ge=1,
        le=20_000,
        description="field conditions and logical branches in one metadata filter",
    )
    max_filter_in_values: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="values in all of one filter's $in and $nin lists together",
    )
    max_k: int = Field(default=1000, ge=1, le=100_000, description="hits one query may ask for")
    max_query_chars: int = Field(
        default=10_000, ge=1, le=1_000_000, description="characters of one query's text"
    )
    max_state_bytes: int = Field(default=1024 * 1024, ge=16, description="one state value, as JSON")

    hnsw_min_rows: int = Field(
        default=10_000,
        ge=0,
        description="a collection that opted into a pgvector HNSW index (pgvector_hnsw) gets it "
        "once it holds this many vectors",
    )
    ann_auto_build_rows: int = Field(
        default=10_000,
        ge=0,
        description="a collection without a FAISS snapshot gets one built (a job, as if asked) "
        "once it holds this many vectors; below it vector search is an exact scan; 0: only "
        "when asked",
    )
    hnsw_m: int = Field(default=16, ge=2, le=100, description="pgvector HNSW: links per node")
    hnsw_ef_construction: int = Field(
        default=64, ge=4, le=1000, description="pgvector HNSW: candidates kept while building"
    )
    hnsw_ef_search: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="pgvector HNSW: candidates kept while searching (a query's ef_search wins)",
    )
    hnsw_max_scan_tuples: int = Field(
        default=20_000,
        ge=1,
        description="pgvector HNSW: tuples a filtered iterative scan visits at most",
    )

    tailer_interval_s: float = Field(
        default=0.25,
        gt=0,
        description="how often the BM25 indexes and the FAISS live segments follow the outbox",
    )
    bm25_workers: int = Field(
        default=2,
        ge=1,
        le=64,
        description="threads that apply the outbox to BM25 indexes, shared by every collection; "
        "each holds a tantivy writer (six threads, a 64 MB heap budget) only while it applies",
    )
    bm25_open_indexes: int = Field(
        default=16,
        ge=1,
        le=100_000,
        description="BM25 indexes kept open at once (a reader and a file-watcher thread each); "
        "past it the least recently used is closed, and reopens on its next use",
    )
    bm25_idle_s: float = Field(
        default=30.0, gt=0, description="a BM25 index unused this long is closed until next use"
    )
    outbox_prune_interval_s: float = Field(
        default=60.0,
        gt=0,
        description="how often each serving process reports its indexes' watermark and prunes "
        "the outbox rows every live follower has read",
    )
    outbox_follower_stale_s: float = Field(
        default=3600.0,
        gt=0,
        description="an outbox follower silent this long is logged and not waited on; its "
        "indexes rebuild from the tables if it returns below the pruned horizon",
    )
    outbox_prune_batch: int = Field(
        default=10_000, ge=1, description="outbox rows deleted per statement while pruning"
    )
    hybrid_candidates: int = Field(
        default=100, ge=1, le=10_000, description="hits taken from each retriever before fusion"
    )

    tokenizers: dict[str, Path] = Field(
        default_factory=dict,
        description="tokenizer names for /v1/context, each the path of a tokenizer.json",
    )
    tokenizer_paths: bool = Field(
        default=False,
        description="requests may name a tokenizer.json by its path, under tokenizer_dirs only",
    )
    tokenizer_dirs: list[Path] = Field(
        default_factory=list,
        description="directories whose tokenizer.json files requests may name by path (JSON "
        "list; symlinks and .. are resolved before the check)",
    )
    tokenizer_cache_size: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="tokenizers kept loaded; past it the least recently used is dropped",
    )
    context_max_tokens: int = Field(
        default=8192,
        ge=1,
        le=10_000_000,
        description="the prompt budget of a /v1/context request that names no max_tokens",
    )
    context_max_tokens_limit: int = Field(
        default=131_072,
        ge=1,
        le=10_000_000,
        description="the largest max_tokens a /v1/context request may ask for",
    )
    prefix_max_per_tenant: int = Field(
        default=10_000,
        ge=1,
        description="prefixes the registry keeps per tenant; a new one past it drops the least "
        "recently used",
    )
    session_max_per_tenant: int = Field(
        default=10_000,
        ge=1,
        description="context sessions kept per tenant; a new one past it drops the least "
        "recently used",
    )
    kv_hash_algo: Literal["sha256", "sha256_cbor"] = Field(
        default="sha256", description="the engine's --prefix-caching-hash-algo"
    )
    kv_hash_seed: str | None = Field(
        default=None, description="the engine's PYTHONHASHSEED, when it sets one"
    )
    kv_salt_style: Literal["tagged", "bare"] = Field(
        default="tagged",
        description="how block 0 carries cache_salt: tagged (vLLM >= 0.31) or bare (older)",
    )
    kv_engines: list[KvEngine] = Field(
        default_factory=list, description="engines whose KV events drive cached_tokens"
    )
    context_follow_residency: bool = Field(
        default=True,
        description="with kv_engines, lay prompts out by what the engines hold now: "
        "order=reuse walks their cached blocks first, and a session turn whose grown prompt "
        "would cost more prefill than a compact one starts the compact one",
    )
    kv_check_at_start: bool = Field(
        default=True,
        description="probe each kv_engines entry with a url at start and log whether its "
        "block hashes are unidb's (GET /v1/engines does it on demand)",
    )
    outbound_urls: dict[OutboundName, OutboundUrl] = Field(
        default_factory=dict,
        description="the only servers unidb calls for a request (OpenAI-compatible embedders, "
        "rerankers and LLM engines), by name → base URL (http or https, no userinfo, query or "
        "fragment, at most 2048 characters); kv_engines with a url are listed too",
    )
    embedder_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="how long one call to an embedding server may take"
    )
    embedder_concurrency: int = Field(
        default=8,
        ge=1,
        le=32,
        description="calls in flight to one embedding server; kept well below the 40 threads "
        "that serve requests, so a stalled embedder cannot hold them all",
    )
    embedder_wait_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="how long a call waits for a free slot at its embedding server before 503",
    )
    rerank_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="how long one call to a reranker may take (504)"
    )
    rerank_concurrency: int = Field(
        default=4,
        ge=1,
        le=32,
        description="calls in flight to one reranker; a query past them waits rerank_wait_s",
    )
    rerank_wait_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="how long a query waits for a free slot at its reranker before 503",
    )

    ann_exact_below: int = Field(
        default=2_000,
        ge=0,
        description="a filter admitting at most this many documents is answered exactly",
    )
    ann_max_delta: int = Field(
        default=50_000,
        ge=0,
        description="documents changed since the FAISS snapshot beyond which pgvector answers",
    )
    ann_rebuild_fraction: float = Field(
        default=0.1,
        ge=0,
        description="a FAISS snapshot is rebuilt when the changes since it pass this fraction "
        "of its vectors (and UNIDB_ANN_REBUILD_MIN_CHANGES); 0: only when asked",
    )
    ann_rebuild_min_changes: int = Field(
        default=1_000,
        ge=1,
        description="a FAISS snapshot is never rebuilt for fewer changes than this",
    )
    job_orphan_after_s: float = Field(
        default=30.0,
        gt=0,
        description="a job whose process has not beaten its heartbeat this long is taken over by"
        " another live service process (or by this one when it restarts)",
    )

    @property
    def auth_required(self) -> bool:
        if self.auth != "auto":
            return self.auth == "on"
        if self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name other than localhost: assume it is reachable
            return True

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pg"
