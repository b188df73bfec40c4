"""A strong query's mask is computed against the watermark its BM25 searcher had, even
when the tailer applies a change while the query's round trip is in flight."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import unidb
from unidb.service.config import Settings
from unidb.service.engine import Engine

from .conftest import _service_url


@pytest.fixture
def quiet(scratch_database: str, tmp_path: Path) -> Iterator[Engine]:
    engine = Engine.start(
        Settings(
            database_url=_service_url(scratch_database),
            migration_database_url=scratch_database,
            data_dir=tmp_path / "data",
            outbox_prune_interval_s=3600,
            tailer_interval_s=3600,
        ),
        take_over_jobs=False,
    )
    try:
        yield engine
    finally:
        engine.close()


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_tailer_applying_during_the_round_trip(quiet: Engine, mode: str) -> None:
    client = unidb.Client(backend=quiet)
    client.create_collection("notes", dim=2)
    client.upsert("notes", [{"id": "d0", "text": "apple", "embedding": [1, 0]}])
    with quiet.transaction() as conn:
        (cid,) = conn.execute("SELECT id FROM unidb.collections WHERE name='notes'").fetchone()
    quiet.text_indexes.refresh(cid)
    client.upsert("notes", [{"id": "d1", "text": "banana", "embedding": [0, 1]}])  # pending

    index = quiet.text_indexes.get(cid)
    real, calls = index.search, []

    def search(text, **kw):
        found = real(text, **kw)
        calls.append(found)
        if len(calls) == (2 if mode == "bm25" else 1):  # the `meanwhile` search
            quiet.text_indexes.refresh(cid)  # the tailer's pass lands now
        return found

    index.search = search  # type: ignore[method-assign]
    kwargs = {"vector": [1, 0]} if mode == "hybrid" else {}
    answer = client.query("notes", text="banana", mode=mode, consistency="strong", k=5, **kwargs)
    assert "d1" in [h.id for h in answer.hits], "strong query missed a committed write"
