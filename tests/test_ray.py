"""Batch work on a real local Ray cluster (loopback, started here): embedding a corpus and
building a collection's IVF index on Ray workers gives what the single-process paths give."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import unidb
from unidb.errors import InvalidInput
from unidb.indexing.embedders import get_embedder
from unidb.models import IndexBuildRequest
from unidb.service.cli.main import main
from unidb.service.engine import Engine

from .conftest import REPO, free_port

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

CORPUS = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head with two CPUs on loopback, as `ray start` runs one on a cluster's head."""
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    # loopback only: no cluster token, whatever an earlier local Ray left in ~/.ray
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_MODE", "disabled")
    patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    executable = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert executable is not None, "the ray command ships with the ray package"
    head = subprocess.Popen(
        [executable, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
         "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp)],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, "ray start exited"
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)  # fmt: skip
                break
            except ConnectionError:
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(1)
        yield address
    finally:
        ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(30)
        patch.undo()


_WORDS = (
    "vitamin deficiency stem cell differentiation tumor growth protein receptor signalling "
    "immune response gene expression mutation therapy clinical trial patients mice neurons "
    "insulin glucose metabolism inflammation vaccine antibody infection virus bacteria"
).split()


def _corpus(tmp_path: Path, lines: int) -> Path:
    """The first SciFact abstracts, or BEIR-shaped lines of random domain words where the
    shared data folder is absent."""
    path = tmp_path / "corpus.jsonl"
    if CORPUS.exists():
        with CORPUS.open("rb") as source, path.open("wb") as target:
            for _, line in zip(range(lines), source, strict=False):
                target.write(line)
        return path
    rng = np.random.default_rng(9)
    with path.open("w") as target:
        for i in range(lines):
            words = " ".join(rng.choice(_WORDS, size=40))
            target.write(json.dumps({"_id": f"s{i}", "title": f"study {i}", "text": words}) + "\n")
    return path


def test_ray_ingest_matches_the_single_process_load(
    ray_address: str, server_url: str, engine: Engine, tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path, 300)
    names = {"local": f"ray_local_{os.getpid()}", "ray": f"ray_ray_{os.getpid()}"}
    try:
        common = ["--embed", "minilm", "--batch-size", "100", "--url", server_url]
        assert main(["ingest", str(corpus), "--collection", names["local"], *common]) == 0
        assert main(["ingest", str(corpus), "--collection", names["ray"], *common,
                     "--ray", ray_address]) == 0  # fmt: skip

        client = unidb.Client(backend=engine)
        ids = [json.loads(line)["_id"] for line in corpus.read_text().splitlines()]
        for document_id in ids[::7]:
            local = client.get(names["local"], document_id)
            on_ray = client.get(names["ray"], document_id)
            assert (on_ray.text, on_ray.metadata) == (local.text, local.metadata)
            assert local.embedding is not None and on_ray.embedding is not None
            np.testing.assert_allclose(on_ray.embedding, local.embedding, atol=1e-5)
        for query in ("vitamin D deficiency", "stem cell differentiation", "tumor growth"):
            # the same nearest documents by the embeddings each load stored
            vector = get_embedder("minilm").embed_query(query)
            answers = [
                [hit.id for hit in client.query(name, vector=vector, mode="vector", k=10).hits]
                for name in names.values()
            ]
            assert answers[0] == answers[1]
    finally:
        for name in names.values():
            engine.delete_collection(name)


def test_ray_ingest_needs_an_embedder(tmp_path: Path, server_url: str) -> None:
    corpus = _corpus(tmp_path, 3)
    args = ["ingest", str(corpus), "--collection", "x", "--url", server_url, "--ray"]
    assert main(args) == 2


def test_ray_index_build_matches_the_single_process_build(
    ray_address: str, engine: Engine, collection: str
) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=32, metric="l2")
    vectors = np.random.default_rng(5).standard_normal((20_000, 32)).astype(np.float32)
    client.ingest(collection, ({"id": f"v{i}", "embedding": v} for i, v in enumerate(vectors)),
                  batch_size=500)  # fmt: skip
    params = {"nlist": 64, "nprobe": 4}
    queries = vectors[::701] + 0.05

    def answers() -> list[list[tuple[str, float]]]:
        out = []
        for query in queries:
            response = client.query(collection, vector=query, mode="vector", k=10)
            assert response.vector_index == "faiss"
            out.append([(hit.id, round(hit.score, 4)) for hit in response.hits])
        return out

    single = client.build_index(collection, kind="ivf", params=params)
    assert single.status == "done"
    expected = answers()

    request = IndexBuildRequest.model_validate({"kind": "ivf", "params": params})
    from unidb.service.jobs.distributed import build_index_on_ray

    job = build_index_on_ray(
        engine, collection, request, address=ray_address, shards=3, progress=False
    )
    assert job.status == "done", job.error
    assert job.stats["kind"] == "ivf" and job.stats["vectors"] == 20_000
    assert job.stats["ray"]["shards"] == 3 and sum(job.stats["ray"]["shard_vectors"]) == 20_000
    assert min(job.stats["ray"]["shard_vectors"]) > 0
    assert client.get_collection(collection).ann.job_id == job.id  # type: ignore[union-attr]
    assert answers() == expected

    with pytest.raises(InvalidInput, match="do not merge") as refused:
        build_index_on_ray(engine, collection, IndexBuildRequest(kind="hnsw"),
                           address=ray_address, progress=False)  # fmt: skip
    assert refused.value.field == "kind"


def test_cli_index_build_on_ray(
    ray_address: str,
    engine: Engine,
    collection: str,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=8)
    rng = np.random.default_rng(3)
    client.upsert(collection, [{"id": f"d{i}", "embedding": rng.standard_normal(8)}
                               for i in range(400)])  # fmt: skip
    monkeypatch.setenv("UNIDB_DATABASE_URL", database_url)
    shared = tmp_path / "shared"
    args = ["index", "build", collection, "--ray", ray_address, "--data-dir", str(shared)]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "done" and printed["stats"]["vectors"] == 400
    assert printed["params"]["ray"] == ray_address
    assert printed["stats"]["ray"]["shards"] == 2  # one a CPU of the head
    assert len(list((shared / "indexes").glob("c*/ann/manifest.json"))) == 1
    assert main([*args, "--url", "http://127.0.0.1:1"]) == 2
