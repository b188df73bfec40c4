"""`unidb ingest`: BEIR and unidb lines, batches through COPY, idempotent re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import unidb
from unidb.service.cli.main import main
from unidb.service.engine import Engine
from unidb.service.ingest import ingest_file

from .conftest import scifact


def _write_unidb_lines(path: Path, n: int, dim: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(1)
    docs = [
        {
            "id": f"u{i}",
            "text": f"doc {i}",
            "metadata": {"i": i},
            "embedding": rng.normal(size=dim).round(6).tolist(),
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return docs


def test_ingest_unidb_lines_then_rerun_changes_nothing(
    engine: Engine, collection: str, tmp_path: Path
) -> None:
    path = tmp_path / "docs.jsonl"
    docs = _write_unidb_lines(path, 1234, 8)
    first = ingest_file(engine, path, collection=collection, batch_size=300, show_progress=False)
    assert (first.lines, first.written, first.unchanged) == (1234, 1234, 0)
    client = unidb.Client(backend=engine)
    stored = client.get(collection, "u77")
    assert stored.metadata == {"i": 77}
    assert stored.embedding == pytest.approx(docs[77]["embedding"], rel=1e-6)

    with engine.transaction() as conn:
        seq_before = conn.execute("SELECT max(seq) FROM unidb.changes").fetchone()
    again = ingest_file(engine, path, collection=collection, batch_size=500, show_progress=False)
    assert (again.lines, again.written, again.unchanged) == (1234, 0, 1234)
    info = client.get_collection(collection)
    assert info.documents == 1234 and info.dim == 8
    assert client.get(collection, "u77").version == 1
    with engine.transaction() as conn:
        assert conn.execute("SELECT max(seq) FROM unidb.changes").fetchone() == seq_before


def test_ingest_beir_lines_keeps_title_in_metadata(
    engine: Engine, collection: str, tmp_path: Path
) -> None:
    corpus = scifact() / "corpus.jsonl"
    sample = tmp_path / "corpus.jsonl"
    with corpus.open() as source:
        sample.write_text("".join(next(source) for _ in range(50)))
    report = ingest_file(
        engine, sample, collection=collection, batch_size=20, dim=384, show_progress=False
    )
    assert report.written == 50
    first = json.loads(sample.read_text().splitlines()[0])
    stored = unidb.Client(backend=engine).get(collection, first["_id"])
    assert stored.text == first["text"]
    assert stored.metadata == {"title": first["title"]}
    assert stored.embedding is None


def test_bad_line_stops_with_its_number(engine: Engine, collection: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"id": "a", "embedding": [1, 2]}\n{"id": "b", "embedding": [1, 2]}\n{"id": "c", "embedding": "x"}\n'
    )
    with pytest.raises(unidb.InvalidInput) as error:
        ingest_file(engine, path, collection=collection, batch_size=10, show_progress=False)
    assert error.value.field == "line 3"
    # validation happens before the batch is written: nothing from it landed
    assert unidb.Client(backend=engine).get_collection(collection).documents == 0


def test_cli_ingest_against_a_running_server(
    server_url: str, collection: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "docs.jsonl"
    _write_unidb_lines(path, 40, 4)
    code = main(
        ["ingest", str(path), "--collection", collection, "--url", server_url, "--batch-size", "16"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    job = report.pop("index_job")
    assert report == {"lines": 40, "written": 40, "unchanged": 0}
    assert job["status"] == "done" and job["error"] is None  # the FAISS index, built after
    code = main(["query", collection, "--vector", "[1, 0, 0, 0]", "--k", "3", "--url", server_url])
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["hits"]) == 3 and answer["vector_index"] == "faiss"
    # the same file again writes nothing, so nothing is rebuilt
    code = main(
        ["ingest", str(path), "--collection", collection, "--url", server_url, "--batch-size", "16"]
    )
    assert code == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["unchanged"] == 40 and again["index_job"] is None
    # a pgvector HNSW index is built in the database directly, not through a server
    code = main(["ingest", str(path), "--collection", collection, "--url", server_url,
                 "--pgvector-hnsw"])  # fmt: skip
    assert code == 2
    assert "--pgvector-hnsw" in capsys.readouterr().err


def test_cli_reports_errors_without_a_traceback(
    server_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["query", "no_such_collection", "--vector", "[1, 0]", "--url", server_url])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
