"""A collection's BM25 index in tantivy, derived from Postgres and rebuilt from it at will.

One field, ``body`` (the document's title, when its metadata has one, then its text),
analyzed by one English analyzer: simple tokens, long ones dropped, lowercased, English
stop words removed, Snowball-stemmed. The index remembers the outbox watermark it holds
everything below (``watermark.json``, written after each tantivy commit), so a restart
resumes where it stopped; re-applying a change is harmless.

An index costs nothing while idle: its tantivy handle (a reader and a file-watcher thread)
opens on first use and `release` closes it; a writer (six threads and a heap) is held only
inside `writing`. A pass that finds nothing of the collection changed moves the watermark
in memory (`advance`), with no commit and no file write: the one on disk stays older, which
is still true, so a restart re-reads a little more of the outbox and skips nothing.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tantivy

ANALYZER = "unidb_en"
K1 = 1.2  # tantivy's BM25 constants, used again when scoring rows not yet indexed
B = 0.75
_WATERMARK_FILE = "watermark.json"
_WRITER_HEAP_BYTES = 64 * 1024 * 1024


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):  # no C library to load this way (Windows)
        return None
    return trim  # None where the C library is not glibc


# A writer's threads allocate from glibc's per-thread arenas, which keep what they free:
# without a trim, writers opened and closed one after another leave up to ~100 MB behind.
_MALLOC_TRIM = _malloc_trim()


def english_analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(40))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stopword("english"))
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def document_body(text: str, metadata: Mapping[str, Any]) -> str:
    """What BM25 and the embedders read of a document: its title, if any, then its text."""
    title = metadata.get("title")
    return f"{title} {text}" if isinstance(title, str) and title else text


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("key", stored=True, indexed=True, fast=True)
    builder.add_integer_field("length", fast=True)
    builder.add_text_field("body", tokenizer_name=ANALYZER, stored=False)
    return builder.build()


@dataclass(frozen=True, slots=True)
class CorpusStats:
    documents: int
    average_length: float
    document_frequency: dict[str, int]

    def idf(self, term: str) -> float:
        df = self.document_frequency.get(term, 0)
        return math.log(1.0 + (self.documents - df + 0.5) / (df + 0.5))


class IndexBusy(RuntimeError):
    """Another process holds this index's writer; this one can only read it."""


class IndexRetired(RuntimeError):
    """This object was let go of (its collection dropped, or the outbox pruned past it):
    it must not reopen its folder, which may be gone or being rebuilt."""


