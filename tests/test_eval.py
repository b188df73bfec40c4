"""`unidb eval` on a slice of SciFact, with the real MiniLM model and real indexes."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

import unidb
from unidb.models import CollectionCreate
from unidb.service.cli.evaluation import evaluate, sweep, tune
from unidb.service.cli.main import main
from unidb.service.engine import Engine

from .conftest import SCIFACT, scifact

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def beir_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scifact()
    folder = tmp_path_factory.mktemp("scifact_slice")
    lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()[:150]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    ids = {json.loads(line)["_id"] for line in lines}
    (folder / "queries.jsonl").write_text((SCIFACT / "queries.jsonl").read_text())
    with (SCIFACT / "qrels-test.tsv").open() as source:
        kept = [row for row in csv.DictReader(source, delimiter="\t") if row["corpus-id"] in ids]
    assert len(kept) >= 5
    (folder / "qrels-test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{r['query-id']}\t{r['corpus-id']}\t{r['score']}\n" for r in kept)
    )
    return folder


def test_eval_reports_every_mode(engine: Engine, beir_slice: Path) -> None:
    results = evaluate(
        engine, beir_slice, modes=["bm25", "vector", "hybrid"], collection="t_eval_slice"
    )
    try:
        by_mode = {r.mode: r for r in results}
        assert set(by_mode) == {"bm25", "vector", "hybrid"}
        for result in results:
            assert 0.0 <= result.ndcg_at_10 <= 1.0 and result.qps > 0
            assert result.queries >= 5
        # on a slice this small every method finds most judged abstracts near the top
        assert by_mode["bm25"].ndcg_at_10 > 0.6
        assert by_mode["vector"].ndcg_at_10 > 0.6
        assert (
            by_mode["hybrid"].recall_at_100
            >= max(by_mode["bm25"].recall_at_100, by_mode["vector"].recall_at_100) - 1e-9
        )
        weighted = evaluate(
            engine, beir_slice, modes=["hybrid"], fusion="weighted", alpha=0.3,
            collection="t_eval_slice", reuse=True,
        )[0]  # fmt: skip
        assert (weighted.fusion, weighted.alpha) == ("weighted", 0.3)

        grid = sweep(engine, beir_slice, alphas=(0.3, 0.8), collection="t_eval_slice", reuse=True)
        settings = [(r.fusion, r.alpha) for r in grid]
        assert settings == [("rrf", None), ("weighted", 0.3), ("weighted", 0.8),
                            ("relative", 0.3), ("relative", 0.8), ("dbsf", 0.3), ("dbsf", 0.8)]  # fmt: skip
        assert all(r.mode == "hybrid" and 0.0 < r.ndcg_at_10 <= 1.0 for r in grid)
        # the sweep's point is the single run's: the same queries, the same ranking
        assert grid[1].ndcg_at_10 == pytest.approx(weighted.ndcg_at_10)
    finally:
        engine.delete_collection("t_eval_slice")


def test_eval_cli_prints_one_json_object_per_mode(
    database_url: str, beir_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("UNIDB_DATABASE_URL", database_url)
    code = main(["eval", str(beir_slice), "--mode", "bm25", "--json", "--collection", "t_eval_cli",
                 "--data-dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["mode"] == "bm25" and record["dataset"] == beir_slice.name
    assert {"ndcg@10", "recall@100", "mrr@10", "qps"} <= set(record)
    monkeypatch.setenv("UNIDB_DATABASE_URL", database_url)
    from unidb.service.config import Settings

    cleanup = Engine.start(Settings(database_url=database_url, data_dir=tmp_path))
    try:
        cleanup.delete_collection("t_eval_cli")
    finally:
        cleanup.close()


def test_tune_stores_the_best_setting_and_queries_use_it(engine: Engine, beir_slice: Path) -> None:
    client = unidb.Client(backend=engine)
    evaluate(engine, beir_slice, modes=["bm25"], collection="t_tune_slice")
    try:
        results, best = tune(
            engine,
            "t_tune_slice",
            queries_file=beir_slice / "queries.jsonl",
            qrels_file=beir_slice / "qrels-test.tsv",
            alphas=(0.2, 0.9),
        )
        assert best.ndcg_at_10 == max(r.ndcg_at_10 for r in results)
        stored = client.get_collection("t_tune_slice").query_defaults
        assert stored is not None and stored.fusion == best.fusion
        assert stored.alpha == (best.alpha if best.alpha is not None else 0.5)
        assert stored.note is not None and "qrels-test.tsv" in stored.note

        # a query naming no fusion now fuses as stored; one naming its own keeps it
        client.set_query_defaults("t_tune_slice", fusion="weighted", alpha=0.9)
        text = "vitamin D and cancer risk"
        unnamed = client.query("t_tune_slice", text=text, k=10)
        stored_way = client.query("t_tune_slice", text=text, k=10, fusion="weighted", alpha=0.9)
        default_way = client.query("t_tune_slice", text=text, k=10, fusion="weighted", alpha=0.5)
        assert [(h.id, h.score) for h in unnamed.hits] == [(h.id, h.score) for h in stored_way.hits]
        assert [h.score for h in unnamed.hits] != [h.score for h in default_way.hits]
        with pytest.raises(unidb.InvalidInput):
            client.set_query_defaults("t_tune_slice", fusion="weighted", alpha=1.5)
        assert client.get_collection("t_tune_slice").query_defaults.alpha == 0.9  # type: ignore[union-attr]
        cleared = client.set_query_defaults("t_tune_slice")
        assert cleared.query_defaults is None
        back = client.query("t_tune_slice", text=text, k=10)
        assert [h.score for h in back.hits] == [h.score for h in default_way.hits]
    finally:
        engine.delete_collection("t_tune_slice")


def test_query_defaults_over_rest(api: Any, engine: Engine, collection: str) -> None:
    engine.create_collection(CollectionCreate(name=collection, dim=4))
    path = f"/v1/collections/{collection}/query-defaults"
    wrong = api.put(path, json={"fusion": "loudest", "alpha": 0.5})
    assert wrong.status_code == 400 and wrong.json()["error"]["field"] == "fusion"
    assert api.get(f"/v1/collections/{collection}").json()["query_defaults"] is None
    stored = api.put(path, json={"fusion": "rrf", "alpha": 0.3})
    assert stored.status_code == 200 and stored.json()["query_defaults"]["fusion"] == "rrf"
    assert api.put("/v1/collections/nope_nope/query-defaults",
                   json={"fusion": "rrf", "alpha": 0.3}).status_code == 404  # fmt: skip
    assert api.delete(path).json()["query_defaults"] is None
