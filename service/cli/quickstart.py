"""``unidb quickstart``: the service up on embedded Postgres with a corpus to query, and the
product in six steps — load, a hybrid query with each retriever's score, a write the next
query sees at once, a prompt laid out for an LLM engine's KV cache, what to try next.

With no ``--data`` it loads unidb's own documentation, shipped inside the package
(``docs_corpus``); ``--data DIR`` loads a BEIR folder (SciFact, say) instead."""

from __future__ import annotations

import csv
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from unidb import Client
from unidb.errors import InvalidInput, NotFound
from unidb.models import Hit
from unidb.service.api.main import create_app
from unidb.service.cli.docs_corpus import bundled_corpus
from unidb.service.config import Settings
from unidb.service.ingest import ingest_file
from unidb.service.logs import library_level, uvicorn_log_config

DOCS_COLLECTION = "unidb_docs"
DOCS_QUESTION = "how do I make a query see a write I just committed?"
NOTE_ID = "quickstart-note"


@dataclass(frozen=True)
class Corpus:
    """What the quickstart loads and asks."""

    name: str  # how the tour speaks of it
    collection: str
    path: Path
    limit: int | None
    question: str
    relevant: frozenset[str]


def docs_corpus() -> Corpus:
    path = bundled_corpus()
    if not path.is_file():
        raise InvalidInput(f"the bundled corpus is missing from the package ({path})", field="data")
    with path.open("rb") as stream:
        count = sum(1 for line in stream if line.strip())  # the bar counts documents
    return Corpus("passages of unidb's documentation", DOCS_COLLECTION, path, count,
                  DOCS_QUESTION, frozenset())  # fmt: skip


def beir_corpus(folder: Path, limit: int) -> Corpus:
    """The first ``limit`` documents of a BEIR folder, asked a test query whose judged
    documents are all among them."""
    corpus = folder / "corpus.jsonl"
    if not corpus.is_file():
        raise InvalidInput(f"{folder} holds no corpus.jsonl (a BEIR folder does)", field="data")
    loaded = set(_first_ids(corpus, limit))
    question, relevant = _pick_query(folder, loaded)
    return Corpus(f"{folder.name} documents", f"{folder.name.lower()}_quickstart", corpus,
                  limit, question, frozenset(relevant))  # fmt: skip


def _judgments(folder: Path) -> Path:
    """The test judgments of a BEIR folder, as this project lays them out
    (``qrels-test.tsv``) or as BEIR's downloads do (``qrels/test.tsv``)."""
    for candidate in (folder / "qrels-test.tsv", folder / "qrels" / "test.tsv"):
        if candidate.is_file():
            return candidate
    raise InvalidInput(
        f"{folder} holds no test judgments (qrels-test.tsv or qrels/test.tsv)", field="data"
    )


def _pick_query(folder: Path, loaded: set[str]) -> tuple[str, set[str]]:
    queries = folder / "queries.jsonl"
    if not queries.is_file():
        raise InvalidInput(f"{folder} holds no queries.jsonl (a BEIR folder does)", field="data")
    relevant: dict[str, set[str]] = {}
    with _judgments(folder).open() as stream:
        for row in csv.DictReader(stream, delimiter="\t"):
            if int(row.get("score") or 1) > 0:  # a judgment of 0 says not relevant
                relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    with queries.open() as stream:
        for line in stream:
            query = json.loads(line)
            docs = relevant.get(query["_id"])
            if docs and docs <= loaded:
                return query["text"], docs
    raise InvalidInput(
        "no test query has all its relevant documents among those loaded", field="limit"
    )


def _first_ids(corpus: Path, count: int) -> list[str]:
    ids: list[str] = []
    with corpus.open() as stream:
        for line in stream:
            if len(ids) >= count:
                break
            if line.strip():
                ids.append(json.loads(line)["_id"])
    return ids


def run(
    settings: Settings, *, data: Path | None, limit: int, keep_serving: bool, log_level: str
) -> int:
    if settings.auth_required:
        raise InvalidInput(
            f"the quickstart serves without API keys, so on loopback only with UNIDB_AUTH "
            f"auto or off (--host {settings.host}); `unidb serve` serves other hosts, with keys",
            field="host",
        )
    corpus = beir_corpus(data, limit) if data is not None else docs_corpus()
    started = time.monotonic()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_config=uvicorn_log_config(log_level),
            log_level=library_level(log_level),
        )
    )
    thread = threading.Thread(target=server.run, name="unidb-server", daemon=True)
    thread.start()
    while not server.started:
        # a port in use or a database that will not start ends the server thread (uvicorn
        # logs why); initdb and migrations on a slow disk can take a while
        if not thread.is_alive():
            return 1
        time.sleep(0.1)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}"
    where = (
        "UNIDB_DATABASE_URL" if settings.database_url else f"embedded Postgres in {settings.pgdata}"
    )
    print(f"unidb is serving at {url} ({where})")
    try:
        with Client(url) as client:
            _load(client, corpus)
            _hybrid_query(client, corpus)
            print(f"\nfirst hits {time.monotonic() - started:.1f} s after start")
            _fresh_write(client, corpus)
            _context(client, corpus)
        _next_steps(url, corpus)
        if keep_serving:
            print("\nserving until Ctrl-C")
            _wait_for_a_signal()
    finally:
        server.should_exit = True
        thread.join()
    return 0


