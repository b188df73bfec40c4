"""Typed request and response models shared by the SDK, REST, CLI and agent tools."""

from __future__ import annotations

import sys
from array import array
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from . import vector_encoding
from .errors import UnidbError

__all__ = [
    "Metric",
    "QueryMode",
    "Consistency",
    "CollectionCreate",
    "EmbedderSpec",
    "IndexStatus",
    "Collection",
    "CollectionList",
    "Health",
    "Document",
    "StoredDocument",
    "UpsertRequest",
    "UpsertResult",
    "QueryRequest",
    "Hit",
    "HitScores",
    "QueryResponse",
    "DeleteResult",
    "StateEntry",
    "TransactionRequest",
    "TransactionResult",
    "StateList",
    "StatePut",
    "ContextOrder",
    "ContextTemplate",
    "ContextRequest",
    "ContextSegment",
    "ContextSession",
    "ContextResponse",
    "PrefixChunk",
    "Prefix",
    "PrefixList",
    "WarmRequest",
    "WarmResult",
    "IndexBuildRequest",
    "Job",
    "JobStatus",
]

Metric = Literal["cosine", "l2", "ip"]
Fusion = Literal["rrf", "weighted", "relative", "dbsf"]
QueryMode = Literal["hybrid", "bm25", "vector"]
Consistency = Literal["strong", "eventual"]

MAX_DIM = 16000
MAX_ID_CHARS = 512
# ceilings of the server's configurable limits (its max_k, max_query_chars)
MAX_K = 100_000
MAX_QUERY_CHARS = 1_000_000


def _no_nul(value: str) -> str:
    # Postgres text and jsonb cannot hold U+0000; reject it here rather than fail in the driver.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


# Starlette's path parameters cannot match a line break, so a name holding a control
# character could be written but never read or deleted by its URL: refused everywhere.
_ADDRESSABLE = r"^[^\x00-\x1f\x7f]+$"
DocumentId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ID_CHARS,
        pattern=_ADDRESSABLE,
        description="any text without control characters (U+0000-U+001F, U+007F)",
    ),
]


def _embedding(value: Any) -> Any:
    # Only the container is checked here; the server checks every element in bulk (finite
    # numbers, the collection's dimension), which is what keeps large batches fast.
    if isinstance(value, list | str):
        return value
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "tolist"):
        return value  # a numpy array, passed through without a copy
    raise ValueError("must be a list of numbers")


def _embedding_as_list(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


Embedding = Annotated[
    Any,
    PlainValidator(_embedding),
    PlainSerializer(_embedding_as_list, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "number"}},
                {
                    "type": "string",
                    "contentEncoding": "base64",
                    "description": "little-endian float32 values, base64-encoded",
                },
            ]
        }
    ),
]
Text = Annotated[str, AfterValidator(_no_nul)]
CollectionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EmbedderSpec(_Model):
    """Who embeds a collection's texts: ``minilm`` (all-MiniLM-L6-v2, 384-d, in-process) or
    ``openai`` (any OpenAI-compatible ``/v1/embeddings`` endpoint: vLLM, TEI, ...)."""

    kind: Literal["minilm", "openai"]
    url: Text | None = Field(
        default=None,
        description="for kind openai: the name of a server the operator lists "
        "(UNIDB_OUTBOUND_URLS), or its listed URL",
        max_length=2048,
    )
    model: Text | None = Field(default=None, max_length=256)


MAX_CHUNK_TOKENS = 2048


