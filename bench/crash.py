"""Kill `unidb serve` with SIGKILL during bulk ingest, restart it, and count what went missing.

    python bench/crash.py [--trials 20] [--seed 0]

Each trial (tests/test_crash.py's, which CI runs three times) ingests 200-document batches
from four clients into a new collection of an embedded-Postgres service on loopback, kills
the service at a random moment between 0.3 and 2.5 s (every second trial kills its
Postgres too), restarts it, and compares what the clients were told with what Postgres and
the BM25 index hold. Prints one JSON line per trial and a summary line; the target is
lost = ghosts = partial = 0. There is no peer figure: the only acceptable count is zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_crash import run_trials  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="unidb-crash-") as tmp:
        results = run_trials(Path(tmp) / "data", args.trials, seed=args.seed)
    for result in results:
        print(json.dumps({"bench": "crash_trial", **asdict(result)}))
    print(
        json.dumps(
            {
                "bench": "crash",
                "trials": len(results),
                "postgres_killed_too": sum(r.killed_postgres for r in results),
                "acknowledged_documents": sum(r.acknowledged_documents for r in results),
                "lost": sum(r.lost for r in results),
                "ghosts": sum(r.ghosts for r in results),
                "partial_batches": sum(r.partial for r in results),
                "unindexed": sum(r.unindexed for r in results),
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
