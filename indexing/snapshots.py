"""ANN snapshots on disk, swapped atomically.

A snapshot is a FAISS index file and a manifest naming it with the outbox watermark it
holds everything below. Both are written to a temporary name, fsynced and renamed; the
manifest's rename is the switch, so a reader sees the old snapshot or the new one, never a
torn one, and a crash mid-build leaves the old snapshot serving.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    file: str
    watermark: int
    count: int
    kind: str
    device: str
    metric: str
    dim: int
    built_at: float
    job_id: int | None = None
    search: dict[str, Any] = field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_rename(tmp: Path, final: Path) -> None:
    with tmp.open("rb") as stream:
        os.fsync(stream.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def write(root: Path, index: faiss.Index, manifest: Manifest) -> None:
    """Store ``index`` under ``root`` and make it the current snapshot."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / manifest.file
    tmp = root / f".{manifest.file}.tmp"
    faiss.write_index(index, str(tmp))
    _durable_rename(tmp, final)
    manifest_tmp = root / f".{MANIFEST}.tmp"
    manifest_tmp.write_text(json.dumps(asdict(manifest)))
    _durable_rename(manifest_tmp, root / MANIFEST)
    for old in root.glob("*.faiss"):
        if old.name != manifest.file:
            old.unlink(missing_ok=True)


def read_manifest(root: Path) -> Manifest | None:
    try:
        return Manifest(**json.loads((root / MANIFEST).read_text()))
    except FileNotFoundError:
        return None


def load(root: Path, manifest: Manifest) -> faiss.Index:
    return faiss.read_index(str(root / manifest.file))


def clean_partial(root: Path) -> None:
    """Remove what an interrupted build left behind (temporary files only)."""
    for leftover in root.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
