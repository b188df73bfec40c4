"""Server-side chunking on real Postgres, tantivy, FAISS and MiniLM: a collection with a
chunker splits each document on upsert, ranks chunks and returns documents with passages."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import unidb
from unidb.errors import Conflict, InvalidInput, PayloadTooLarge
from unidb.indexing import chunking
from unidb.models import (
    DeleteDocumentOp,
    Document,
    IndexBuildRequest,
    TransactionRequest,
    UpsertDocumentsOp,
)
from unidb.service.engine import Engine
from unidb.service.search import passages

from .conftest import scifact

CHUNKER = {"kind": "tokens", "size": 128, "overlap": 32}


def _abstracts() -> list[dict[str, Any]]:
    with (scifact() / "corpus.jsonl").open() as stream:
        return [json.loads(line) for line in stream]


@pytest.fixture(scope="module")
def corpus() -> dict[str, Any]:
    """A 20,000-word document made of SciFact abstracts, and 60 other abstracts."""
    abstracts = _abstracts()
    long_parts: list[str] = []
    words = 0
    at = 0
    while words < 20_000:
        text = abstracts[at]["text"]
        long_parts.append(text)
        words += len(text.split())
        at += 1
    others = [
        {"id": a["_id"], "text": a["text"], "metadata": {"title": a["title"]}}
        for a in abstracts[at : at + 60]
    ]
    long_text = "\n\n".join(long_parts)
    last = long_parts[-1]
    # a phrase from the last page: the last abstract's first sentence
    phrase = last.split(". ")[0]
    return {"long": long_text, "last": last, "phrase": phrase, "others": others}


@pytest.fixture(scope="module")
def chunked(engine: Engine, corpus: dict[str, Any]) -> Iterator[str]:
    """One chunked collection for the module (embedding the long document takes a while);
    a test that changes it puts it back."""
    name = f"t_chunked_{uuid.uuid4().hex[:8]}"
    client = unidb.Client(backend=engine)
    client.create_collection(name, dim=384, embedder={"kind": "minilm"}, chunker=CHUNKER)
    client.upsert(name, [{"id": "long", "text": corpus["long"]}, *corpus["others"]])
    yield name
    engine.delete_collection(name)


def _chunks(engine: Engine, collection: str, document_id: str) -> list[tuple[int, int, int]]:
    with engine.transaction() as conn:
        rows = conn.execute(
            "SELECT c.chunk_no, c.start_char, c.end_char FROM unidb.chunks c"
            " JOIN unidb.documents d ON d.collection_id = c.collection_id AND d.key = c.document_key"
            " JOIN unidb.collections k ON k.id = d.collection_id"
            " WHERE k.name = %s AND d.id = %s ORDER BY c.chunk_no",
            (collection, document_id),
        ).fetchall()
    return [(int(n), int(s), int(e)) for n, s, e in rows]


def test_token_windows_are_stable_and_cover_the_text(corpus: dict[str, Any]) -> None:
    text = corpus["long"]
    spans = chunking.split(text, "tokens", 128, 32)
    assert spans == chunking.split(text, "tokens", 128, 32)
    assert spans[0][0] == 0 and spans[-1][1] == len(text.rstrip())
    pieces = chunking.word_pieces()
    for (start, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert start < next_start < end  # each window overlaps the next
        assert len(pieces.encode(text[start:end], add_special_tokens=False).ids) <= 128
    # 20,000 words of English come to ~27,000 word pieces: windows of 96 new ones each
    assert 250 < len(spans) < 400


def test_sentence_chunks_hold_whole_sentences_within_the_budget(corpus: dict[str, Any]) -> None:
    text = corpus["others"][0]["text"]
    spans = chunking.split(text, "sentences", 64, 0)
    pieces = chunking.word_pieces()
    assert len(spans) > 1
    for start, end in spans:
        assert len(pieces.encode(text[start:end], add_special_tokens=False).ids) <= 64
        # a chunk ends where a sentence does, or where the text does
        assert text[end - 1] in ".!?\"')]" or end == len(text.rstrip())
    assert "".join(text[s:e] for s, e in spans).replace(" ", "") == text.replace(" ", "")


def test_a_phrase_from_the_last_page_finds_the_long_document_in_every_mode(
    engine: Engine, chunked: str, corpus: dict[str, Any]
) -> None:
    client = unidb.Client(backend=engine)
    spans = _chunks(engine, chunked, "long")
    assert len(spans) == len(chunking.split(corpus["long"], "tokens", 128, 32))
    last_page = len(corpus["long"]) - 3000
    for mode in ("bm25", "vector", "hybrid"):
        answer = client.query(chunked, text=corpus["phrase"], k=3, mode=mode)
        assert answer.hits[0].id == "long", mode
        best = answer.hits[0].passages
        assert best is not None and best, mode
        assert best[0].end > last_page, mode  # the passage is from the last page
        assert best[0].text == corpus["long"][best[0].start : best[0].end]
        # k counts documents: the long one's other matching chunks do not crowd them out
        assert len({hit.id for hit in answer.hits}) == 3, mode


def test_without_chunks_the_vector_misses_what_the_last_page_says(
    engine: Engine, collection: str, corpus: dict[str, Any]
) -> None:
    """The same documents, whole: MiniLM reads the long one's first 256 word pieces only."""
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=384, embedder={"kind": "minilm"})
    client.upsert(collection, [{"id": "long", "text": corpus["long"]}, *corpus["others"]])
    answer = client.query(collection, text=corpus["phrase"], k=10, mode="vector")
    assert "long" not in [hit.id for hit in answer.hits]
    assert all(hit.passages is None for hit in answer.hits)