class ChunkerSpec(_Model):
    """How a collection splits each document on upsert. ``none``: one chunk, the whole
    document. ``tokens``: windows of ``size`` tokens, each overlapping the one before by
    ``overlap``. ``sentences``: whole sentences packed up to ``size`` tokens (a sentence
    longer than that is split as ``tokens`` would). Tokens are the embedder's word pieces
    (MiniLM's for every embedder whose tokenizer unidb does not hold)."""

    kind: Literal["none", "tokens", "sentences"] = "none"
    size: int = Field(default=256, ge=16, le=MAX_CHUNK_TOKENS, description="tokens a chunk holds")
    overlap: int = Field(
        default=32, ge=0, description="tokens a chunk repeats of the one before (tokens only)"
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkerSpec:
        if self.kind != "tokens":
            self.overlap = 0  # only token windows overlap
        elif self.overlap * 2 > self.size:
            raise ValueError(f"overlap ({self.overlap}) may be at most half of size ({self.size})")
        return self


class CollectionCreate(_Model):
    """A new collection: its name, vector dimension, distance metric, embedder and chunker."""

    name: CollectionName
    dim: int = Field(ge=1, le=MAX_DIM)
    metric: Metric = "cosine"
    embedder: EmbedderSpec | None = None
    pgvector_hnsw: bool = Field(
        default=False,
        description="also keep a pgvector HNSW index on the embeddings once the collection "
        "holds UNIDB_HNSW_MIN_ROWS vectors, for ANN from plain SQL (unidb.search_vector); it "
        "slows every write. Without it FAISS serves ANN, and SQL search is exact",
    )
    chunker: ChunkerSpec | None = Field(
        default=None,
        description="split each document into chunks, each with its own embedding and BM25 "
        "entry; queries rank chunks and return documents with their best passages. Needs "
        "the collection's embedder (default: none, one chunk per document)",
    )


MAX_RERANK_TOP_N = 200


class RerankSpec(_Model):
    """A rerank stage: the fused top ``top_n`` hits (their best passage in a chunked
    collection) sent with the query to a ``/rerank`` endpoint, and reordered by its
    scores. ``protocol``: ``cohere`` (Cohere, Jina and vLLM: ``documents`` in, ``results``
    out) or ``tei`` (Hugging Face text-embeddings-inference: ``texts`` in, a list out)."""

    kind: Literal["http"] = "http"
    url: Text = Field(
        max_length=2048,
        description="the name of a server the operator lists (UNIDB_OUTBOUND_URLS), or its "
        "listed URL; unidb calls its /rerank",
    )
    model: Text | None = Field(default=None, max_length=256)
    top_n: int = Field(
        default=50, ge=1, le=MAX_RERANK_TOP_N, description="how many fused hits are reranked"
    )
    protocol: Literal["cohere", "tei"] = "cohere"


class QueryDefaults(_Model):
    """What a collection's queries use when they name no fusion, alpha or rerank (fusion
    and alpha set by ``unidb tune`` from judgments, or by hand); a field left out is the
    service's default."""

    fusion: Fusion | None = None
    alpha: float | None = Field(default=None, ge=0.0, le=1.0)
    rerank: RerankSpec | None = Field(
        default=None, description="the rerank stage of every query that names none"
    )
    note: Text | None = Field(
        default=None, max_length=1000, description="where the setting came from (free text)"
    )


class IndexStatus(_Model):
    watermark: int = Field(description="the index holds every change below this transaction id")
    lag: int = Field(description="changes committed but not yet in the index")


class AnnStatus(_Model):
    kind: Literal["hnsw", "ivf", "cagra"]
    device: Literal["cpu", "gpu"] = Field(description="where the index was built")
    vectors: int = Field(description="vectors in the snapshot")
    watermark: int = Field(description="the snapshot holds every change below this transaction id")
    lag: int = Field(
        description="changes committed since the snapshot: its live segment holds them, and "
        "queries merge from Postgres what the live segment has not reached"
    )
    live_vectors: int = Field(
        default=0,
        description="current vectors of documents changed since the snapshot, held in the live "
        "segment of the process that answered",
    )
    live_watermark: int | None = Field(
        default=None,
        description="the live segment holds every change below this transaction id (none: "
        "this process has not served the snapshot yet)",
    )
    built_at: datetime
    job_id: int | None = None


class Collection(_Model):
    name: str
    dim: int
    metric: Metric
    embedder: EmbedderSpec | None = None
    created_at: datetime
    documents: int = Field(description="number of documents in the collection")
    vector_index: Literal["none", "building", "hnsw"] = Field(
        description="the pgvector HNSW index on this collection's embeddings"
    )
    pgvector_hnsw: bool = Field(default=False, description="whether it opted into that index")
    chunker: ChunkerSpec | None = Field(default=None, description="how documents are split")
    query_defaults: QueryDefaults | None = Field(
        default=None, description="the fusion and alpha a query uses when it names none"
    )
    bm25: IndexStatus | None = Field(default=None, description="the BM25 index, once opened")
    ann: AnnStatus | None = Field(
        default=None, description="the FAISS snapshot serving vector queries, once built"
    )


class CollectionList(_Model):
    collections: list[Collection]


class Health(_Model):
    status: Literal["ok"]


class Document(_Model):
    """A document to upsert. ``embedding`` (a list of numbers, a numpy array, or in JSON a
    base64 string of little-endian float32 values) must have the collection's dimension. The server refuses NUL characters in ids, text and metadata,
    which Postgres cannot store."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    id: DocumentId
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding: Embedding | None = None


class StoredDocument(_Model):
    id: str
    text: str
    metadata: dict[str, Any]
    embedding: list[float] | None = None
    version: int
    created_at: datetime
    updated_at: datetime


class UpsertRequest(_Model):
    documents: list[Document] = Field(min_length=1)


class UpsertResult(_Model):
    written: int = Field(description="documents inserted or changed")
    unchanged: int = Field(description="documents identical to the stored version")


class DeleteResult(_Model):
    deleted: bool


class DeleteWhere(_Model):
    """Documents to delete: those matching ``filter``, those among ``ids``, or (both given)
    those among ``ids`` that match. One of the two is required, and an empty filter, which
    matches every document, is refused: to delete every document send ``all: true``."""

    filter: dict[str, Any] | None = None
    ids: list[DocumentId] | None = Field(default=None, max_length=100_000)
    all: bool = Field(
        default=False,
        description="delete every document; an empty filter alone is refused",
    )


class DeleteCount(_Model):
    deleted: int = Field(description="documents deleted")


# measured on SciFact's train judgments (never the test ones): weighted at 0.5 beat RRF
DEFAULT_FUSION: Fusion = "weighted"
DEFAULT_ALPHA = 0.5


StateName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^[^\x00-\x1f\x7f/]+$",
        description="no '/' or control characters",
    ),
]


class StatePut(_Model):
    """A value to store. With ``if_version`` the write happens only if the stored version
    is that number (0: only if there is none yet); otherwise 409."""

    value: Any
    if_version: int | None = Field(default=None, ge=0)


class StateEntry(_Model):
    namespace: str
    key: str
    value: Any
    version: int
    created_at: datetime
    updated_at: datetime


class StateList(_Model):
    entries: list[StateEntry]
    next_after: str | None = Field(
        default=None, description="pass as ``after`` for the next page; null on the last"
    )


class PutStateOp(_Model):
    op: Literal["put_state"]
    namespace: StateName
    key: StateName
    value: Any
    if_version: int | None = Field(default=None, ge=0)


class DeleteStateOp(_Model):
    op: Literal["delete_state"]
    namespace: StateName
    key: StateName
    if_version: int | None = Field(default=None, ge=1)


class UpsertDocumentsOp(_Model):
    op: Literal["upsert_documents"]
    collection: CollectionName
    documents: list[Document] = Field(min_length=1)


class DeleteDocumentOp(_Model):
    op: Literal["delete_document"]
    collection: CollectionName
    id: DocumentId


TransactionOp = Annotated[
    PutStateOp | DeleteStateOp | UpsertDocumentsOp | DeleteDocumentOp, Field(discriminator="op")
]


class TransactionRequest(_Model):
    """Operations applied in one Postgres transaction: all of them, or none."""

    ops: list[TransactionOp] = Field(min_length=1, max_length=1000)


class TransactionResult(_Model):
    results: list[StateEntry | UpsertResult | DeleteResult]
    commit_token: str = Field(
        description="pass as ``after`` to reads and queries, from any client, to see this commit"
    )


def _unpacked_vector(value: Any) -> Any:
    """A base64 query vector (little-endian float32) as its floats; anything else as it is."""
    if not isinstance(value, str):
        return value
    try:
        raw = vector_encoding.unpack(value, "vector")
    except UnidbError as exc:
        raise ValueError(exc.message) from None
    floats = array("f")
    floats.frombytes(raw)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


MAX_EF_SEARCH = 1000
MAX_PASSAGES = 32


class QueryRequest(_Model):
    """A search over one collection.

    ``bm25`` needs ``text``; ``vector`` needs ``vector``, or ``text`` and a collection
    embedder; ``hybrid`` fuses whichever of the two it can run. ``filter`` is in unidb's
    filter language. ``consistency="strong"`` sees every write committed before the query.
    """

    text: Text | None = Field(
        default=None, max_length=MAX_QUERY_CHARS, description="at most the server's max_query_chars"
    )
    vector: Annotated[list[float] | None, BeforeValidator(_unpacked_vector)] = Field(
        default=None,
        description="the query vector: a list of floats, or base64 of its little-endian "
        "float32 bytes (what the SDK sends: a third of the JSON, decoded at once)",
    )
    k: int = Field(default=10, ge=1, le=MAX_K, description="at most the server's max_k")
    mode: QueryMode = "hybrid"
    filter: dict[str, Any] | None = None
    fusion: Fusion = DEFAULT_FUSION
    alpha: float = Field(
        default=DEFAULT_ALPHA,
        ge=0.0,
        le=1.0,
        description="weighted, relative and dbsf fusion: the vector share",
    )
    consistency: Consistency = "strong"
    after: str | None = Field(
        default=None,
        max_length=128,
        description="a commit token: the answer includes that commit, whatever the consistency",
    )
    explain: bool = Field(
        default=False, description="answer with where the query's time went (`explain`)"
    )
    passages: int = Field(
        default=3,
        ge=0,
        le=MAX_PASSAGES,
        description="in a collection with a chunker, the best chunks each hit carries",
    )
    rerank: RerankSpec | None = Field(
        default=None, description="reorder the fused hits with a cross-encoder (needs text)"
    )
    rerank_fallback: bool = Field(
        default=False,
        description="when the reranker fails, answer in fused order (reranked: false) "
        "instead of a 502/504",
    )
    ef_search: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EF_SEARCH,
        description="how wide the vector search looks: efSearch of a FAISS HNSW snapshot and "
        "of pgvector's HNSW index (default: the snapshot's own, UNIDB_HNSW_EF_SEARCH for "
        "pgvector); wider is slower and finds more of the true nearest",
    )


class HitScores(_Model):
    bm25: float | None = None
    vector: float | None = None
    fused: float | None = None
    rerank: float | None = None


class Passage(_Model):
    """A chunk of a hit's document: its number, its span of the text (character offsets,
    end exclusive), the span itself, and how each retriever scored it."""

    chunk: int
    start: int
    end: int
    text: str
    scores: HitScores


class Hit(_Model):
    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    scores: HitScores
    passages: list[Passage] | None = Field(
        default=None,
        description="in a collection with a chunker: the document's best chunks for the "
        "query, best first (the hit's scores are its best chunk's)",
    )


class QueryExplain(_Model):
    stages_ms: dict[str, float] = Field(
        description="milliseconds per stage up to building this answer: auth, parse, "
        "dispatch, connect, plan, embed, vector, bm25, delta, fuse, hydrate, commit, rerank (those "
        "that ran; return and serialise come after, in /metrics only)"
    )
    candidates: int = Field(description="how deep each retriever ranked")
    changed_since_index: int | None = Field(
        default=None,
        description="documents changed since the answering index's watermark, scored from "
        "their rows (null when no index watermark applied)",
    )
    vector_plan: str | None = Field(
        default=None,
        description="how a filtered query on a FAISS snapshot was answered: the snapshot "
        "with the filter checked on its candidates (and how many rounds), or an exact scan "
        "and why (null when no filter met a snapshot)",
    )


class QueryResponse(_Model):
    hits: list[Hit]
    exhaustive: bool = Field(
        description="true when every matching row was considered, false when an "
        "approximate (HNSW) scan ranked the vectors"
    )
    vector_index: Literal["faiss", "hnsw", "exact"] | None = Field(
        default=None,
        description="what ranked the vectors: the FAISS snapshot, pgvector's HNSW index, or "
        "an exact scan; null when no vector search ran",
    )
    explain: QueryExplain | None = Field(
        default=None, description='with "explain": true, where the time went'
    )
    reranked: bool | None = Field(
        default=None,
        description="with rerank: whether the reranker ordered the hits (false: it failed "
        "and rerank_fallback kept the fused order); null without rerank",
    )
    rerank_error: str | None = Field(
        default=None, description="why the reranker failed, when reranked is false"
    )


ContextOrder = Literal["reuse", "relevance"]


def _placeholder(name: str) -> Any:
    def check(value: str) -> str:
        if "{" + name + "}" not in value:
            raise ValueError(f"must contain the placeholder {{{name}}}")
        return _no_nul(value)

    return AfterValidator(check)


class ContextTemplate(_Model):
    """How a prompt is laid out: ``system`` first (fixed, so every prompt shares it), then
    each retrieved chunk as ``delimiter`` + ``chunk`` (placeholders ``{id}``, ``{title}``,
    ``{text}``), then ``question`` (placeholder ``{question}``) last."""

    system: Annotated[str, AfterValidator(_no_nul)] = Field(
        default="Answer the question using the context below.", max_length=20_000
    )
    delimiter: Annotated[str, AfterValidator(_no_nul)] = Field(default="\n\n", max_length=256)
    chunk: Annotated[str, _placeholder("text")] = Field(default="[{id}] {text}", max_length=2_000)
    question: Annotated[str, _placeholder("question")] = Field(
        default="\n\nQuestion: {question}\nAnswer:", max_length=2_000
    )


# vLLM refuses a cache_salt over 128 characters or holding @, /, \\ or NUL; a tenant's
# salt is its 32-character secret, a colon, then the caller's
MAX_SALT_CHARS = 64


class ContextRequest(_Model):
    """Retrieve ``k`` chunks for ``query`` and lay them out as a prompt whose prefix an LLM
    engine's KV cache can reuse, named by the engine's own block hashes.

    ``order="reuse"`` puts first the longest run of chunks already sent in that order (so the
    engine's cached prefix is reused), then the rest by (id, version); ``"relevance"`` keeps
    the ranking. ``session`` makes the context grow turn by turn: earlier chunks keep their
    place and new ones are appended. ``salt`` becomes the engine's ``cache_salt``."""

    collection: CollectionName
    query: Text = Field(
        min_length=1, max_length=MAX_QUERY_CHARS, description="at most the server's max_query_chars"
    )
    k: int = Field(default=5, ge=1, le=MAX_K, description="at most the server's max_k")
    mode: QueryMode = "hybrid"
    filter: dict[str, Any] | None = None
    template: ContextTemplate = Field(default_factory=ContextTemplate)
    tokenizer: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="a tokenizer name the server knows, or, where the server allows it "
        "(UNIDB_TOKENIZER_PATHS), the path of a tokenizer.json under UNIDB_TOKENIZER_DIRS; "
        "unset: the first UNIDB_KV_ENGINES entry's tokenizer, else minilm",
    )
    block_size: int = Field(
        default=16, ge=1, le=2048, description="the engine's KV block size (up to 2048)"
    )
    salt: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SALT_CHARS,
        pattern=r"^[^@/\\\x00]+$",
        description="the engine's cache_salt (behind the tenant's secret, when it has one): "
        f"at most {MAX_SALT_CHARS} characters, none of @ / \\ or NUL, which vLLM refuses",
    )
    order: ContextOrder = "reuse"
    session: StateName | None = None
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="the prompt's token budget, at most the server's context_max_tokens_limit; "
        "unset: the server's context_max_tokens (8192 by default)",
    )
    consistency: Consistency = "strong"
    after: str | None = Field(default=None, max_length=128, description="a commit token")


