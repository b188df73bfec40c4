"""Fuzz the REST API from its OpenAPI schema (schemathesis) and print the counts.

    python bench/fuzz.py [--examples 60] [--auth off|on]

Runs `--examples` generated requests per operation (at least 1,000 in all by default)
against `unidb serve` on loopback over an embedded Postgres in a temporary directory, the
same check as tests/test_fuzz.py with more examples: no 5xx, and a refused request changes
no row of any table. With `--auth on` it runs twice, once without a key (no keyed route may
answer 2xx) and once with a key holding every scope. Prints one JSON line per run.
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
from unidb.service import auth  # noqa: E402
from unidb.service.api.main import create_app  # noqa: E402
from unidb.service.engine import Engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=60, help="per operation")
    parser.add_argument("--auth", choices=("off", "on"), default="off")
    args = parser.parse_args()
    logging.getLogger("unidb").setLevel(logging.CRITICAL)  # refused requests are expected
    with tempfile.TemporaryDirectory(prefix="unidb-fuzz-") as tmp:
        engine = Engine.open_embedded(
            Path(tmp), max_body_bytes=4 * 1024 * 1024, auth=args.auth, operator_key="fuzz-op"
        )
        runs: list[tuple[str, dict[str, str] | None]] = [("off", None)]
        if args.auth == "on":
            with engine.transaction() as conn:
                _, key = auth.create_key(conn, "default", ["read", "write", "admin"])
            runs = [("on, no key", None), ("on, key", {"Authorization": f"Bearer {key}"})]
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(engine=engine), port=port, log_level="critical")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            for label, headers in runs:
                began = time.perf_counter()
                try:
                    counts = fuzz(
                        f"http://127.0.0.1:{port}",
                        engine,
                        args.examples,
                        headers=headers,
                        keyless=label == "on, no key",
                    )
                    failed = None
                except AssertionError as exc:
                    counts, failed = {}, str(exc)[:2000]
                print(
                    json.dumps(
                        {
                            "bench": "fuzz",
                            "auth": label,
                            "examples_per_operation": args.examples,
                            "requests": sum(v for k, v in counts.items() if k.endswith("xx")),
                            **counts,
                            "failures": failed,
                            "seconds": round(time.perf_counter() - began, 1),
                        }
                    ),
                    flush=True,
                )
        finally:
            server.should_exit = True
            thread.join()
            engine.close()


if __name__ == "__main__":
    main()
