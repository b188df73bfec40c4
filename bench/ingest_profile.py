"""Where the embedded ingest's time goes: CPU seconds of Postgres's backends and of this
process's threads, beside the wall time, with the BM25 tailer on and off.

    python bench/ingest_profile.py

Prints one JSON line per setting.
"""

import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from scale import Corpus  # noqa: E402

import unidb  # noqa: E402

N = 100_000
c = Corpus(N)
docs = list(c.documents(0, N))  # prepared before timing, as an application holds them


def threads() -> Counter:
    out = Counter()
    for t in Path("/proc/self/task").iterdir():
        try:
            name = (t / "comm").read_text().strip()
            f = (t / "stat").read_text().rsplit(")", 1)[1].split()
            out[name] += (int(f[11]) + int(f[12])) / 100
        except OSError:
            pass
    return out


def postgres_cpu(root: psutil.Process) -> float:
    total = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if "postgres" in (p.info["name"] or ""):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


for bm25 in (True, False):
    with (
        tempfile.TemporaryDirectory() as tmp,
        unidb.Client.embedded(
            Path(tmp), ann_auto_build_rows=0, **({} if bm25 else {"tailer_interval_s": 3600})
        ) as client,
    ):
        client.create_collection("p", dim=384)
        before_t, before_pg = threads(), postgres_cpu(psutil.Process())
        t = time.perf_counter()
        client.ingest("p", docs, batch_size=2000)
        wall = time.perf_counter() - t
        after_t, after_pg = threads(), postgres_cpu(psutil.Process())
        spent = {
            k: round(after_t[k] - before_t.get(k, 0), 1)
            for k in after_t
            if after_t[k] - before_t.get(k, 0) > 0.2
        }
        print(
            json.dumps(
                {
                    "bm25_tailer": bm25,
                    "rows_s": round(N / wall),
                    "wall_s": round(wall, 1),
                    "postgres_cpu_s": round(after_pg - before_pg, 1),
                    "python_threads_cpu_s": spent,
                }
            )
        )
