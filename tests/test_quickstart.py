"""The README's first command ends in `unidb quickstart`: it must serve real SciFact hits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import free_port, scifact

pytestmark = pytest.mark.slow


def test_quickstart_serves_a_real_query(tmp_path: Path) -> None:
    data = scifact()
    command = [
        sys.executable, "-m", "unidb.service.cli", "quickstart", "--exit", "--limit", "60",
        "--data-dir", str(tmp_path), "--port", str(free_port()), "--data", str(data),
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "loaded 60 SciFact abstracts (60 new or changed)" in first.stdout
    hits = [
        line for line in first.stdout.splitlines() if line[:2] in {f"{i}." for i in range(1, 6)}
    ]
    assert len(hits) == 5
    assert "judged relevant" in first.stdout
    # a second run finds the data in place and answers the same
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already holds the first 60" in second.stdout
    assert [
        line for line in second.stdout.splitlines() if line[:2] in {f"{i}." for i in range(1, 6)}
    ] == hits
