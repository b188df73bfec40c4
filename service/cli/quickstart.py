"""`unidb quickstart`: the service up on embedded Postgres with SciFact to query."""

from __future__ import annotations

import csv
import json
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import uvicorn

from unidb import Client
from unidb.errors import InvalidInput, NotFound
from unidb.indexing.embedders import MiniLM
from unidb.service.api.main import create_app
from unidb.service.config import Settings
from unidb.service.ingest import ingest_file

COLLECTION = "scifact"


def find_scifact(explicit: Path | None) -> Path:
    candidates = (
        [explicit]
        if explicit
        else [
            Path.cwd() / "shared/data/scifact",
            Path.cwd().parent / "shared/data/scifact",
        ]
    )
    for candidate in candidates:
        if candidate and (candidate / "corpus.jsonl").exists():
            return candidate
    raise InvalidInput(
        "no BEIR folder found (looked for shared/data/scifact here and one level up); pass --data",
        field="data",
    )


def _pick_query(folder: Path, loaded: set[str]) -> tuple[str, set[str]]:
    relevant: dict[str, set[str]] = {}
    with (folder / "qrels-test.tsv").open() as stream:
        for row in csv.DictReader(stream, delimiter="\t"):
            relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    with (folder / "queries.jsonl").open() as stream:
        for line in stream:
            query = json.loads(line)
            docs = relevant.get(query["_id"])
            if docs and docs <= loaded:
                return query["text"], docs
    raise InvalidInput(
        "no test query has all its relevant documents among those loaded", field="limit"
    )


def run(settings: Settings, *, data: Path | None, limit: int, keep_serving: bool) -> int:
    folder = find_scifact(data)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=settings.host, port=settings.port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, name="unidb-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            return 1
        time.sleep(0.1)
    url = f"http://{settings.host}:{settings.port}"
    print(f"unidb is serving at {url} (embedded Postgres in {settings.pgdata})")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with Client(url) as client:
            embedder = MiniLM()
            loaded = set(_loaded_ids(folder / "corpus.jsonl", limit))
            if _already_loaded(client, len(loaded)):
                print(f"{COLLECTION} already holds the first {len(loaded)} SciFact abstracts")
            else:
                report = ingest_file(
                    client.backend,
                    folder / "corpus.jsonl",
                    collection=COLLECTION,
                    batch_size=100,
                    embedder=embedder,
                    limit=limit,
                )
                print(f"loaded {report.lines} SciFact abstracts ({report.written} new or changed)")
            question, relevant = _pick_query(folder, loaded)
            hits = client.query(
                COLLECTION, vector=embedder.embed_query(question).tolist(), k=5, mode="vector"
            ).hits
            print(f"\nquery: {question}\n")
            for rank, hit in enumerate(hits, start=1):
                mark = "  <- judged relevant" if hit.id in relevant else ""
                title = str(hit.metadata.get("title", ""))[:90]
                print(f"{rank}. [{hit.score:.3f}] {hit.id}: {title}{mark}")
        if keep_serving:
            print(f"\ntry: curl {url}/v1/collections/{COLLECTION}   (Ctrl-C stops)")
            stop.wait()
    finally:
        server.should_exit = True
        thread.join()
    return 0


def _already_loaded(client: Client, count: int) -> bool:
    try:
        return client.get_collection(COLLECTION).documents >= count
    except NotFound:
        return False


def _loaded_ids(corpus: Path, count: int) -> list[str]:
    ids: list[str] = []
    with corpus.open() as stream:
        for line in stream:
            if len(ids) >= count:
                break
            if line.strip():
                ids.append(json.loads(line)["_id"])
    return ids
