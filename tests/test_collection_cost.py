"""What an idle collection costs: no threads or memory per collection, no files rewritten.

The bounds the README states: 1,000 collections, half of them holding a document, each queried
once, add fewer than 30 threads (16 open indexes and 2 tailer workers are expected) and less
than 100 MB of RSS to a process that has one collection, once the tailer has applied them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

import unidb
from unidb.indexing.bm25 import Bm25Index
from unidb.indexing.outbox import safe_watermark
from unidb.models import Document, QueryRequest
from unidb.service.config import Settings
from unidb.service.engine import Engine
from unidb.service.store import catalog

from .conftest import REPO

COLLECTIONS = 1000
THREADS = 30
SETTLE_S = 1.5
RSS_BYTES = 100 * 1024 * 1024


def _collection_id(engine: Engine, name: str) -> int:
    with engine.transaction() as conn:
        return catalog.get(conn, name).id


def _bm25(engine: Engine, name: str, text: str) -> list[str]:
    return [hit.id for hit in engine.query(name, QueryRequest(text=text, mode="bm25")).hits]


def _thread_names() -> Counter[str]:
    names: Counter[str] = Counter()
    for task in Path("/proc/self/task").iterdir():
        try:
            names[(task / "comm").read_text().strip()] += 1
        except OSError:  # ended meanwhile
            pass
    return names


def measure(database_url: str, data_dir: str, count: int) -> dict[str, Any]:
    """Run in a process of its own: the threads and RSS that ``count`` collections add."""
    process = psutil.Process()
    engine = Engine.start(Settings(database_url=database_url, data_dir=Path(data_dir)))
    client = unidb.Client(backend=engine)
    prefix = f"cost_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_{i}" for i in range(count)]
    made: list[str] = []

    def settled() -> tuple[int, int, Counter[str]]:
        engine.text_indexes.follow_once()  # the tailer has applied every write
        time.sleep(SETTLE_S)  # a closed index's file watcher ends within 0.5 s
        return process.num_threads(), process.memory_info().rss, _thread_names()

    try:
        # what the engine starts on first use is not a per-collection cost
        made.append(f"{prefix}_warm")
        client.create_collection(made[0], dim=2)
        client.upsert(made[0], [Document(id="w", text="warm", embedding=[1.0, 0.0])])
        assert _bm25(engine, made[0], "warm") == ["w"]
        threads, rss, names_before = settled()
        for i, name in enumerate(names):
            client.create_collection(name, dim=2)
            made.append(name)
            if i % 2 == 0:
                client.upsert(name, [Document(id=f"d{i}", text=f"term{i}", embedding=[0.0, 1.0])])
        answers = [_bm25(engine, name, f"term{i}") for i, name in enumerate(names)]
        threads_after, rss_after, names_after = settled()
        return {
            "answers_right": answers
            == [[f"d{i}"] if i % 2 == 0 else [] for i in range(len(names))],
            "threads": threads_after - threads,
            "rss_bytes": rss_after - rss,
            "threads_added": dict(names_after - names_before),
            "open_indexes": sum(index.is_open for index in engine.text_indexes._indexes.values()),
        }
    finally:
        for name in made:
            client.delete_collection(name)
        engine.close()


def test_a_thousand_collections_add_no_threads_or_memory_each(
    database_url: str, tmp_path: Path
) -> None:
    """In a process of its own, so that no other test's threads or memory are counted."""
    script = (
        "import json, sys; from tests.test_collection_cost import measure;"
        " print(json.dumps(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, database_url, str(tmp_path), str(COLLECTIONS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["answers_right"] is True
    assert figures["threads"] < THREADS, figures
    assert figures["rss_bytes"] < RSS_BYTES, figures


def test_an_idle_index_is_not_rewritten(
    engine: Engine, collection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other collections' writes and the prefix registry's passes move the safe watermark;
    the idle collection's index moves its watermark in memory and writes nothing (until an
    outbox-retention report, every UNIDB_OUTBOX_PRUNE_INTERVAL_S, writes the watermark: held
    off here, so the window does not depend on where that timer stands)."""
    monkeypatch.setattr(engine.retention, "run_once", lambda: None)
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(collection, [Document(id="idle", text="dormant walrus", embedding=[1, 0])])
    collection_id = _collection_id(engine, collection)
    deadline = time.monotonic() + 30
    while client.get_collection(collection).bm25.lag:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the BM25 index did not catch up"
        engine.text_indexes.refresh(collection_id)
    index = engine.text_indexes.get(collection_id)
    path = engine.text_indexes.path(collection_id)

    def files() -> dict[str, tuple[int, bytes]]:
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in path.iterdir()}

    before = files()
    on_disk = int(json.loads(before["watermark.json"][1])["watermark"])
    busy = f"{collection}_busy"
    client.create_collection(busy, dim=2)
    try:
        with engine.transaction() as conn:
            start = safe_watermark(conn)
        i = 0
        until = time.monotonic() + 10
        while time.monotonic() < until:
            client.upsert(busy, [Document(id=f"b{i}", text=f"busy {i}", embedding=[0, 1])])
            engine.context.invalidate_now()  # a prefix registry pass writes its watermark
            i += 1
            time.sleep(0.1)
        with engine.transaction() as conn:
            end = safe_watermark(conn)
        engine.text_indexes.follow_once()
    finally:
        client.delete_collection(busy)
    assert end > start
    assert files() == before
    assert index.watermark >= end > on_disk  # moved in memory only
    # a restart reads the older watermark from disk, which is still true
    reopened = Bm25Index(path)
    assert reopened.watermark == on_disk
    assert reopened.search("walrus", limit=10) == index.search("walrus", limit=10) != []
    reopened.close()
    assert _bm25(engine, collection, "walrus") == ["idle"]
