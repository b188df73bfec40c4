"""Outbox retention against the races two reviews reproduced: a prune landing between a
tailer's reads, a sibling process lagging on a shared directory, a refresh holding an
index let go of meanwhile, and a BM25 index still being built beside a FAISS snapshot.
Each forces its order through a seam rather than timing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import unidb
from unidb.indexing.bm25 import Bm25Index
from unidb.indexing.text_indexes import TextIndexes
from unidb.models import IndexBuildRequest
from unidb.service.context import registry
from unidb.service.engine import Engine

from .conftest import quiet_engine
from .test_outbox_retention import _wait_done


def _cid(e: Engine, name: str) -> int:
    with e.transaction() as conn:
        return conn.execute("SELECT id FROM unidb.collections WHERE name=%s", (name,)).fetchone()[0]


def test_a_prune_between_a_tailers_reads_never_lets_it_advance_past_lost_changes(
    scratch_database: str, tmp_path: Path
) -> None:
    """B (stale) resumes; A prunes right after B's tailer read the horizon: B advances past d1."""
    a = quiet_engine(scratch_database, tmp_path / "a")
    b = quiet_engine(scratch_database, tmp_path / "b")
    try:
        ca, cb = unidb.Client(backend=a), unidb.Client(backend=b)
        ca.create_collection("notes", dim=2)
        ca.upsert("notes", [{"id": "d0", "text": "apple", "embedding": [1, 0]}])
        assert [h.id for h in cb.query("notes", text="apple", mode="bm25").hits] == ["d0"]
        ca.upsert("notes", [{"id": "d1", "text": "banana", "embedding": [0, 1]}])
        with a.transaction(service_wide=True) as conn:
            conn.execute(
                "UPDATE unidb.outbox_followers SET seen_at = now() - interval '2 hours'"
                " WHERE name = %s",
                (b.retention.name,),
            )
        a.text_indexes.follow_once()
        with a.transaction(service_wide=True) as conn:
            registry.invalidate(conn)
        real = b.text_indexes.behind

        def behind(h):
            gone = real(h)
            a.retention.run_once()  # A's heartbeat lands just after B's check
            return gone

        b.text_indexes.behind = behind
        b.text_indexes.follow_once()
        b.text_indexes.behind = real
        b.text_indexes.follow_once()  # and the next pass
        with b.transaction() as conn:
            conn.execute("SELECT horizon FROM unidb.outbox_horizon").fetchone()[0]
        b.text_indexes.opened(_cid(b, "notes"))
        got = [
            h.id for h in cb.query("notes", text="banana", mode="bm25", consistency="strong").hits
        ]
        assert got == ["d1"], f"strong query on B missed d1: {got}"
    finally:
        b.close()
        a.close()


def test_an_unbuilt_bm25_index_beside_a_faiss_snapshot_still_fills_k(
    scratch_database: str, tmp_path: Path
) -> None:
    """Hybrid strong query, FAISS snapshot, BM25 being built by a sibling (watermark 0): a
    document deleted since the snapshot is not masked, takes a slot, and is dropped."""
    e = quiet_engine(scratch_database, tmp_path / "d")
    try:
        c = unidb.Client(backend=e)
        c.create_collection("vectors", dim=4, metric="l2")
        rng = np.random.default_rng(5)
        docs = [
            {"id": f"v{i}", "text": f"doc {i}", "embedding": rng.standard_normal(4).tolist()}
            for i in range(300)
        ]
        docs.append({"id": "gone", "text": "doc gone", "embedding": [9, 9, 9, 9]})
        c.upsert("vectors", docs)
        _wait_done(e, e.build_index("vectors", IndexBuildRequest(kind="hnsw")).id)
        cid = _cid(e, "vectors")
        assert e.ann.get(cid) is not None
        c.delete("vectors", "gone") if hasattr(c, "delete") else e.delete_document(
            "vectors", "gone"
        )
        # a sibling process holds the BM25 writer while it builds: this one follows it
        assert e.text_indexes.opened(cid) is None  # nothing opened here yet
        shutil.rmtree(e.text_indexes.path(cid), ignore_errors=True)
        sibling = Bm25Index(e.text_indexes.path(cid))
        with sibling.writing():
            e.text_indexes.get(cid)
            ans = c.query(
                "vectors",
                text="doc",
                vector=[9, 9, 9, 9],
                mode="hybrid",
                k=5,
                consistency="strong",
                explain=True,
            )
        assert len(ans.hits) == 5, f"under-filled: {[h.id for h in ans.hits]}"
    finally:
        e.close()