def test_an_unchanged_document_is_not_chunked_again(engine: Engine, chunked: str) -> None:
    client = unidb.Client(backend=engine)
    rows = (
        "SELECT c.chunk_no, c.xmin::text FROM unidb.chunks c JOIN unidb.collections k"
        " ON k.id = c.collection_id WHERE k.name = %s ORDER BY c.document_key, c.chunk_no"
    )
    with engine.transaction() as conn:
        before = conn.execute(rows, (chunked,)).fetchall()
    again = client.get(chunked, "long")
    result = client.upsert(chunked, [{"id": "long", "text": again.text}])
    assert (result.written, result.unchanged) == (0, 1)
    with engine.transaction() as conn:
        after = conn.execute(rows, (chunked,)).fetchall()
    assert len(before) > 300 and after == before


def test_a_shorter_text_replaces_every_chunk_and_delete_removes_them(
    engine: Engine, chunked: str, corpus: dict[str, Any]
) -> None:
    client = unidb.Client(backend=engine)
    medium = corpus["long"][:12_000]
    client.upsert(chunked, [{"id": "copy", "text": medium}])
    assert len(_chunks(engine, chunked, "copy")) == len(chunking.split(medium, "tokens", 128, 32))
    tail = medium[-400:]
    assert "copy" in [hit.id for hit in client.query(chunked, text=tail, k=3, mode="bm25").hits]

    short = medium[:1500]
    result = client.upsert(chunked, [{"id": "copy", "text": short}])
    assert result.written == 1
    expected = chunking.split(short, "tokens", 128, 32)
    assert [(s, e) for _, s, e in _chunks(engine, chunked, "copy")] == expected
    assert "copy" not in [hit.id for hit in client.query(chunked, text=tail, k=2, mode="bm25").hits]

    assert client.delete(chunked, "copy")
    assert _chunks(engine, chunked, "copy") == []
    for mode in ("bm25", "vector", "hybrid"):
        hits = client.query(chunked, text=short[:300], k=5, mode=mode).hits
        assert "copy" not in [hit.id for hit in hits], mode


