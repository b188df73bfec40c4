"""A collection's BM25 index in tantivy, derived from Postgres and rebuilt from it at will.

One field, ``body`` (the document's title, when its metadata has one, then its text),
analyzed by one English analyzer: simple tokens, long ones dropped, lowercased, English
stop words removed, Snowball-stemmed. The index remembers the outbox watermark it holds
everything below (``watermark.json``, written after each tantivy commit), so a restart
resumes where it stopped; re-applying a change is harmless.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tantivy

ANALYZER = "unidb_en"
K1 = 1.2  # tantivy's BM25 constants, used again when scoring rows not yet indexed
B = 0.75
_WATERMARK_FILE = "watermark.json"
_WRITER_HEAP_BYTES = 64 * 1024 * 1024


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


class Bm25Index:
    """The index under ``path``; one writer (the tailer), any number of searchers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.analyzer = english_analyzer()
        self._schema = _schema()
        path.mkdir(parents=True, exist_ok=True)
        self._index = tantivy.Index(self._schema, path=str(path))
        self._index.register_tokenizer(ANALYZER, self.analyzer)
        self._writer: Any = None
        self._lock = threading.Lock()
        self._watermark = self._read_watermark()

    @property
    def watermark(self) -> int:
        """Every change from a transaction below this id is in the index."""
        return self._watermark

    def _read_watermark(self) -> int:
        try:
            return int(json.loads((self.path / _WATERMARK_FILE).read_text())["watermark"])
        except (OSError, ValueError, KeyError):
            return 0

    def _write_watermark(self, watermark: int) -> None:
        staged = self.path / (_WATERMARK_FILE + ".tmp")
        staged.write_text(json.dumps({"watermark": watermark}))
        os.replace(staged, self.path / _WATERMARK_FILE)
        self._watermark = watermark

    def analyze(self, text: str) -> list[str]:
        tokens: list[str] = self.analyzer.analyze(text)
        return tokens

    def apply(
        self, upserts: Iterable[tuple[int, str]], deletes: Iterable[int], *, watermark: int
    ) -> None:
        """Replace ``upserts`` (key, body), remove ``deletes``, commit, then move the watermark."""
        with self._lock:
            if self._writer is None:
                try:
                    self._writer = self._index.writer(heap_size=_WRITER_HEAP_BYTES, num_threads=1)
                except ValueError as exc:
                    if "LockBusy" in str(exc):
                        raise IndexBusy(str(self.path)) from exc
                    raise
            writer = self._writer
            for key in deletes:
                writer.delete_documents_by_term("key", key)
            for key, body in upserts:
                writer.delete_documents_by_term("key", key)
                document = tantivy.Document()
                document.add_integer("key", key)
                document.add_integer("length", len(self.analyze(body)))
                document.add_text("body", body)
                writer.add_document(document)
            writer.commit()
            self._write_watermark(watermark)
        self._index.reload()

    def follow(self) -> None:
        """Pick up what another process's writer committed (and its watermark)."""
        self._index.reload()
        self._watermark = self._read_watermark()

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.wait_merging_threads()
                self._writer = None

    def destroy(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def _query(self, terms: Iterable[str]) -> Any:
        return tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Should, tantivy.Query.term_query(self._schema, "body", term))
                for term in set(terms)
            ]
        )

    def search(
        self, text: str, *, limit: int, keys: Iterable[int] | None = None
    ) -> list[tuple[int, float]]:
        """The best ``limit`` (key, BM25 score) for ``text``, only among ``keys`` if given."""
        terms = self.analyze(text)
        if not terms:
            return []
        query = self._query(terms)
        if keys is not None:
            allowed = tantivy.Query.term_set_query(self._schema, "key", list(keys))
            query = tantivy.Query.boolean_query(
                [(tantivy.Occur.Must, query), (tantivy.Occur.Must, allowed)]
            )
        searcher = self._index.searcher()
        hits = searcher.search(query, limit).hits
        return [(int(searcher.doc(address)["key"][0]), float(score)) for score, address in hits]

    def keys(self) -> set[int]:
        """Every document key in the index as last committed (a consistency check's input)."""
        self._index.reload()
        searcher = self._index.searcher()
        if not searcher.num_docs:
            return set()
        hits = searcher.search(tantivy.Query.all_query(), int(searcher.num_docs)).hits
        return {int(searcher.doc(address)["key"][0]) for _, address in hits}

    def stats(self, terms: Iterable[str]) -> CorpusStats:
        searcher = self._index.searcher()
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

    def score_unindexed(self, text: str, bodies: Mapping[int, str]) -> list[tuple[int, float]]:
        """BM25 of documents not in the index yet, with the index's statistics."""
        terms = self.analyze(text)
        if not terms or not bodies:
            return []
        stats = self.stats(terms)
        query_terms = set(terms)
        scored = []
        for key, body in bodies.items():
            tokens = self.analyze(body)
            counts = Counter(tokens)
            norm = K1 * (1 - B + B * len(tokens) / max(stats.average_length, 1e-9))
            score = sum(
                stats.idf(term) * counts[term] * (K1 + 1) / (counts[term] + norm)
                for term in query_terms
                if counts[term]
            )
            if score > 0:
                scored.append((key, score))
        return scored