def test_a_lagging_sibling_leaves_a_current_shared_index_in_place(
    scratch_database: str, tmp_path: Path
) -> None:
    data = tmp_path / "shared"
    a = quiet_engine(scratch_database, data)
    b = quiet_engine(scratch_database, data)
    try:
        ca, cb = unidb.Client(backend=a), unidb.Client(backend=b)
        ca.create_collection("notes", dim=2)
        ca.upsert(
            "notes", [{"id": f"d{i}", "text": "apple", "embedding": [1, i]} for i in range(5)]
        )
        cid = _cid(a, "notes")
        a.text_indexes.refresh(cid)
        assert len(cb.query("notes", text="apple", mode="bm25").hits) == 5  # B opens it
        ca.upsert("notes", [{"id": "d5", "text": "banana", "embedding": [0, 1]}])
        with a.transaction(service_wide=True) as conn:
            conn.execute(
                "UPDATE unidb.outbox_followers SET seen_at = now() - interval '2 hours'"
                " WHERE name = %s",
                (b.retention.name,),
            )
        a.text_indexes.follow_once()  # A applies d5 to the shared folder
        with a.transaction(service_wide=True) as conn:
            registry.invalidate(conn)
        a.retention.run_once()
        # B resumes: its in-memory watermark is below the horizon, the shared folder is not
        with b.transaction() as conn:
            h = conn.execute("SELECT horizon FROM unidb.outbox_horizon").fetchone()[0]
        b.text_indexes.behind(h)  # what B's tailer or a B query does first
        a.text_indexes._release(cid)  # A's idle sweep closes its handle meanwhile
        got = [
            h.id for h in ca.query("notes", text="apple", mode="bm25", consistency="strong").hits
        ]
        assert len(got) == 5, f"A's strong query lost documents: {got}"
    finally:
        b.close()
        a.close()


def test_a_built_bm25_index_beside_a_faiss_snapshot_fills_k(
    scratch_database: str, tmp_path: Path
) -> None:
    """Hybrid strong query, FAISS snapshot, BM25 being built by a sibling (watermark 0): a
    document deleted since the snapshot is not masked, takes a slot, and is dropped."""
    e = quiet_engine(scratch_database, tmp_path / "d")
    try:
        c = unidb.Client(backend=e)
        c.create_collection("vectors", dim=4, metric="l2")
        rng = np.random.default_rng(5)
        docs = [
            {"id": f"v{i}", "text": f"doc {i}", "embedding": rng.standard_normal(4).tolist()}
            for i in range(300)
        ]
        docs.append({"id": "gone", "text": "doc gone", "embedding": [9, 9, 9, 9]})
        c.upsert("vectors", docs)
        _wait_done(e, e.build_index("vectors", IndexBuildRequest(kind="hnsw")).id)
        cid = _cid(e, "vectors")
        assert e.ann.get(cid) is not None
        c.delete("vectors", "gone") if hasattr(c, "delete") else e.delete_document(
            "vectors", "gone"
        )
        # a sibling process holds the BM25 writer while it builds: this one follows it
        assert e.text_indexes.opened(cid) is None  # nothing opened here yet
        shutil.rmtree(e.text_indexes.path(cid), ignore_errors=True)
        e.text_indexes.get(cid)
        ans = c.query(
            "vectors",
            text="doc",
            vector=[9, 9, 9, 9],
            mode="hybrid",
            k=5,
            consistency="strong",
            explain=True,
        )
        assert len(ans.hits) == 5, f"under-filled: {[h.id for h in ans.hits]}"
    finally:
        e.close()