def _wait_for_a_signal() -> None:
    """Until SIGINT or SIGTERM (the tour before it stops on Ctrl-C as any command does)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()


def _load(client: Client, corpus: Corpus) -> None:
    try:
        client.get_collection(corpus.collection)
    except NotFound:
        # the server embeds each text with MiniLM, and each query's text too
        client.create_collection(corpus.collection, dim=384, embedder={"kind": "minilm"})
    print(f"\n1. loading {corpus.name} into collection {corpus.collection!r}")
    report = ingest_file(
        client.backend, corpus.path, collection=corpus.collection, batch_size=64,
        limit=corpus.limit,
    )  # fmt: skip
    # the note an earlier run wrote is no document of the corpus
    client.delete(corpus.collection, NOTE_ID)
    print(f"   {report.lines} documents: {report.written} written, {report.unchanged} unchanged")


def _title(hit: Hit) -> str:
    return str(hit.metadata.get("title") or hit.text.replace("\n", " "))[:72]


def _print_hits(hits: list[Hit], relevant: frozenset[str]) -> None:
    print(f"   {'#':>2} {'fused':>6} {'bm25':>6} {'vector':>6}  document")
    for rank, hit in enumerate(hits, start=1):
        scores = hit.scores
        columns = [
            f"{value:6.3f}" if value is not None else f"{'-':>6}"
            for value in (scores.fused, scores.bm25, scores.vector)
        ]
        mark = "  <- judged relevant" if hit.id in relevant else ""
        print(f"   {rank:>2} {' '.join(columns)}  {hit.id}: {_title(hit)}{mark}")


def _hybrid_query(client: Client, corpus: Corpus) -> None:
    print(f'\n2. a hybrid query (BM25 and MiniLM vectors, fused): "{corpus.question}"')
    hits = client.query(corpus.collection, text=corpus.question, k=5).hits
    _print_hits(hits, corpus.relevant)
    if corpus.relevant:
        found = sum(hit.id in corpus.relevant for hit in hits)
        print(f"   {found} of the {len(corpus.relevant)} judged relevant documents in the top 5")


def _fresh_write(client: Client, corpus: Corpus) -> None:
    stamp = time.strftime("%H:%M:%S")
    text = (
        f"Written by the quickstart at {stamp}: zephyrine marmalade is the password "
        "of the quickstart's tour."
    )
    print("\n3. a write, then a query in the same breath")
    client.upsert(corpus.collection, [{"id": NOTE_ID, "text": text}])
    began = time.perf_counter()
    hits = client.query(corpus.collection, text="zephyrine marmalade password", k=3).hits
    elapsed_ms = (time.perf_counter() - began) * 1000
    seen = bool(hits) and hits[0].id == NOTE_ID
    print(f"   upserted {NOTE_ID!r}: {text}")
    verdict = "found it first" if seen else "did NOT find it first"
    print(f"   the next query ({elapsed_ms:.0f} ms) {verdict}: every committed write is "
          "searchable at once, before the indexes catch up")  # fmt: skip
    if hits:
        _print_hits(hits[:1], frozenset())


def _context(client: Client, corpus: Corpus) -> None:
    print("\n4. context for an LLM engine: retrieved documents laid out for its KV cache")
    context = client.context(corpus.collection, corpus.question, k=3)
    blocks = len(context.block_hashes)
    print(
        f"   {len(context.token_ids)} prompt tokens, {context.prefix_tokens} of them retrieved "
        f"context in {len(context.segments)} segments; {blocks} full blocks of 16 tokens, "
        f"each with the engine's block hash"
    )
    print(
        f"   prefix key {context.prefix_key[:16]}…: the same documents give the same prefix, "
        "which the engine's prefix cache reuses"
    )


def _next_steps(url: str, corpus: Corpus) -> None:
    name = corpus.collection
    body = json.dumps({"text": corpus.question, "k": 3})
    print("\n5. try next")
    print(f"   curl -s {url}/v1/collections/{name}/query -H 'content-type: application/json' \\")
    print(f"        -d '{body}'")
    print(
        f"   python -c \"import unidb; print(unidb.Client('{url}').query('{name}', "
        f"text='hybrid search').hits[0].id)\""
    )
    print(f"   {url}/docs   the REST API, browsable")