class ContextSegment(_Model):
    id: str
    version: int
    text: str = Field(description="the segment as it appears in the prompt, delimiter first")
    start_token: int
    end_token: int
    block_hashes: list[str] = Field(
        description="hashes of the segment's own full blocks, chained from the segment's start "
        "(position-independent chunk keys, for engines that reuse a chunk anywhere)"
    )
    truncated: bool = Field(
        default=False,
        description="the document was longer than the budget leaves for segments: text and "
        "tokens are its beginning, cut at a word boundary",
    )


class ContextSession(_Model):
    id: str
    turn: int
    reset: bool = Field(description="the context outgrew max_tokens and started a new prefix")
    dropped: list[str] = Field(description="ids of chunks dropped by that reset")


class ContextResponse(_Model):
    prompt: str
    prefix_key: str = Field(description="names the prompt's context part (without the question)")
    prefix_tokens: int = Field(description="tokens before the question")
    segments: list[ContextSegment]
    token_ids: list[int] = Field(description="send these as the prompt to hit the cache exactly")
    block_hashes: list[str] = Field(description="the engine's hash of each full block, hex")
    block_keys: list[int] = Field(description="the same blocks as KV events name them")
    cache_salt: str | None
    cached_tokens: int = Field(
        description="prompt tokens the best engine would report as cached "
        "(usage.prompt_tokens_details.cached_tokens): its leading resident blocks, at most "
        "one block fewer than the prompt has whole, as the engine computes the last token"
    )
    cached_tokens_by_engine: dict[str, int]
    engine_hint: str | None = Field(description="the engine holding the longest resident prefix")
    session: ContextSession | None = None