def test_a_refresh_holding_an_index_let_go_of_meanwhile_writes_nothing(
    scratch_database: str, tmp_path: Path
) -> None:
    """refresh() takes the index (get) before its lock; a query thread's behind() resets it
    in between; catch_up then writes a partial index with a current watermark."""
    a = quiet_engine(scratch_database, tmp_path / "a")
    b = quiet_engine(scratch_database, tmp_path / "b")
    try:
        ca, cb = unidb.Client(backend=a), unidb.Client(backend=b)
        ca.create_collection("notes", dim=2)
        ca.upsert("notes", [{"id": "d0", "text": "apple", "embedding": [1, 0]}])
        assert [h.id for h in cb.query("notes", text="apple", mode="bm25").hits] == ["d0"]
        cid = _cid(b, "notes")
        ca.upsert("notes", [{"id": "d1", "text": "banana", "embedding": [0, 1]}])
        with a.transaction(service_wide=True) as conn:
            conn.execute(
                "UPDATE unidb.outbox_followers SET seen_at = now() - interval '2 hours'"
                " WHERE name = %s",
                (b.retention.name,),
            )
        a.text_indexes.follow_once()
        with a.transaction(service_wide=True) as conn:
            registry.invalidate(conn)
        a.retention.run_once()
        ti = b.text_indexes
        old = ti.get(cid)  # refresh(): index = self.get(collection_id) -- B's horizon not read yet
        with b.transaction() as conn:
            h = conn.execute("SELECT horizon FROM unidb.outbox_horizon").fetchone()[0]
        ti.behind(h)  # a query thread's _check_horizon, meanwhile
        ca.upsert("notes", [{"id": "d2", "text": "cherry", "embedding": [1, 1]}])
        real_get = ti.get
        ti.get = lambda collection_id: old  # type: ignore[method-assign]
        try:
            ti.refresh(cid)  # its get() ran before the reset
        finally:
            ti.get = real_get  # type: ignore[method-assign]
        ti.get(cid)
        got = [
            x.id
            for x in cb.query(
                "notes", text="apple banana cherry", mode="bm25", consistency="strong", k=5
            ).hits
        ]
        assert sorted(got) == ["d0", "d1", "d2"], got
    finally:
        b.close()
        a.close()


def test_a_query_searching_an_index_let_go_of_meanwhile_asks_again(
    scratch_database: str, tmp_path: Path
) -> None:
    """Between a strong query's horizon check and its search, the tailer lets go of the
    index and its folder is rebuilt from empty: the query's object must not reopen it."""
    e = quiet_engine(scratch_database, tmp_path / "d")
    try:
        c = unidb.Client(backend=e)
        c.create_collection("notes", dim=2)
        c.upsert("notes", [{"id": f"d{i}", "text": "apple", "metadata": {"n": i},
                            "embedding": [1, i]} for i in range(3)])  # fmt: skip
        cid = _cid(e, "notes")
        e.text_indexes.refresh(cid)
        index = e.text_indexes.get(cid)
        real = index.search

        def search(text: str, **options: object) -> object:
            e.text_indexes._let_go(cid)  # the tailer's pass, while this query runs
            shutil.rmtree(e.text_indexes.path(cid), ignore_errors=True)  # and its rebuild
            return real(text, **options)  # type: ignore[arg-type]

        index.search = search  # type: ignore[method-assign]
        hits = c.query("notes", text="apple", mode="bm25", filter={"n": {"$gte": 0}}, k=5).hits
        assert sorted(h.id for h in hits) == ["d0", "d1", "d2"]
    finally:
        e.close()


def test_an_index_left_unbuilt_by_another_process_is_built_from_the_table(
    scratch_database: str, tmp_path: Path
) -> None:
    """Another process took the writer to build the index and stopped before committing,
    with the outbox already pruned: following from watermark 0 would miss documents for
    good, so the next pass builds it from the table."""
    e = quiet_engine(scratch_database, tmp_path / "d")
    try:
        c = unidb.Client(backend=e)
        c.create_collection("notes", dim=2)
        c.upsert("notes", [{"id": f"d{i}", "text": "apple", "embedding": [1, i]}
                           for i in range(3)])  # fmt: skip
        cid = _cid(e, "notes")
        e.text_indexes.follow_once()
        with e.transaction(service_wide=True) as conn:
            registry.invalidate(conn)
        assert e.retention.run_once().horizon > 0
        e.text_indexes.drop(cid)  # this process's copy gone: the other process builds it
        second = TextIndexes(e.text_indexes.root, e.background_pool, interval_s=60)
        builder = Bm25Index(second.path(cid))
        try:
            builder.apply([], [], watermark=0)  # holds the writer, commits nothing of use
            follower = second.get(cid)
            assert follower.watermark == 0  # following the build
            builder.close()  # the other process stops before finishing
            second.refresh(cid)
            assert second.get(cid).watermark > 0
            assert sorted(k for k, _ in second.get(cid).search("apple", limit=5)) == sorted(
                int(row[0]) for row in _keys(e, cid)
            )
        finally:
            builder.close()
            second.close()
    finally:
        e.close()


def _keys(engine: Engine, collection_id: int) -> list[tuple[int]]:
    with engine.transaction() as conn:
        return conn.execute(
            "SELECT key FROM unidb.documents WHERE collection_id = %s", (collection_id,)
        ).fetchall()
