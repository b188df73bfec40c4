"""The README's first command ends in `unidb quickstart`. From a wheel, in a fresh venv with
no checkout or shared data in reach, it loads the documentation it ships and walks the
tour to its last line; with ``--data`` it loads a BEIR folder and marks judged hits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import REPO, free_port, scifact

pytestmark = pytest.mark.slow

HIT_LINE = re.compile(r"^\s+(\d+)\s+([\d.]+|-)\s+([\d.]+|-)\s+([\d.]+|-)\s+(\S+):")
PACKAGE_SOURCES = ["pyproject.toml", "README.md", "sdk", "schema", "indexing", "service"]


def _hits(stdout: str, section: str) -> list[tuple[str, ...]]:
    """The hit rows printed under the tour's step ``section`` (its number)."""
    part = stdout.split(f"\n{section}. ", 1)[1].split("\n\n", 1)[0]
    return [match.groups() for line in part.splitlines() if (match := HIT_LINE.match(line))]


def _fresh_venv_with_wheel(tmp_path: Path) -> Path:
    """A new venv holding only the wheel built from this checkout; the wheel's dependencies
    come from this test's venv through a path file (installing torch and the rest again
    would take minutes), and neither the checkout nor its editable hook is on that path."""
    source = tmp_path / "source"
    source.mkdir()
    for name in PACKAGE_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(wheels), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("unidb-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_quickstart_from_a_wheel_walks_the_tour(tmp_path: Path) -> None:
    venv = _fresh_venv_with_wheel(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("UNIDB_")
    }
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import unidb; print(unidb.__file__)"],
        cwd=elsewhere, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(venv)), where  # the wheel's package, not the checkout's

    command = [str(venv / "bin" / "unidb"), "quickstart", "--exit",
               "--data-dir", str(tmp_path / "data"), "--port", str(free_port())]  # fmt: skip
    first = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    loaded = re.search(r"(\d+) documents: (\d+) written, 0 unchanged", out)
    assert loaded and loaded.group(1) == loaded.group(2) and int(loaded.group(1)) > 50, out
    hybrid = _hits(out, "2")
    assert len(hybrid) == 5
    # every hit carries both retrievers' scores beside the fused one
    assert all("-" not in row[1:4] for row in hybrid), hybrid
    assert [float(row[1]) for row in hybrid] == sorted((float(r[1]) for r in hybrid), reverse=True)
    assert "found it first" in out and "did NOT" not in out
    assert _hits(out, "3")[0][4] == "quickstart-note"
    assert re.search(r"\d+ prompt tokens, \d+ of them retrieved context in 3 segments", out)
    assert re.search(r"prefix key [0-9a-f]{16}", out)
    assert out.rstrip().splitlines()[-1].endswith("the REST API, browsable")
    # quiet: unidb's own lifecycle lines and the load's progress bar, nothing else
    chatter = [
        line for line in first.stderr.splitlines()
        if line.strip() and " INFO unidb." not in line and not line.startswith("ingest ")
    ]  # fmt: skip
    assert chatter == []
    assert "schema migrated to" in first.stderr

    # a second run finds the corpus in place (the note it wrote gone again) and answers alike
    second = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{loaded.group(1)} documents: 0 written, {loaded.group(1)} unchanged" in second.stdout
    # (the first run's query may score rows the index had not reached, with the statistics
    # of a partly built index: the order of near ties below the top can differ)
    assert _hits(second.stdout, "2")[0][4] == hybrid[0][4]


def test_quickstart_loads_a_beir_folder(tmp_path: Path) -> None:
    data = scifact()
    command = [
        sys.executable, "-m", "unidb.service.cli", "quickstart", "--exit", "--limit", "60",
        "--data-dir", str(tmp_path), "--port", str(free_port()), "--data", str(data),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "60 documents: 60 written, 0 unchanged" in run.stdout
    hits = _hits(run.stdout, "2")
    assert len(hits) == 5
    assert "judged relevant" in run.stdout
    assert re.search(r"[1-9] of the \d+ judged relevant documents in the top 5", run.stdout)


def test_quickstart_refuses_a_folder_that_is_not_beir(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "unidb.service.cli", "quickstart", "--exit",
        "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), "--data", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert f"{tmp_path} holds no corpus.jsonl" in run.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started