class PrefixChunk(_Model):
    id: str
    version: int


class Prefix(_Model):
    prefix_key: str
    collection: str
    chunks: list[PrefixChunk]
    token_count: int
    blocks: int
    hits: int = Field(description="times this prefix was built again after the first")
    created_at: datetime
    last_used_at: datetime


class PrefixList(_Model):
    prefixes: list[Prefix]


class WarmRequest(_Model):
    """Send a prefix to an OpenAI-compatible completions endpoint so the engine caches it.

    Give one of ``engine`` (a server's name in UNIDB_KV_ENGINES or UNIDB_OUTBOUND_URLS) or
    ``engine_url`` (the URL listed there, repeated exactly)."""

    engine: str | None = Field(default=None, min_length=1, max_length=128)
    engine_url: str | None = Field(
        default=None, min_length=1, max_length=2048, pattern=r"^https?://"
    )
    model: str | None = Field(default=None, max_length=256)


class WarmResult(_Model):
    prefix_key: str
    engine: str | None = Field(default=None, description="the listed server that was warmed")
    engine_url: str | None = Field(default=None, description="as the request gave it")
    model: str
    prompt_tokens: int
    cached_tokens: int | None = Field(description="what the engine reported as already cached")


class HashSettings(_Model):
    """How an engine hashes KV blocks (UNIDB_KV_HASH_ALGO, _SEED, _SALT_STYLE)."""

    algo: Literal["sha256", "sha256_cbor"]
    seed: str | None
    salt_style: Literal["tagged", "bare"]


