"""A first FAISS build holds the outbox from its watermark until its manifest is on disk
(its read's snapshot stays open), so a prune meanwhile leaves it what it will merge."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import unidb
from unidb.indexing import snapshots
from unidb.models import IndexBuildRequest, QueryRequest
from unidb.service.context import registry
from unidb.service.search import ann_indexes

from .conftest import quiet_engine
from .test_outbox_retention import _collection_id, _wait_done


def test_first_build_window(scratch_database: str, tmp_path: Path, monkeypatch) -> None:
    a = quiet_engine(scratch_database, tmp_path / "d")
    b = quiet_engine(scratch_database, tmp_path / "d")  # a --workers sibling, horizon read at start
    try:
        ca, _cb = unidb.Client(backend=a), unidb.Client(backend=b)
        ca.create_collection("vectors", dim=4, metric="l2")
        rng = np.random.default_rng(5)
        ca.upsert(
            "vectors",
            [
                {"id": f"v{i}", "text": f"doc {i}", "embedding": rng.standard_normal(4).tolist()}
                for i in range(300)
            ],
        )
        real_write = snapshots.write

        def write(root, index, manifest):
            # meanwhile: a write lands, and a heartbeat's report and prune run
            ca.upsert("vectors", [{"id": "new", "text": "x", "embedding": [9, 9, 9, 9]}])
            a.text_indexes.follow_once()
            with a.transaction(service_wide=True) as conn:
                registry.invalidate(conn)
            a.retention.run_once()
            return real_write(root, index, manifest)

        monkeypatch.setattr(ann_indexes.snapshots, "write", write)
        _wait_done(a, a.build_index("vectors", IndexBuildRequest(kind="hnsw")).id)
        monkeypatch.setattr(ann_indexes.snapshots, "write", real_write)
        _collection_id(a, "vectors")
        near = QueryRequest(vector=[9, 9, 9, 9], mode="vector", k=1, consistency="strong")
        a.query("vectors", near)
        on_b = b.query("vectors", near)
        assert [h.id for h in on_b.hits] == ["new"]
    finally:
        b.close()
        a.close()
