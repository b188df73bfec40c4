"""The context subsystem of one process: tokenizers, block hasher, KV-event subscribers and
the registry's outbox follower."""

from __future__ import annotations

import logging
import threading
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed

from unidb.service.config import Settings
from unidb.service.context.builder import ContextBuilder
from unidb.service.context.hashing import BlockHasher
from unidb.service.context.kv_events import Residency, Subscriber
from unidb.service.context.registry import invalidate
from unidb.service.context.tokenizer import Tokenizers

log = logging.getLogger("unidb.context")


class ContextService:
    def __init__(self, settings: Settings, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
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
