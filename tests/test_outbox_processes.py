"""Processes and outbox retention: each process is a follower of its own, even on a
shared data directory, and one passed as stale catches up by rebuilding."""

from __future__ import annotations

from pathlib import Path

import unidb
from unidb.service.context import registry

from .conftest import quiet_engine


def test_prune_passes_a_sibling_process_index(scratch_database: str, tmp_path: Path) -> None:
    data = tmp_path / "shared"
    a = quiet_engine(scratch_database, data)
    b = quiet_engine(scratch_database, data)  # a --workers sibling: same directory, same follower
    try:
        ca, cb = unidb.Client(backend=a), unidb.Client(backend=b)
        ca.create_collection("notes", dim=2)
        ca.upsert("notes", [{"id": "d0", "text": "apple", "embedding": [1, 0]}])
        with a.transaction() as conn:
            (cid,) = conn.execute("SELECT id FROM unidb.collections WHERE name='notes'").fetchone()
        a.text_indexes.refresh(cid)
        # B opens the index from disk and serves it
        assert [h.id for h in cb.query("notes", text="apple", mode="bm25").hits] == ["d0"]
        assert b.text_indexes.opened(cid) is not None

        ca.upsert("notes", [{"id": "d1", "text": "banana", "embedding": [0, 1]}])
        a.text_indexes.follow_once()  # A's tailer applies d1; B's has not run yet
        with a.transaction(service_wide=True) as conn:
            registry.invalidate(conn)
        a.retention.run_once()  # A reports the directory's floor and prunes

        # A's prune waits for B's own report: B still lacks d1, and its outbox row stays
        strong = cb.query("notes", text="banana", mode="bm25", consistency="strong")
        assert [h.id for h in strong.hits] == ["d1"], "B's strong query missed a committed write"
        b.text_indexes.follow_once()
        later = cb.query("notes", text="banana", mode="bm25", consistency="strong")
        assert [h.id for h in later.hits] == ["d1"]
    finally:
        b.close()
        a.close()


def test_a_live_process_silent_past_the_stale_limit(scratch_database: str, tmp_path: Path) -> None:
    """Different data directories: B (paused an hour, e.g. a frozen VM) is passed by A's
    prune; when it resumes, its index open in memory is below the horizon and rebuilds."""
    a = quiet_engine(scratch_database, tmp_path / "a")
    b = quiet_engine(scratch_database, tmp_path / "b")
    try:
        ca, cb = unidb.Client(backend=a), unidb.Client(backend=b)
        ca.create_collection("notes", dim=2)
        ca.upsert("notes", [{"id": "d0", "text": "apple", "embedding": [1, 0]}])
        assert [h.id for h in cb.query("notes", text="apple", mode="bm25").hits] == ["d0"]
        ca.upsert("notes", [{"id": "d1", "text": "banana", "embedding": [0, 1]}])
        with a.transaction(service_wide=True) as conn:
            conn.execute("UPDATE unidb.outbox_followers SET seen_at = now() - interval '2 hours'"
                         " WHERE name = %s", (b.retention.name,))  # fmt: skip
        a.text_indexes.follow_once()
        with a.transaction(service_wide=True) as conn:
            registry.invalidate(conn)
        a.retention.run_once()
        b.retention.run_once()  # B resumes: reports, reads the horizon
        b.text_indexes.follow_once()  # and its tailer runs
        got = [
            h.id for h in cb.query("notes", text="banana", mode="bm25", consistency="strong").hits
        ]
        assert got == ["d1"]
    finally:
        b.close()
        a.close()
