"""What a new user's terminal shows: `unidb --version`, quiet lifecycle lines (library
chatter only at debug), JSON lines for a collector, and `unidb doctor`'s one line per check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from .conftest import free_port

pytestmark = pytest.mark.slow


def _unidb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unidb.service.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        # the caller's own UNIDB_ settings would change what is printed
        env={**{k: v for k, v in os.environ.items() if not k.startswith("UNIDB_")}, **(env or {})},
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose schema is migrated already."""
    folder = tmp_path_factory.mktemp("first-hour")
    assert _unidb("migrate", "--data-dir", str(folder)).returncode == 0
    return folder


def test_version() -> None:
    run = _unidb("--version")
    assert run.returncode == 0
    assert run.stdout.strip() == f"unidb {version('unidb')}"


def test_lifecycle_lines_only_by_default_and_libraries_at_debug(tmp_path: Path) -> None:
    data_dir = tmp_path
    quiet = _unidb("migrate", "--data-dir", str(data_dir))
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.strip().splitlines()
    assert [line.split(" ", 3)[2:] for line in lines] == [
        ["INFO", f"unidb.embedded: embedded Postgres started at {data_dir / 'pg'}"],
        ["INFO", "unidb.db: schema migrated to " + lines[1].rsplit(" ", 1)[1]],
        ["INFO", "unidb.embedded: embedded Postgres stopped"],
    ]
    # the flag after the command works as well as before it; debug lets the libraries speak
    loud = _unidb("migrate", "--data-dir", str(data_dir), "--log-level", "debug")
    assert loud.returncode == 0, loud.stderr
    assert "schema at migration" in loud.stderr
    assert any(" DEBUG " in line and " unidb." not in line for line in loud.stderr.splitlines())


def test_json_lines_for_a_collector(data_dir: Path) -> None:
    run = _unidb("--log-format", "json", "migrate", "--data-dir", str(data_dir))
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stderr.strip().splitlines()]
    assert [r["logger"] for r in records] == ["unidb.embedded", "unidb.db", "unidb.embedded"]
    assert {r["level"] for r in records} == {"INFO"}
    assert records[1]["message"].startswith("schema at migration")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["time"]) for r in records)


def test_a_bad_log_level_is_named() -> None:
    run = _unidb("doctor", env={"UNIDB_LOG_LEVEL": "chatty"})
    assert run.returncode == 2
    assert "log level 'chatty': give debug, info, warning or error" in run.stderr


def test_doctor_passes_on_a_sound_install(data_dir: Path) -> None:
    run = _unidb("doctor", "--data-dir", str(data_dir))
    assert run.returncode == 0, run.stdout + run.stderr
    checks = {line[6:20].strip(): line[:4].strip() for line in run.stdout.splitlines()[:-1]}
    for name in ("unidb", "faiss", "tantivy", "minilm", "data dir", "postgres", "pgvector",
                 "schema", "engines", "outbound"):  # fmt: skip
        assert checks.get(name) == "ok", run.stdout
    assert checks.get("disk") in ("ok", "warn")  # a small temporary disk warns, rightly
    assert "PostgreSQL 18" in run.stdout and "at migration" in run.stdout
    assert run.stdout.splitlines()[-1] == "unidb doctor: all checks passed"


def test_doctor_fails_on_what_it_cannot_reach(data_dir: Path) -> None:
    closed = free_port()  # nothing listens there
    engines = json.dumps([{"name": "gpu0", "events": f"tcp://127.0.0.1:{closed}",
                           "url": f"http://127.0.0.1:{closed}"}])  # fmt: skip
    run = _unidb(
        "doctor",
        "--data-dir",
        str(data_dir),
        env={"UNIDB_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{closed}/none",
             "UNIDB_KV_ENGINES": engines},
    )  # fmt: skip
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert any(line.startswith("fail  postgres") and "cannot reach the database" in line
               for line in lines), run.stdout  # fmt: skip
    assert any(line.startswith("fail  engine gpu0") and "unreachable" in line for line in lines)
    assert lines[-1] == "unidb doctor: a check failed"


def test_doctor_creates_nothing_on_a_fresh_machine(tmp_path: Path) -> None:
    fresh = tmp_path / "not-yet"
    run = _unidb("doctor", "--data-dir", str(fresh))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warn  postgres       no cluster in" in run.stdout
    assert not fresh.exists()


def test_doctor_never_prints_a_password(data_dir: Path) -> None:
    for url in ("postgresql+psycopg://alice:s3cretpw@db.invalid/x",
                f"postgresql://alice:s3cretpw@127.0.0.1:{free_port()}/x"):  # fmt: skip
        run = _unidb("doctor", "--data-dir", str(data_dir), env={"UNIDB_DATABASE_URL": url})
        assert run.returncode == 1
        assert "fail  postgres" in run.stdout
        assert "s3cretpw" not in run.stdout + run.stderr


def test_a_setting_out_of_bounds_is_one_line_naming_it() -> None:
    run = _unidb("doctor", env={"UNIDB_PORT": "0", "UNIDB_OPERATOR_KEY": "x" * 40})
    assert run.returncode == 2
    assert run.stderr.strip() == "unidb: UNIDB_PORT: Input should be greater than or equal to 1"


def test_log_flags_after_a_nested_command() -> None:
    run = _unidb("keys", "list", "--log-level", "debug", "--help")
    assert run.returncode == 0, run.stderr
    assert "--log-format" in run.stdout