def test_racing_writers_of_one_document_leave_one_texts_chunks(
    engine: Engine, chunked: str, corpus: dict[str, Any]
) -> None:
    """Two writers of the same id at once, one long text and one short: whichever commits
    last, the document's chunks are exactly its text's, none left of the other's."""
    # near in length, so both embed for about as long and their writes overlap
    long_text, short_text = corpus["long"][:4000], corpus["long"][5000:8200]
    for round_ in range(6):
        doc_id = f"race{round_}"
        start = threading.Barrier(2)

        def write(text: str, doc_id: str = doc_id, start: threading.Barrier = start) -> None:
            start.wait()
            unidb.Client(backend=engine).upsert(chunked, [{"id": doc_id, "text": text}])

        writers = [threading.Thread(target=write, args=(t,)) for t in (long_text, short_text)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        stored = unidb.Client(backend=engine).get(chunked, doc_id).text
        spans = [(s, e) for _, s, e in _chunks(engine, chunked, doc_id)]
        assert spans == chunking.split(stored, "tokens", 128, 32), round_
        unidb.Client(backend=engine).delete(chunked, doc_id)


def test_a_document_changed_while_its_write_was_embedded_is_a_conflict(
    engine: Engine, chunked: str
) -> None:
    client = unidb.Client(backend=engine)
    client.upsert(chunked, [{"id": "moving", "text": "Ribosomes build proteins."}])
    # the write found it unchanged, and left it out...
    embedded = engine.writes._with_embeddings(
        chunked, [Document(id="moving", text="Ribosomes build proteins.")]
    )
    assert list(embedded.unchanged) == ["moving"] and not embedded.documents
    # ...then another writer changed it before the write began
    client.upsert(chunked, [{"id": "moving", "text": "Mitochondria make energy."}])
    with pytest.raises(Conflict) as conflict, engine.transaction() as conn:
        engine.writes.upsert_into(conn, chunked, embedded)
    assert conflict.value.field == "documents" and "'moving'" in conflict.value.message
    assert client.get(chunked, "moving").text == "Mitochondria make energy."
    client.delete(chunked, "moving")


def test_a_transaction_splits_what_its_own_earlier_ops_delete(engine: Engine, chunked: str) -> None:
    """Deleting a document and upserting it again, unchanged, in one transaction: it is
    there at the end, with its chunks (found unchanged before the transaction, it would
    have been left out)."""
    client = unidb.Client(backend=engine)
    text = "Ribosomes build proteins. " * 40
    client.upsert(chunked, [{"id": "again", "text": text}])
    engine.transact(
        TransactionRequest(
            ops=[
                DeleteDocumentOp(op="delete_document", collection=chunked, id="again"),
                UpsertDocumentsOp(
                    op="upsert_documents", collection=chunked,
                    documents=[Document(id="again", text=text)],
                ),
            ]
        )
    )  # fmt: skip
    assert client.get(chunked, "again").text == text
    spans = [(s, e) for _, s, e in _chunks(engine, chunked, "again")]
    assert spans == chunking.split(text, "tokens", 128, 32)
    client.delete(chunked, "again")


def test_faiss_ranks_chunked_documents_by_their_nearest_chunk(
    engine: Engine, chunked: str, corpus: dict[str, Any]
) -> None:
    client = unidb.Client(backend=engine)
    job = engine.build_index(chunked, IndexBuildRequest())
    deadline = time.monotonic() + 300
    while engine.get_job(job.id).status not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert engine.get_job(job.id).status == "done"
    info = client.get_collection(chunked)
    assert info.ann is not None
    assert info.ann.vectors == sum(
        len(chunking.split(text, "tokens", 128, 32))
        for text in [corpus["long"], *(d["text"] for d in corpus["others"])]
    )
    answer = client.query(chunked, text=corpus["phrase"], k=5, mode="vector")
    assert answer.vector_index == "faiss"
    assert answer.hits[0].id == "long"
    assert len({hit.id for hit in answer.hits}) == 5
    # a write after the snapshot: its chunks are answered beside the snapshot's
    client.upsert(chunked, [{"id": "echo", "text": corpus["last"]}])
    after = client.query(chunked, text=corpus["phrase"], k=5, mode="vector")
    assert after.vector_index == "faiss"
    assert {hit.id for hit in after.hits[:2]} == {"long", "echo"}
    assert len({hit.id for hit in after.hits}) == 5
    assert client.delete(chunked, "echo")
    gone = client.query(chunked, text=corpus["phrase"], k=5, mode="vector")
    assert "echo" not in [hit.id for hit in gone.hits]


def test_a_chunker_is_checked(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    with pytest.raises(InvalidInput) as no_embedder:
        client.create_collection(collection, dim=8, chunker=CHUNKER)
    assert no_embedder.value.field == "chunker"
    with pytest.raises(InvalidInput) as overlap:
        client.create_collection(
            collection,
            dim=384,
            embedder={"kind": "minilm"},
            chunker={"kind": "tokens", "size": 64, "overlap": 40},
        )
    assert "overlap" in overlap.value.message
    with pytest.raises(InvalidInput) as too_long:
        client.create_collection(
            collection,
            dim=384,
            embedder={"kind": "minilm"},
            chunker={"kind": "tokens", "size": 512, "overlap": 32},
        )
    assert too_long.value.field == "chunker.size" and "256" in too_long.value.message
    client.create_collection(collection, dim=384, embedder={"kind": "minilm"}, chunker=CHUNKER)
    assert client.get_collection(collection).chunker is not None
    with pytest.raises(InvalidInput) as embedded:
        client.upsert(collection, [{"id": "a", "text": "x", "embedding": [0.1] * 384}])
    assert embedded.value.field == "documents[0].embedding"
    assert client.get_collection(collection).documents == 0


def test_rest_hits_carry_passages(api: Any, collection: str) -> None:
    created = api.post(
        "/v1/collections",
        json={"name": collection, "dim": 384, "embedder": {"kind": "minilm"},
              "chunker": {"kind": "sentences", "size": 16}},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    text = (
        "Photosynthesis turns light into chemical energy. "
        "Mitochondria are the powerhouse of the cell. "
        "Ribosomes build proteins from amino acids."
    )
    upserted = api.post(f"/v1/collections/{collection}/documents", json={"documents": [
        {"id": "cell", "text": text}]})  # fmt: skip
    assert upserted.status_code == 200, upserted.text
    answer = api.post(
        f"/v1/collections/{collection}/query",
        json={"text": "which organelle makes proteins", "k": 1, "passages": 1},
    )
    assert answer.status_code == 200, answer.text
    (hit,) = answer.json()["hits"]
    (passage,) = hit["passages"]
    assert passage["text"].startswith("Ribosomes")
    assert text[passage["start"] : passage["end"]] == passage["text"]
    assert passage["scores"]["bm25"] > 0 and passage["scores"]["vector"] > 0


def test_context_lays_out_the_best_passage_not_the_whole_document(
    engine: Engine, chunked: str, corpus: dict[str, Any]
) -> None:
    client = unidb.Client(backend=engine)
    built = client.context(chunked, corpus["phrase"], k=2, max_tokens=2048)
    # the long document's passage from its last page, not its first page
    assert corpus["long"][:200] not in built.prompt
    (long_segment,) = [segment for segment in built.segments if segment.id == "long"]
    body = long_segment.text.split("] ", 1)[1][:80]
    assert body in corpus["long"][-4000:] and not long_segment.truncated
    assert built.prefix_tokens < 2048
    # a session lays out whole documents (its later turns reload them); this one's first
    # page is what fits
    session = client.context(chunked, corpus["phrase"], k=1, max_tokens=2048, session="s1")
    assert corpus["long"][:200] in session.prompt


def test_chunk_counts_past_their_bounds_are_refused_before_any_embedding(
    engine: Engine, collection: str
) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=384, embedder={"kind": "minilm"},
                             chunker={"kind": "tokens", "size": 16, "overlap": 0})  # fmt: skip
    # "word " is one piece: 16 pieces a chunk
    too_long = "word " * (16 * chunking.MAX_CHUNKS_PER_DOCUMENT + 16)
    with pytest.raises(PayloadTooLarge) as one:
        client.upsert(collection, [{"id": "huge", "text": too_long}])
    assert f"over the limit of {chunking.MAX_CHUNKS_PER_DOCUMENT}" in one.value.message
    each = "word " * (16 * 4000)  # 4,000 chunks each: under the document bound
    many = [{"id": f"d{i}", "text": each} for i in range(9)]  # 36,000 in all
    with pytest.raises(PayloadTooLarge) as total:
        client.upsert(collection, many)
    assert f"over the limit of {chunking.MAX_CHUNKS_PER_REQUEST}" in total.value.message
    assert client.get_collection(collection).documents == 0


def test_hits_past_the_passage_bound_carry_none(engine: Engine, chunked: str) -> None:
    client = unidb.Client(backend=engine)
    hits = client.query(chunked, text="cells proteins gene expression", k=61, mode="vector").hits
    assert len(hits) > passages.PASSAGE_HITS
    assert all(hit.passages for hit in hits[: passages.PASSAGE_HITS])
    assert all(hit.passages == [] for hit in hits[passages.PASSAGE_HITS :])
