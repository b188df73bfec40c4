"""A FAISS snapshot left below the pruned horizon (not served) holds nothing back, so
retention goes on for the other collections, and it is queued for a rebuild."""

from __future__ import annotations

import numpy as np

import unidb
from unidb.models import IndexBuildRequest

from .test_outbox_retention import _collection_id, _others_caught_up, _rows, _wait_done, own  # noqa: F401 - the fixture


def test_snapshot_below_horizon_stalls_retention(own) -> None:  # noqa: F811
    client = unidb.Client(backend=own)
    client.create_collection("vectors", dim=4, metric="l2")
    client.create_collection("busy", dim=2)
    rng = np.random.default_rng(5)
    client.upsert("vectors", [{"id": f"v{i}", "embedding": rng.standard_normal(4).tolist()}
                              for i in range(300)])  # fmt: skip
    _wait_done(own, own.build_index("vectors", IndexBuildRequest(kind="hnsw")).id)
    watermark = own.ann.get(_collection_id(own, "vectors")).manifest.watermark
    client.upsert("vectors", [{"id": "new", "embedding": [9, 9, 9, 9]}])
    # this directory silent for a while (a long GC pause, a stopped container): passed
    with own.transaction(service_wide=True) as conn:
        conn.execute("UPDATE unidb.outbox_followers SET seen_at = now() - interval '2 hours'"
                     " WHERE name = %s", (own.retention.name,))  # fmt: skip
    _others_caught_up(own)
    past = own.retention.prune()
    assert past.horizon > watermark
    # it comes back; the other collection keeps taking writes
    busy = _collection_id(own, "busy")
    for round_ in range(3):
        client.upsert("busy", [{"id": f"b{i}", "text": f"t{round_}", "embedding": [1, i]}
                               for i in range(50)])  # fmt: skip
        _others_caught_up(own)
        own.retention.run_once()
    assert _rows(own, "collection_id = %s", (busy,)) == 0, "retention stalled"
    # not served, whatever its lag says: rebuilt (by this call, or the heartbeat's)
    own.jobs.rebuild_behind()
    with own.transaction() as conn:
        (rebuilds,) = conn.execute(
            "SELECT count(*) FROM unidb.jobs WHERE collection_id = %s"
            " AND (params->>'rebuild')::boolean",
            (_collection_id(own, "vectors"),),
        ).fetchone()
    assert rebuilds == 1
