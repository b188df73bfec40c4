"""`unidb serve` as a user runs it: a subprocess on embedded Postgres, stopped by a signal."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import unidb

from .conftest import free_port

pytestmark = pytest.mark.slow


def _start_serve(
    data_dir: Path, port: int, env: dict[str, str] | None = None, *flags: str
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "unidb.service.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            *flags,
        ],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"unidb serve exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).json() == {"status": "ok"}:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("unidb serve did not become healthy")


def _stop(process: subprocess.Popen[bytes], sig: int) -> str:
    process.send_signal(sig)
    output, _ = process.communicate(timeout=60)
    # after a graceful shutdown uvicorn re-raises the signal, so the exit reports it
    assert process.returncode in (0, -sig), output.decode()
    assert "embedded Postgres stopped" in output.decode()
    return output.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_rows_survive_a_restart(tmp_path: Path, sig: int) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start_serve(data_dir, port)
    try:
        _wait_healthy(url, process)
        with unidb.Client(url) as client:
            client.create_collection("kept", dim=3)
            client.upsert(
                "kept",
                [
                    {"id": f"k{i}", "text": f"row {i}", "embedding": [1.0, i, 0.0]}
                    for i in range(25)
                ],
            )
    finally:
        if process.poll() is None:
            _stop(process, sig)
    # Postgres stopped with the service: no postmaster left behind
    assert not (data_dir / "pg" / "postmaster.pid").exists()

    process = _start_serve(data_dir, port)
    try:
        _wait_healthy(url, process)
        with unidb.Client(url) as client:
            assert client.get_collection("kept").documents == 25
            assert client.get("kept", "k24").text == "row 24"
            hits = client.query("kept", vector=[1.0, 3.0, 0.0], k=1, mode="vector").hits
            assert hits[0].id == "k3"
    finally:
        _stop(process, signal.SIGTERM)


def _debian_postgres() -> Path | None:
    for version in ("17", "16", "15"):
        bin_dir = Path(f"/usr/lib/postgresql/{version}/bin")
        if (bin_dir / "initdb").exists():
            return bin_dir
    return None


@pytest.fixture
def postgres_without_pgvector() -> Iterator[str]:
    """A real Postgres server from the OS packages, which ship no pgvector."""
    bin_dir = _debian_postgres()
    if bin_dir is None:
        pytest.skip("no OS Postgres binaries to run a server without pgvector")
    if (bin_dir.parent / "share/extension/vector.control").exists() or Path(
        f"/usr/share/postgresql/{bin_dir.parent.name}/extension/vector.control"
    ).exists():
        pytest.skip("the OS Postgres has pgvector installed")
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="unidb-novector-"))
    root.chmod(0o777)
    pgdata = root / "data"
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(pgdata),
            "-w",
            "-l",
            str(root / "log"),
            "-o",
            f"-k {root} -c listen_addresses=''",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@/postgres?host={root}"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_server_without_pgvector_gets_a_clear_error(
    postgres_without_pgvector: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unidb.service.cli",
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path),
        ],
        env={**os.environ, "UNIDB_DATABASE_URL": postgres_without_pgvector},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no `vector` extension" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unreachable_database_gets_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "unidb.service.cli", "migrate"],
        env={**os.environ, "UNIDB_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot connect to Postgres" in result.stderr
    assert "Traceback" not in result.stderr


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_workers_answer_on_one_port_and_share_the_indexes(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start_serve(tmp_path / "data", port, None, "--workers", "2")
    try:
        _wait_healthy(url, process, timeout=120)
        with unidb.Client(url) as client:
            client.create_collection("shared", dim=2)
            client.upsert(
                "shared",
                [{"id": f"d{i}", "text": f"zebra {i}", "embedding": [1, i]} for i in range(5)],
            )
            # strong reads, whichever worker answers: every write is seen at once
            for _ in range(20):
                found = client.query("shared", text="zebra", mode="bm25", k=10).hits
                assert len(found) == 5
        python_children = [
            child for child in _children(process.pid)
            if "python" in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        ]  # fmt: skip
        assert len(python_children) >= 2, python_children
    finally:
        output = _stop(process, signal.SIGTERM)
    assert "answering with 2 worker processes" in output