class Bm25Index:
    """The index under ``path``; one writer (the tailer), any number of searchers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.analyzer = english_analyzer()
        self._schema = _schema()
        self._index: Any = None  # tantivy.Index, opened on first use
        self._open_lock = threading.Lock()  # opening and releasing the handle
        self._writer: Any = None
        self._lock = threading.RLock()  # the writer's, held by `writing` and each `apply`
        self._watermark = self._read_watermark()
        self._persisted = self._watermark
        self._retired = False
        # a seam for tests: runs after a commit, before the searcher reloads and the
        # watermark moves
        self.after_commit: Callable[[], None] | None = None

    @property
    def watermark(self) -> int:
        """Every change from a transaction below this id is in the index."""
        return self._watermark

    @property
    def is_open(self) -> bool:
        return self._index is not None

    def _read_watermark(self) -> int:
        return self.read_watermark(self.path)

    @staticmethod
    def read_watermark(path: Path) -> int:
        """The watermark written in the index folder ``path``; 0 if none (never built)."""
        try:
            return int(json.loads((path / _WATERMARK_FILE).read_text())["watermark"])
        except (OSError, ValueError, KeyError):
            return 0

    @property
    def persisted_watermark(self) -> int:
        """The watermark as written to disk: what a restart would read."""
        return self._persisted

    def _write_watermark(self, watermark: int) -> None:
        # a name of its own: processes sharing the folder may each persist at once
        staged = self.path / f"{_WATERMARK_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        staged.write_text(json.dumps({"watermark": watermark}))
        os.replace(staged, self.path / _WATERMARK_FILE)
        self._persisted = watermark

    def retire(self) -> None:
        """Close for good: every later use raises IndexRetired instead of reopening."""
        with self._open_lock:
            self._retired = True
        self.close()

    def _handle(self) -> Any:
        with self._open_lock:
            if self._retired:
                raise IndexRetired(str(self.path))
            if self._index is None:
                self.path.mkdir(parents=True, exist_ok=True)
                index = tantivy.Index(self._schema, path=str(self.path))
                index.register_tokenizer(ANALYZER, self.analyzer)
                # the searcher moves only when `apply` or `follow` reloads it, after which
                # they publish the watermark: never a watermark ahead of the searcher
                index.config_reader("manual", 0)
                self._index = index
            return self._index

    def analyze(self, text: str) -> list[str]:
        tokens: list[str] = self.analyzer.analyze(text)
        return tokens

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold this index's writer (`IndexBusy` if another process does) and close it at
        the end; every `apply` inside commits through it."""
        with self._lock:
            self._open_writer()
            try:
                yield
            finally:
                self._close_writer()

    def _open_writer(self) -> Any:
        if self._writer is None:
            try:
                self._writer = self._handle().writer(heap_size=_WRITER_HEAP_BYTES, num_threads=1)
            except ValueError as exc:
                if "LockBusy" in str(exc):
                    raise IndexBusy(str(self.path)) from exc
                raise
        return self._writer

    def _close_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.wait_merging_threads()
            del writer
            if _MALLOC_TRIM is not None:
                _MALLOC_TRIM(0)

    def apply(
        self, upserts: Iterable[tuple[int, str]], deletes: Iterable[int], *, watermark: int
    ) -> None:
        """Replace ``upserts`` (key, body), remove ``deletes``, commit, then move the watermark.
        A key given several bodies (a chunked document's chunks) gets one entry for each.

        Outside `writing` the writer stays open until `close`."""
        upserts = list(upserts)
        with self._lock:
            writer = self._open_writer()
            for key in deletes:
                writer.delete_documents_by_term("key", key)
            for key in dict.fromkeys(key for key, _ in upserts):
                writer.delete_documents_by_term("key", key)
            for key, body in upserts:
                document = tantivy.Document()
                document.add_integer("key", key)
                document.add_integer("length", len(self.analyze(body)))
                document.add_text("body", body)
                writer.add_document(document)
            writer.commit()
            self._write_watermark(watermark)
            if self.after_commit is not None:
                self.after_commit()
            # a query trusts the watermark to mean the searcher holds everything below it
            self._handle().reload()
            self._watermark = watermark

    def advance(self, watermark: int) -> None:
        """Nothing of this collection changed below ``watermark``: move it, in memory only."""
        self._watermark = max(self._watermark, watermark)

    def persist_watermark(self) -> None:
        """Write a watermark `advance` moved (at shutdown, and before the outbox retention
        reports it), so a restart reads less outbox and never less than was reported."""
        with self._lock:
            if self._watermark > self._persisted and (self.path / "meta.json").exists():
                self._write_watermark(self._watermark)

    def follow(self) -> None:
        """Pick up what another process's writer committed (and its watermark)."""
        # read before reloading: that process writes the file after its commit
        watermark = self._read_watermark()
        self._handle().reload()
        self._watermark = watermark

    def release(self) -> bool:
        """Close the tantivy handle (reopened on next use) unless it is writing now."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._close_writer()
            with self._open_lock:
                self._index = None
            return True
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._close_writer()
            with self._open_lock:
                self._index = None

    def destroy(self) -> None:
        self.retire()
        shutil.rmtree(self.path, ignore_errors=True)

    def _query(self, terms: Iterable[str]) -> Any:
        """BM25 summed over the query's tokens, as Lucene and bm25s score it: a term the
        query repeats counts as often as it appears (a boost of its count)."""
        clauses = []
        for term, count in Counter(terms).items():
            query = tantivy.Query.term_query(self._schema, "body", term)
            if count > 1:
                query = tantivy.Query.boost_query(query, float(count))
            clauses.append((tantivy.Occur.Should, query))
        return tantivy.Query.boolean_query(clauses)

    def search(
        self, text: str, *, limit: int, keys: Iterable[int] | None = None
    ) -> list[tuple[int, float]]:
        """The best ``limit`` (key, BM25 score) for ``text``, only among ``keys`` if given."""
        terms = self.analyze(text)
        if not terms:
            return []
        query = self._query(terms)
        if keys is not None:
            # a term set scores each match 1: held at 0 it admits without adding
            allowed = tantivy.Query.const_score_query(
                tantivy.Query.term_set_query(self._schema, "key", list(keys)), 0.0
            )
            query = tantivy.Query.boolean_query(
                [(tantivy.Occur.Must, query), (tantivy.Occur.Must, allowed)]
            )
        searcher = self._handle().searcher()
        # a chunked document has an entry per chunk: its best one ranks it, so the search
        # widens until ``limit`` documents are found or the index has no more
        fetch = limit
        while True:
            hits = searcher.search(query, fetch).hits
            best: dict[int, float] = {}
            for score, address in hits:
                best.setdefault(int(searcher.doc(address)["key"][0]), float(score))
            if len(best) >= limit or len(hits) < fetch:
                return list(best.items())[:limit]
            fetch *= 4

    def keys(self) -> set[int]:
        """Every document key in the index as last committed (a consistency check's input)."""
        index = self._handle()
        index.reload()
        searcher = index.searcher()
        if not searcher.num_docs:
            return set()
        hits = searcher.search(tantivy.Query.all_query(), int(searcher.num_docs)).hits
        return {int(searcher.doc(address)["key"][0]) for _, address in hits}

    def stats(self, terms: Iterable[str]) -> CorpusStats:
        searcher = self._handle().searcher()
        documents = int(searcher.num_docs)
        total = 0.0
        if documents:
            result = searcher.aggregate(
                tantivy.Query.all_query(), {"total": {"sum": {"field": "length"}}}
            )
            total = float(result["total"]["value"] or 0.0)
        frequencies = {term: int(searcher.doc_freq("body", term)) for term in set(terms)}
        return CorpusStats(
            documents=documents,
            average_length=total / documents if documents else 1.0,
            document_frequency=frequencies,
        )

    def score_unindexed(
        self, text: str, bodies: Mapping[int, str] | Iterable[tuple[int, str]]
    ) -> list[tuple[int, float]]:
        """BM25 of documents not in the index yet, with the index's statistics: (key, body)
        pairs, a key given several bodies (its chunks) scored by its best."""
        pairs = list(bodies.items() if isinstance(bodies, Mapping) else bodies)
        best: dict[int, float] = {}
        for (key, _), score in zip(
            pairs, self.score_texts(text, [b for _, b in pairs]), strict=True
        ):
            if score > 0 and score > best.get(key, 0.0):
                best[key] = score
        return list(best.items())

    def score_texts(self, text: str, bodies: list[str]) -> list[float]:
        """BM25 of each of ``bodies`` for ``text``, with the index's statistics (0 where
        no query term occurs)."""
        terms = self.analyze(text)
        if not terms or not bodies:
            return [0.0] * len(bodies)
        stats = self.stats(terms)
        query_terms = Counter(terms)  # each query token counts, repeats included
        scores = []
        for body in bodies:
            tokens = self.analyze(body)
            counts = Counter(tokens)
            norm = K1 * (1 - B + B * len(tokens) / max(stats.average_length, 1e-9))
            scores.append(
                sum(
                    repeats * stats.idf(term) * counts[term] * (K1 + 1) / (counts[term] + norm)
                    for term, repeats in query_terms.items()
                    if counts[term]
                )
            )
        return scores