class EngineCheck(_Model):
    """One followed engine, probed: whether unidb's block keys are the engine's."""

    name: str
    reachable: bool = False
    model: str | None = None
    block_size: int | None = Field(default=None, description="as the engine's event gives it")
    configured: HashSettings = Field(description="the settings unidb hashes with")
    found: HashSettings | None = Field(
        default=None, description="the settings that reproduce the engine's block hashes"
    )
    matches: bool = Field(default=False, description="configured is found: keys will match")
    tokenizer_matches: bool | None = Field(
        default=None,
        description="the engine's /tokenize of a probe prompt gives the tokens unidb's "
        "piecewise tokenization does, with the engine's tokenizer (null: no /tokenize)",
    )
    detail: str | None = None


class EngineChecks(_Model):
    engines: list[EngineCheck]


IndexKind = Literal["auto", "hnsw", "ivf", "cagra"]
IndexDevice = Literal["auto", "cpu", "gpu"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class IndexParams(_Model):
    """Build and search parameters; each kind reads the ones it uses (see each description)."""

    m: int | None = Field(default=None, ge=4, le=128, description="hnsw: graph degree")
    ef_construction: int | None = Field(default=None, ge=8, le=2000, description="hnsw")
    ef_search: int | None = Field(default=None, ge=1, le=10_000, description="hnsw, cagra")
    nlist: int | None = Field(default=None, ge=1, le=1 << 20, description="ivf: lists")
    nprobe: int | None = Field(default=None, ge=1, le=1 << 20, description="ivf: lists searched")
    graph_degree: int | None = Field(default=None, ge=8, le=256, description="cagra")


class IndexBuildRequest(_Model):
    """Build a collection's FAISS index from its vectors in Postgres, as a job.

    ``kind=auto`` picks CAGRA on a GPU, HNSW on the CPU (IVF for very large sets);
    ``device=auto`` uses a GPU when FAISS sees one and says so in the job's stats."""

    kind: IndexKind = "auto"
    device: IndexDevice = "auto"
    params: IndexParams = Field(default_factory=IndexParams)


class Job(_Model):
    id: int
    collection: str
    kind: str = Field(description="what the job does: index_build")
    status: JobStatus
    progress: float = Field(ge=0.0, le=1.0)
    error: str | None = None
    params: dict[str, Any]
    stats: dict[str, Any]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    owner: str | None = Field(
        default=None,
        description="the service process (host:pid:nonce) running it; another takes it over"
        " when this one stops beating its heartbeat",
    )
