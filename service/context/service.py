"""The context subsystem of one process: tokenizers, block hasher, KV-event subscribers and
the registry's outbox follower."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from psycopg_pool import ConnectionPool, PoolClosed

from unidb.errors import InvalidInput, NotFound, TooManyRequests
from unidb.indexing.pg import Connection
from unidb.models import (
    ContextRequest,
    ContextResponse,
    EngineCheck,
    EngineChecks,
    HashSettings,
    PrefixList,
    QueryRequest,
    QueryResponse,
    WarmRequest,
    WarmResult,
)
from unidb.service.config import Settings
from unidb.service.context import registry
from unidb.service.context.builder import ContextBuilder, Passage
from unidb.service.context.hashing import BlockHasher
from unidb.service.context.kv_events import Residency, Subscriber
from unidb.service.context.probe import check_engine
from unidb.service.context.registry import invalidate
from unidb.service.context.tokenizer import Tokenizers
from unidb.service.context.warmup import warm
from unidb.service.store import catalog

if TYPE_CHECKING:
    from unidb.service.db.database import Database
    from unidb.service.metrics import Metrics
    from unidb.service.outbound import Outbound

log = logging.getLogger("unidb.context")


class ContextService:
    def __init__(self, settings: Settings, pool: ConnectionPool[Connection]) -> None:
        self.pool = pool
        self.interval_s = settings.tailer_interval_s
        self.tokenizers = Tokenizers(
            settings.tokenizers,
            allow_paths=settings.tokenizer_paths,
            dirs=settings.tokenizer_dirs,
            cache_size=settings.tokenizer_cache_size,
        )
        self.hasher = BlockHasher(
            algo=settings.kv_hash_algo,
            seed=settings.kv_hash_seed,
            salt_style=settings.kv_salt_style,
        )
        self.residency = Residency()
        self.builder = ContextBuilder(
            self.tokenizers,
            self.hasher,
            self.residency,
            default_max_tokens=settings.context_max_tokens,
            max_tokens_limit=settings.context_max_tokens_limit,
            prefixes_per_tenant=settings.prefix_max_per_tenant,
            sessions_per_tenant=settings.session_max_per_tenant,
            follows_engines=bool(settings.kv_engines) and settings.context_follow_residency,
        )
        self.subscribers = [
            Subscriber(
                engine.name,
                self.residency,
                endpoint=engine.events,
                replay_endpoint=engine.replay,
                topic=engine.topic,
                data_parallel_size=engine.data_parallel_size,
            )
            for engine in settings.kv_engines
        ]
        self.kv_engines = list(settings.kv_engines)
        for engine in self.kv_engines:
            if engine.tokenizer not in (None, "minilm", *settings.tokenizers):
                raise ValueError(
                    f"UNIDB_KV_ENGINES: {engine.name!r} names tokenizer {engine.tokenizer!r}, "
                    "which is neither minilm nor in UNIDB_TOKENIZERS"
                )
        # a request that names no tokenizer gets the engine's: its tokens are the engine's
        self.default_tokenizer = next(
            (e.tokenizer for e in self.kv_engines if e.tokenizer is not None), "minilm"
        )
        self._probing = threading.Lock()  # one engine check at a time: each sends prompts
        self._stop = threading.Event()
        self._follower = threading.Thread(target=self._follow, name="unidb-prefixes", daemon=True)

    def start(self) -> None:
        for subscriber in self.subscribers:
            subscriber.start()
        self._follower.start()

    def invalidate_now(self) -> int:
        """One pass of the registry's outbox follower; returns the prefixes dropped."""
        with self.pool.connection() as conn:
            return invalidate(conn)

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.invalidate_now()
            except PoolClosed:
                return  # the engine is shutting down
            except Exception:
                log.exception("prefix registry pass failed; retrying")

    def close(self) -> None:
        self._stop.set()
        if self._follower.is_alive():
            self._follower.join()
        for subscriber in self.subscribers:
            subscriber.close()

    def build(
        self,
        db: Database,
        query: Callable[[str, QueryRequest], QueryResponse],
        request: ContextRequest,
        metrics: Metrics,
    ) -> ContextResponse:
        """Retrieve with ``query``, then lay the hits out as a prompt and register it."""
        tokenizer = request.tokenizer or self.default_tokenizer
        request = request.model_copy(update={"tokenizer": tokenizer})
        # refused before any search
        self.tokenizers.get(tokenizer)
        self.builder.max_tokens(request)
        found = query(
            request.collection,
            QueryRequest(
                text=request.query,
                k=request.k,
                mode=request.mode,
                filter=request.filter,
                consistency=request.consistency,
                after=request.after,
                passages=1,
            ),
        )
        # a chunked collection's hits come with their best passage: laid out in place of
        # the document, except in a session (whose later turns reload whole documents)
        best = (
            {
                hit.id: Passage(hit.passages[0].start, hit.passages[0].end, hit.text)
                for hit in found.hits
                if hit.passages
            }
            if request.session is None
            else None
        )
        with db.transaction() as conn:
            row = catalog.get(conn, request.collection)
            built = self.builder.build(
                conn, row, request, [hit.id for hit in found.hits], passages=best
            )
        metrics.context_tokens.inc(len(built.token_ids))
        metrics.context_cached_tokens.inc(built.cached_tokens)
        return built

    def list_prefixes(
        self, conn: Connection, collection: str | None = None, *, limit: int = 100
    ) -> PrefixList:
        collection_id = catalog.get(conn, collection).id if collection else None
        return PrefixList(
            prefixes=registry.list_prefixes(conn, collection_id=collection_id, limit=limit)
        )

    def check_engines(self, outbound: Outbound) -> EngineChecks:
        """Probe each followed engine: do unidb's block keys and tokens match its own?
        One check runs at a time; another asked for meanwhile gets a 429."""
        if not self._probing.acquire(blocking=False):
            raise TooManyRequests("an engine check is running already; ask again when it ends")
        try:
            return self._check_engines(outbound)
        finally:
            self._probing.release()

    def _check_engines(self, outbound: Outbound) -> EngineChecks:
        checks = []
        for engine, subscriber in zip(self.kv_engines, self.subscribers, strict=True):
            if engine.url is None:
                configured = HashSettings(algo=self.hasher.algo, seed=self.hasher.seed,
                                          salt_style=self.hasher.salt_style)  # fmt: skip
                checks.append(EngineCheck(name=engine.name, configured=configured,
                                          detail="no url: unidb cannot send it a probe"))  # fmt: skip
                continue
            upstream = outbound.resolve(engine.name, field="engine")
            for _ in range(50):  # a moment for its event stream to connect, if it just started
                if subscriber.connections:
                    break
                time.sleep(0.1)
            tokenizer = self.tokenizers.get(engine.tokenizer or self.default_tokenizer)
            checks.append(check_engine(upstream, subscriber, self.hasher, tokenizer))
        return EngineChecks(engines=checks)

    def check_engines_at_start(self, outbound: Outbound) -> None:
        """Probe the engines with a url once their event streams connect, in the
        background, and say in the log whether their block keys match: a mismatch would
        otherwise only show as cached_tokens of 0 forever."""

        followed = [s for s, e in zip(self.subscribers, self.kv_engines, strict=True) if e.url]
        probed = {s.name for s in followed}

        def run() -> None:
            for _ in range(300):  # up to 30 s for their event streams to connect
                if all(s.connections for s in followed):
                    break
                if self._stop.wait(0.1):
                    return
            try:
                with self._probing:
                    checks = self._check_engines(outbound).engines
                for check in checks:
                    if check.name not in probed:
                        continue
                    if check.matches:
                        log.info("engine %s: %s (%s)", check.name, check.detail, check.found)
                    else:
                        log.warning("engine %s: %s (found %s; configured %s)", check.name,
                                    check.detail, check.found, check.configured)  # fmt: skip
            except Exception:
                log.exception("probing the KV engines failed")

        if any(engine.url for engine in self.kv_engines):
            threading.Thread(target=run, name="unidb-engine-check", daemon=True).start()

    def warm_prefix(
        self, db: Database, outbound: Outbound, prefix_key: str, request: WarmRequest
    ) -> WarmResult:
        if (request.engine is None) == (request.engine_url is None):
            raise InvalidInput("give one of engine (a name) or engine_url", field="engine")
        field = "engine" if request.engine is not None else "engine_url"
        # only a listed server, checked before anything else is done
        upstream = outbound.resolve(request.engine or request.engine_url or "", field=field)
        with db.transaction() as conn:
            found = registry.get(conn, prefix_key)
        if found is None:
            raise NotFound(f"no prefix {prefix_key!r}", field="prefix_key")
        # the engine call holds no database connection
        model, prompt_tokens, cached = warm(
            upstream,
            found.token_ids,
            model=request.model,
            cache_salt=found.cache_salt,
            field=field,
        )
        return WarmResult(
            prefix_key=prefix_key,
            engine=upstream.name,
            engine_url=request.engine_url,
            model=model,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
        )
