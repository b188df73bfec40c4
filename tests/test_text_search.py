"""BM25 fed by the outbox: commit order, read-your-writes, rebuilds, filters, fusion."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import unidb
from unidb.models import Document, QueryRequest
from unidb.service.engine import Engine
from unidb.service.store import catalog, documents

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]


def _collection_id(engine: Engine, name: str) -> int:
    with engine.transaction() as conn:
        return catalog.get(conn, name).id


def _bm25(
    engine: Engine, name: str, text: str, *, k: int = 10, consistency: str = "strong", **extra: Any
) -> list[str]:
    request = QueryRequest(text=text, k=k, mode="bm25", consistency=consistency, **extra)  # type: ignore[arg-type]
    return [hit.id for hit in engine.query(name, request).hits]


@contextmanager
def held_transaction(engine: Engine) -> Iterator[Any]:
    """An open transaction with an id: it holds the safe watermark back until it ends."""
    with engine.pool.connection() as conn:
        conn.execute("SELECT pg_current_xact_id()")
        yield conn
        conn.rollback()


def test_out_of_order_commits_both_reach_the_index(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    collection_id = _collection_id(engine, collection)
    engine.text_indexes.refresh(collection_id)
    with engine.pool.connection() as first, engine.pool.connection() as second:
        row = catalog.get(first, collection)
        # the first transaction writes first (smaller xid) but commits last
        documents.upsert(
            first,
            row,
            [Document(id="early", text="zebra early", embedding=[1, 0])],
            engine.writes.limits,
        )
        documents.upsert(
            second,
            row,
            [Document(id="late", text="zebra late", embedding=[0, 1])],
            engine.writes.limits,
        )
        second.commit()
        engine.text_indexes.refresh(collection_id)
        # "late" committed, but it sits above a transaction still open: not read yet
        assert _bm25(engine, collection, "zebra", consistency="eventual") == []
        # a strong query sees it anyway, straight from Postgres
        assert _bm25(engine, collection, "zebra") == ["late"]
        first.commit()
    engine.text_indexes.refresh(collection_id)
    assert sorted(_bm25(engine, collection, "zebra", consistency="eventual")) == ["early", "late"]


def test_strong_reads_see_writes_the_index_has_not(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    collection_id = _collection_id(engine, collection)
    client.upsert(
        collection,
        [
            {"id": "keep", "text": "quantum entanglement basics", "embedding": [1, 0]},
            {"id": "gone", "text": "quantum tunnelling explained", "embedding": [1, 1]},
            {"id": "edit", "text": "quantum computing primer", "embedding": [0, 1]},
        ],
    )
    engine.text_indexes.refresh(collection_id)
    assert sorted(_bm25(engine, collection, "quantum", consistency="eventual")) == [
        "edit",
        "gone",
        "keep",
    ]
    with held_transaction(engine):
        other = unidb.Client(backend=engine)  # another client, same database
        other.upsert(
            collection, [{"id": "new", "text": "quantum optics lab notes", "embedding": [1, 0]}]
        )
        other.delete(collection, "gone")
        other.upsert(
            collection, [{"id": "edit", "text": "classical mechanics primer", "embedding": [0, 1]}]
        )
        engine.text_indexes.refresh(collection_id)

        strong = _bm25(engine, collection, "quantum")
        assert sorted(strong) == ["keep", "new"]
        assert _bm25(engine, collection, "classical") == ["edit"]
        assert _bm25(engine, collection, "tunnelling") == []
        # the index alone is behind: it misses "new" and still ranks "edit" by its old text;
        # hits are read from the current rows, so the deleted document is never returned
        assert sorted(_bm25(engine, collection, "quantum", consistency="eventual")) == [
            "edit",
            "keep",
        ]
        status = client.get_collection(collection).bm25
        assert status is not None and status.lag >= 3
    engine.text_indexes.refresh(collection_id)
    assert sorted(_bm25(engine, collection, "quantum", consistency="eventual")) == ["keep", "new"]
    assert client.get_collection(collection).bm25.lag == 0  # type: ignore[union-attr]


def _corpus(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": f"d{i}",
            "text": " ".join(rng.choice(WORDS, size=8)),
            "metadata": {"rare": i % 100 == 0, "title": f"doc {i}"},
            "embedding": rng.normal(size=4).tolist(),
        }
        for i in range(n)
    ]


def test_rebuilt_index_answers_identically(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=4)
    client.ingest(collection, _corpus(600, 1), batch_size=200)
    client.delete(collection, "d5")
    client.upsert(
        collection, [{"id": "d6", "text": "alpha alpha hotel", "embedding": [1, 0, 0, 0]}]
    )
    collection_id = _collection_id(engine, collection)
    engine.text_indexes.refresh(collection_id)
    queries = ["alpha", "bravo charlie", "hotel india golf", "echo delta", "doc 17"]

    def answers() -> list[list[tuple[str, float]]]:
        return [
            [
                (h.id, h.score)
                for h in engine.query(
                    collection, QueryRequest(text=q, k=20, mode="bm25", consistency="eventual")
                ).hits
            ]
            for q in queries
        ]

    before = answers()
    assert all(before)
    engine.text_indexes.drop(collection_id)
    assert not engine.text_indexes.path(collection_id).exists()
    after = answers()
    # tantivy counts a replaced or deleted document in its term statistics until its
    # segment is merged away, so scores may drift in the last digits and documents tied at
    # the cut may trade places; everything clearly above the cut must be the same, and
    # every document both answers share must score alike
    for hits_after, hits_before in zip(after, before, strict=True):
        scores_after, scores_before = dict(hits_after), dict(hits_before)

        def above_cut(hits: list[tuple[str, float]]) -> set[str]:
            return {doc for doc, score in hits if score > hits[-1][1] * 1.02}

        assert above_cut(hits_after) == above_cut(hits_before)
        for doc in scores_after.keys() & scores_before.keys():
            assert scores_after[doc] == pytest.approx(scores_before[doc], rel=1e-2)


def test_selective_filter_on_bm25_returns_k(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=4)
    client.ingest(collection, _corpus(2000, 2), batch_size=500)
    hits = client.query(
        collection, text="alpha bravo", k=15, mode="bm25", filter={"rare": True}
    ).hits
    assert len(hits) == 15 and all(h.metadata["rare"] is True for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    hybrid = client.query(
        collection, text="alpha", vector=[1, 0, 0, 0], k=20, filter={"rare": True}
    ).hits
    assert len(hybrid) == 20 and all(h.metadata["rare"] is True for h in hybrid)


def test_hybrid_fuses_both_lists(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(
        collection,
        [
            {"id": "text_match", "text": "sailing boats on the lake", "embedding": [0.0, 1.0]},
            {"id": "vector_match", "text": "mountain hiking trails", "embedding": [1.0, 0.0]},
            {"id": "both", "text": "sailing in the mountains", "embedding": [0.9, 0.1]},
        ],
    )
    rrf = client.query(collection, text="sailing", vector=[1.0, 0.0], k=3, fusion="rrf").hits
    bm25_rank = [h.id for h in client.query(collection, text="sailing", mode="bm25").hits]
    vector_rank = [h.id for h in client.query(collection, vector=[1.0, 0.0], mode="vector").hits]
    assert rrf[0].id == "both"
    assert rrf[0].scores.bm25 is not None and rrf[0].scores.vector is not None
    expected = 1 / (60 + 1 + bm25_rank.index("both")) + 1 / (60 + 1 + vector_rank.index("both"))
    assert rrf[0].scores.fused == pytest.approx(expected)
    assert rrf[0].score == rrf[0].scores.fused
    weighted = client.query(
        collection, text="sailing", vector=[1.0, 0.0], k=3, fusion="weighted", alpha=1.0
    ).hits
    assert weighted[0].id == "vector_match"  # alpha 1: the vector list alone decides
    weighted = client.query(
        collection, text="boats", vector=[1.0, 0.0], k=3, fusion="weighted", alpha=0.0
    ).hits
    assert weighted[0].id == "text_match"
    for fusion in ("relative", "dbsf"):  # each list scaled on its own, alpha as the mix
        mixed = client.query(
            collection, text="sailing", vector=[1.0, 0.0], k=3, fusion=fusion, alpha=0.5
        ).hits
        assert mixed[0].id == "both" and mixed[0].scores.fused is not None
        assert client.query(collection, text="boats", vector=[1.0, 0.0], k=3, fusion=fusion,
                            alpha=0.0).hits[0].id == "text_match"  # fmt: skip
    text_only = client.query(collection, text="mountain").hits  # hybrid with text alone
    assert {h.id for h in text_only} == {"vector_match", "both"}  # "mountains" stems to "mountain"
    assert all(h.scores.vector is None and h.scores.bm25 is not None for h in text_only)


def test_opening_an_index_another_process_is_building(engine: Engine, collection: str) -> None:
    """The opener follows the builder instead of failing, and BM25 still sees every row."""
    from unidb.indexing.bm25 import Bm25Index
    from unidb.indexing.text_indexes import TextIndexes

    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(collection, [Document(id=f"d{i}", text=f"alpha {i}") for i in range(5)])
    collection_id = _collection_id(engine, collection)
    second = TextIndexes(engine.text_indexes.root, engine.pool, interval_s=60)
    # another process has taken the writer and not yet committed its first build
    builder = Bm25Index(second.path(collection_id))
    try:
        builder.apply([], [], watermark=0)
        follower = second.get(collection_id)
        assert follower.watermark == 0 and second.refresh(collection_id) == 0
        # the session engine opens the same index and follows too: rows unindexed so far
        # are scored from Postgres
        assert sorted(_bm25(engine, collection, "alpha")) == [f"d{i}" for i in range(5)]
    finally:
        builder.close()
        second.close()


def test_queries_do_not_wait_for_a_tailer_waiting_for_a_connection(
    engine: Engine, collection: str
) -> None:
    """The tailer takes its connection before the index's lock, so a query that needs the
    index never queues behind a tailer pass stuck waiting for the pool."""
    import threading
    from contextlib import ExitStack

    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(collection, [Document(id="d1", text="alpha one")])
    collection_id = _collection_id(engine, collection)
    engine.text_indexes.get(collection_id)
    background = engine.background_pool
    finished: list[str] = []

    def tailer_pass() -> None:
        try:
            engine.text_indexes.refresh(collection_id)
        finally:
            finished.append("tailer")

    with ExitStack() as held:
        for _ in range(background.max_size):  # the tailer's pool, all taken
            held.enter_context(background.connection())
        stuck = threading.Thread(target=tailer_pass)
        stuck.start()
        assert _bm25(engine, collection, "alpha") == ["d1"]
        finished.append("query")
    stuck.join()
    assert finished == ["query", "tailer"]  # answered while the tailer still waited


def test_weighted_fusion_ranks_the_only_bm25_match_first(engine: Engine, collection: str) -> None:
    """A key BM25 did not return, when BM25 returned all it had, matched no query term: it
    must not tie with the one document that did."""
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(
        collection,
        [
            Document(id="a", text="ordinary words", embedding=[1.0, 0.0]),
            Document(id="b", text="the rare insulin word", embedding=[0.0, 1.0]),
        ],
    )
    for alpha in (0.0, 0.3):
        hits = client.query(
            collection, text="insulin", vector=[1.0, 0.0], fusion="weighted", alpha=alpha
        ).hits
        assert [hit.id for hit in hits] == ["b", "a"], alpha


def _caught_up(engine: Engine, name: str) -> None:
    """Wait (bounded) until the BM25 index holds every committed change of ``name``."""
    import time

    collection_id = _collection_id(engine, name)
    deadline = time.monotonic() + 30
    while unidb.Client(backend=engine).get_collection(name).bm25.lag:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the BM25 index did not catch up"
        engine.text_indexes.refresh(collection_id)


def test_watermark_moves_only_after_the_searcher_reloads(engine: Engine, collection: str) -> None:
    """Between a commit and the searcher's reload the index must not claim the write: a
    strong query in that window trusts the watermark to mask what the searcher lacks."""
    import threading

    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(collection, [Document(id="old", text="walrus old", embedding=[1, 0])])
    collection_id = _collection_id(engine, collection)
    _caught_up(engine, collection)
    index = engine.text_indexes.get(collection_id)
    committed, resume = threading.Event(), threading.Event()
    in_window: list[tuple[int, list[str]]] = []

    def pause_after_commit() -> None:
        if not committed.is_set():
            committed.set()
            assert resume.wait(timeout=60)

    index.after_commit = pause_after_commit
    try:
        client.upsert(collection, [Document(id="new", text="walrus new", embedding=[0, 1])])
        with engine.transaction() as conn:
            row = conn.execute(
                "SELECT max(xid)::text::bigint FROM unidb.changes WHERE collection_id = %s",
                (collection_id,),
            ).fetchone()
        assert row is not None
        written_xid = int(row[0])
        # this thread or the background tailer, whichever applies it, stops in the window
        applier = threading.Thread(target=engine.text_indexes.refresh, args=(collection_id,))
        applier.start()
        assert committed.wait(timeout=60)
        in_window.append((index.watermark, sorted(_bm25(engine, collection, "walrus"))))
    finally:
        resume.set()
        index.after_commit = None
    applier.join()
    watermark, strong = in_window[0]
    assert watermark <= written_xid  # the write is committed to tantivy, not yet claimed
    assert strong == ["new", "old"]
    assert index.watermark > written_xid
    assert sorted(_bm25(engine, collection, "walrus", consistency="eventual")) == ["new", "old"]
