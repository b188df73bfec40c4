"""schemathesis against the OpenAPI schema: no 5xx, and a refused request changes nothing in
any table, with keys off, and with keys on both without a key and with one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr

from unidb.service import auth
from unidb.service.engine import Engine

# CI runs a bounded number of examples per operation; bench/fuzz.py runs many more
EXAMPLES = int(os.environ.get("UNIDB_FUZZ_EXAMPLES", "8"))

# every table a request could write, each summed so that any insert, delete or update of
# what a request owns shows; jobs are counted only (running ones beat their heartbeat)
_EVERY_TABLE = """
SELECT (SELECT count(*) FROM unidb.collections),
       (SELECT count(*) FROM unidb.documents),
       (SELECT coalesce(sum(version), 0) FROM unidb.documents),
       (SELECT count(*) FROM unidb.chunks),
       (SELECT coalesce(max(seq), 0) FROM unidb.changes),
       (SELECT count(*) FROM unidb.state),
       (SELECT coalesce(sum(version), 0) FROM unidb.state),
       (SELECT count(*) FROM unidb.jobs),
       (SELECT count(*) FROM unidb.prefixes),
       (SELECT count(*) FROM unidb.context_sessions),
       (SELECT count(*) FROM unidb.api_keys),
       (SELECT count(revoked_at) FROM unidb.api_keys)
"""


_KEYED = ("/v1", "/metrics", "/mcp")


def every_table(engine: Engine) -> tuple[Any, ...]:
    with engine.transaction(service_wide=True) as conn:
        row = conn.execute(_EVERY_TABLE).fetchone()
    assert row is not None
    return tuple(row)


def fuzz(
    server_url: str,
    engine: Engine,
    examples: int,
    *,
    headers: dict[str, str] | None = None,
    keyless: bool = False,
) -> dict[str, int]:
    """Generated requests for every operation over real HTTP; counts by status class.

    ``keyless``: keys are on and the requests carry none, so every keyed route must answer
    401 (or refuse the request's shape first) and nothing may change."""
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
            before = every_table(engine)
            response = case.call(base_url=server_url, headers=headers)
            status = response.status_code
            counts[f"{min(status // 100, 5)}xx" if status >= 400 else "2xx"] += 1
            if status >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {status} {response.text[:200]}"
                )
            elif status >= 400 and every_table(engine) != before:
                counts["partial_writes"] += 1
                failures.append(f"{case.method} {case.formatted_path}: {status} changed rows")
            elif keyless and case.operation.path.startswith(_KEYED) and status < 400:
                failures.append(f"{case.method} {case.formatted_path}: {status} without a key")

        run()
    assert not failures, failures[:5]
    return counts


@pytest.fixture
def keys_on(engine: Engine) -> Iterator[str]:
    """Keys required on the session's engine; yields a key with every scope."""
    plain = engine.settings
    engine.settings = plain.model_copy(
        update={"auth": "on", "operator_key": SecretStr("fuzz-operator")}
    )
    with engine.transaction() as conn:
        _, key = auth.create_key(conn, "default", ["read", "write", "admin"])
    try:
        yield key
    finally:
        engine.settings = plain


def test_no_server_errors_and_no_partial_writes(server_url: str, engine: Engine) -> None:
    counts = fuzz(server_url, engine, EXAMPLES)
    assert counts["5xx"] == counts["partial_writes"] == 0
    assert counts["2xx"] > 0 and counts["4xx"] > 0  # it reached both sides of validation


def test_with_keys_on_and_no_key_nothing_is_reached(
    server_url: str, engine: Engine, keys_on: str
) -> None:
    counts = fuzz(server_url, engine, EXAMPLES, keyless=True)
    assert counts["5xx"] == counts["partial_writes"] == 0
    assert counts["4xx"] > counts["2xx"] > 0  # only /healthz and the docs answer


def test_with_keys_on_and_a_key_nothing_breaks(
    server_url: str, engine: Engine, keys_on: str
) -> None:
    counts = fuzz(server_url, engine, EXAMPLES, headers={"Authorization": f"Bearer {keys_on}"})
    assert counts["5xx"] == counts["partial_writes"] == 0
    assert counts["2xx"] > 0 and counts["4xx"] > 0
