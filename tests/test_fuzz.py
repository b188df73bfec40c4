"""schemathesis against the OpenAPI schema: no 5xx, and a refused request changes nothing."""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from unidb.service.engine import Engine

from .conftest import snapshot

# CI runs a bounded number of examples per operation; bench/fuzz.py runs many more
EXAMPLES = int(os.environ.get("UNIDB_FUZZ_EXAMPLES", "8"))


def fuzz(server_url: str, engine: Engine, examples: int) -> dict[str, int]:
    """Generated requests for every operation over real HTTP; counts by status class."""
    schema = schemathesis.openapi.from_url(f"{server_url}/openapi.json")
    counts = {"2xx": 0, "4xx": 0, "5xx": 0, "partial_writes": 0}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Any) -> None:
            before = snapshot(engine)
            response = case.call(base_url=server_url)
            status = response.status_code
            counts[f"{min(status // 100, 5)}xx" if status >= 400 else "2xx"] += 1
            if status >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {status} {response.text[:200]}"
                )
            elif status >= 400 and snapshot(engine) != before:
                counts["partial_writes"] += 1
                failures.append(f"{case.method} {case.formatted_path}: {status} changed rows")

        run()
    assert not failures, failures[:5]
    return counts


def test_no_server_errors_and_no_partial_writes(server_url: str, engine: Engine) -> None:
    counts = fuzz(server_url, engine, EXAMPLES)
    assert counts["5xx"] == counts["partial_writes"] == 0
    assert counts["2xx"] > 0 and counts["4xx"] > 0  # it reached both sides of validation
