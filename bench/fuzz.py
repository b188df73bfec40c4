"""Fuzz the REST API from its OpenAPI schema (schemathesis) and print the counts.

    python bench/fuzz.py [--examples 60]

Runs `--examples` generated requests per operation (at least 1,000 in all by default)
against `unidb serve` on loopback over an embedded Postgres in a temporary directory, the
same check as tests/test_fuzz.py with more examples: no 5xx, and a refused request changes
no row. Prints one JSON line with the counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import free_port  # noqa: E402
from tests.test_fuzz import fuzz  # noqa: E402
from unidb.service.api.main import create_app  # noqa: E402
from unidb.service.engine import Engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=60, help="per operation")
    args = parser.parse_args()
    logging.getLogger("unidb").setLevel(logging.CRITICAL)  # refused requests are expected
    with tempfile.TemporaryDirectory(prefix="unidb-fuzz-") as tmp:
        engine = Engine.open_embedded(Path(tmp), max_body_bytes=4 * 1024 * 1024)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(engine=engine), port=port, log_level="critical")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        began = time.perf_counter()
        try:
            counts = fuzz(f"http://127.0.0.1:{port}", engine, args.examples)
            failed = None
        except AssertionError as exc:
            counts, failed = {}, str(exc)[:2000]
        finally:
            server.should_exit = True
            thread.join()
            engine.close()
    print(
        json.dumps(
            {
                "bench": "fuzz",
                "examples_per_operation": args.examples,
                "requests": sum(v for k, v in counts.items() if k.endswith("xx")),
                **counts,
                "failures": failed,
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
