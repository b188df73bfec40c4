"""Every bad input gets a 4xx naming the field, and leaves the database exactly as it was."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from unidb.service.api.main import create_app
from unidb.service.engine import Engine

from .conftest import LocalClient, snapshot

DIM = 4


@pytest.fixture
def loaded(api: TestClient, collection: str) -> str:
    assert api.post("/v1/collections", json={"name": collection, "dim": DIM}).status_code == 201
    docs = [
        {
            "id": f"d{i}",
            "text": f"t{i}",
            "metadata": {"n": i},
            "embedding": [1.0, float(i), 0.5, 0.25],
        }
        for i in range(10)
    ]
    assert (
        api.post(f"/v1/collections/{collection}/documents", json={"documents": docs}).status_code
        == 200
    )
    return collection


def _expect_error(response: Any, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        assert error.get("field") == field, error
    return dict(error)


def _post_raw(api: TestClient, path: str, body: str) -> Any:
    return api.post(path, content=body.encode(), headers={"content-type": "application/json"})


def _doc(i: int = 0, **overrides: Any) -> dict[str, Any]:
    return {"id": f"new{i}", "text": "x", "embedding": [0.1, 0.2, 0.3, 0.4], **overrides}


UPSERT_CASES = [
    ("wrong dimension", {"documents": [_doc(embedding=[1.0, 2.0])]}, 400, "documents[0].embedding"),
    (
        "too many dimensions",
        {"documents": [_doc(embedding=[1.0] * 5)]},
        400,
        "documents[0].embedding",
    ),
    (
        "zero vector under cosine",
        {"documents": [_doc(embedding=[0.0] * 4)]},
        400,
        "documents[0].embedding",
    ),
    (
        "beyond float32",
        {"documents": [_doc(embedding=[1e39, 0, 0, 0])]},
        400,
        "documents[0].embedding[0]",
    ),
    ("unknown document field", {"documents": [_doc(colour="red")]}, 400, "documents[0].colour"),
    ("empty id", {"documents": [_doc(id="")]}, 400, "documents[0].id"),
    ("NUL in id", {"documents": [_doc(id="a\u0000b")]}, 400, "documents[0].id"),
    ("NUL in text", {"documents": [_doc(text="a\u0000b")]}, 400, "documents[0].text"),
    (
        "NUL in a metadata key",
        {"documents": [_doc(metadata={"a\u0000": 1})]},
        400,
        "documents[0].metadata",
    ),
    (
        "metadata not an object",
        {"documents": [_doc(metadata=[1, 2])]},
        400,
        "documents[0].metadata",
    ),
    (
        "embedding not numbers",
        {"documents": [_doc(embedding=["a", "b", "c", "d"])]},
        400,
        "documents[0].embedding",
    ),
    ("empty batch", {"documents": []}, 400, "documents"),
    ("no documents key", {"docs": []}, 400, None),
    (
        "one bad document among good ones",
        {"documents": [_doc(1), _doc(2), _doc(3, embedding=[1.0]), _doc(4)]},
        400,
        "documents[2].embedding",
    ),
    ("batch over the limit", {"documents": [_doc(i) for i in range(501)]}, 413, "documents"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "field"), UPSERT_CASES, ids=[c[0] for c in UPSERT_CASES]
)
def test_bad_upserts_change_nothing(
    api: TestClient,
    engine: Engine,
    loaded: str,
    case: str,
    body: Any,
    status: int,
    field: str | None,
) -> None:
    before = snapshot(engine)
    _expect_error(api.post(f"/v1/collections/{loaded}/documents", json=body), status, field)
    assert snapshot(engine) == before


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"], ids=["nan", "inf", "-inf"])
def test_non_finite_json_numbers_are_refused(
    api: TestClient, engine: Engine, loaded: str, literal: str
) -> None:
    before = snapshot(engine)
    body = '{"documents": [{"id": "x", "embedding": [1, ' + literal + ", 0, 0]}]}"
    _expect_error(
        _post_raw(api, f"/v1/collections/{loaded}/documents", body),
        400,
        "documents[0].embedding[1]",
    )
    query = '{"vector": [1, ' + literal + ', 0, 0], "mode": "vector"}'
    _expect_error(_post_raw(api, f"/v1/collections/{loaded}/query", query), 400, "vector[1]")
    assert snapshot(engine) == before


def test_malformed_json_is_refused(api: TestClient, engine: Engine, loaded: str) -> None:
    before = snapshot(engine)
    _expect_error(
        _post_raw(api, f"/v1/collections/{loaded}/documents", '{"documents": [}'), 400, None
    )
    _expect_error(_post_raw(api, f"/v1/collections/{loaded}/query", "{"), 400, None)
    assert snapshot(engine) == before


QUERY_CASES = [
    ("wrong dimension", {"vector": [1.0, 2.0]}, "vector"),
    ("k zero", {"vector": [1, 0, 0, 0], "k": 0}, "k"),
    ("k negative", {"vector": [1, 0, 0, 0], "k": -3}, "k"),
    ("k too large", {"vector": [1, 0, 0, 0], "k": 1001}, "k"),
    ("unknown mode", {"vector": [1, 0, 0, 0], "mode": "fuzzy"}, "mode"),
    ("unknown field", {"vector": [1, 0, 0, 0], "limit": 3}, "limit"),
    ("filter not an object", {"vector": [1, 0, 0, 0], "filter": [1]}, "filter"),
    (
        "unknown operator",
        {"vector": [1, 0, 0, 0], "filter": {"n": {"$regex": "x"}}},
        "filter.n.$regex",
    ),
    ("unknown logical operator", {"vector": [1, 0, 0, 0], "filter": {"$xor": []}}, "filter.$xor"),
    ("$and not a list", {"vector": [1, 0, 0, 0], "filter": {"$and": {"n": 1}}}, "filter.$and"),
    ("$or empty", {"vector": [1, 0, 0, 0], "filter": {"$or": []}}, "filter.$or"),
    ("$in not a list", {"vector": [1, 0, 0, 0], "filter": {"n": {"$in": 3}}}, "filter.n.$in"),
    (
        "$exists not a bool",
        {"vector": [1, 0, 0, 0], "filter": {"n": {"$exists": "yes"}}},
        "filter.n.$exists",
    ),
    ("$gt on a bool", {"vector": [1, 0, 0, 0], "filter": {"n": {"$gt": True}}}, "filter.n.$gt"),
    ("$gt on a list", {"vector": [1, 0, 0, 0], "filter": {"n": {"$gt": [1]}}}, "filter.n.$gt"),
    ("empty path segment", {"vector": [1, 0, 0, 0], "filter": {"a..b": 1}}, "filter.a..b"),
    (
        "filter nested too deep",
        {"vector": [1, 0, 0, 0], "filter": json.loads('{"$not":' * 12 + '{"n": 1}' + "}" * 12)},
        None,
    ),
    ("text in vector mode without an embedder", {"text": "hello"}, "vector"),
    ("bm25 mode without text", {"vector": [1, 0, 0, 0], "mode": "bm25"}, "text"),
    ("hybrid with neither text nor vector", {"mode": "hybrid"}, "text"),
    ("alpha out of range", {"text": "x", "mode": "hybrid", "alpha": 1.5}, "alpha"),
    ("unknown fusion", {"text": "x", "mode": "hybrid", "fusion": "max"}, "fusion"),
    ("no vector in vector mode", {"mode": "vector"}, "vector"),
]


@pytest.mark.parametrize(("case", "body", "field"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_bad_queries_are_refused(
    api: TestClient, engine: Engine, loaded: str, case: str, body: Any, field: str | None
) -> None:
    before = snapshot(engine)
    body.setdefault("mode", "vector")
    error = _expect_error(api.post(f"/v1/collections/{loaded}/query", json=body), 400, field)
    if case == "filter nested too deep":
        assert "deeper" in error["message"]
    assert snapshot(engine) == before


def test_unknown_collection_is_404_everywhere(api: TestClient, engine: Engine) -> None:
    before = snapshot(engine)
    name = "no_such_collection"
    for response in (
        api.get(f"/v1/collections/{name}"),
        api.delete(f"/v1/collections/{name}"),
        api.post(f"/v1/collections/{name}/documents", json={"documents": [_doc()]}),
        api.get(f"/v1/collections/{name}/documents/x"),
        api.delete(f"/v1/collections/{name}/documents/x"),
        api.post(f"/v1/collections/{name}/query", json={"vector": [1, 0, 0, 0], "mode": "vector"}),
    ):
        _expect_error(response, 404, "collection")
    assert snapshot(engine) == before


def test_duplicate_and_invalid_collections(api: TestClient, engine: Engine, loaded: str) -> None:
    before = snapshot(engine)
    _expect_error(api.post("/v1/collections", json={"name": loaded, "dim": DIM}), 409, "name")
    _expect_error(api.post("/v1/collections", json={"name": loaded, "dim": 7}), 409, "name")
    for body, field in (
        ({"name": "ok_name", "dim": 0}, "dim"),
        ({"name": "ok_name", "dim": 16001}, "dim"),
        ({"name": "ok_name", "dim": 3, "metric": "hamming"}, "metric"),
        ({"name": "bad name; DROP TABLE unidb.documents", "dim": 3}, "name"),
        ({"name": "", "dim": 3}, "name"),
        # jsonb cannot hold \u0000 (found by schemathesis): a 400, not a 500
        (
            {
                "name": "ok_name",
                "dim": 3,
                "embedder": {"kind": "openai", "url": "http://e/v1", "model": "a\u0000b"},
            },
            "embedder.model",
        ),
        ({"dim": 3}, "name"),
    ):
        _expect_error(api.post("/v1/collections", json=body), 400, field)
    assert snapshot(engine) == before


def test_oversize_body_is_413_before_parsing(engine: Engine, loaded: str) -> None:
    small = engine.settings.model_copy(update={"max_body_bytes": 2048})
    with LocalClient(create_app(small, engine=engine)) as api:
        before = snapshot(engine)
        body = {"documents": [_doc(i, text="x" * 100) for i in range(40)]}
        _expect_error(api.post(f"/v1/collections/{loaded}/documents", json=body), 413, "body")

        def chunks() -> Any:
            yield b'{"documents": ['
            for i in range(40):
                yield json.dumps(_doc(i, text="y" * 100)).encode() + b","
            yield b"]}"

        # no content-length: the limit still holds while streaming
        _expect_error(
            api.post(
                f"/v1/collections/{loaded}/documents",
                content=chunks(),
                headers={"content-type": "application/json"},
            ),
            413,
            "body",
        )
        assert snapshot(engine) == before


def test_text_over_the_limit_is_413(engine: Engine, loaded: str) -> None:
    small = engine.settings.model_copy(update={"max_text_chars": 10})
    limited = Engine(small, engine.pool, engine.dsn, background_pool=engine.background_pool)
    # the session engine's tailer and prefix follower own the indexes and the registry
    limited.text_indexes.close()
    limited.context.close()
    with LocalClient(create_app(small, engine=limited)) as api:
        before = snapshot(engine)
        body = {"documents": [_doc(1), _doc(2, text="z" * 11)]}
        _expect_error(
            api.post(f"/v1/collections/{loaded}/documents", json=body), 413, "documents[1].text"
        )
        assert snapshot(engine) == before


SQL_LOOKING = [
    "'; DROP TABLE unidb.documents; --",
    'x" OR 1=1 --',
    "$1); DELETE FROM unidb.collections; --",
    "%s %(collection)s {}",
]


def test_sql_looking_strings_are_plain_data(api: TestClient, engine: Engine, loaded: str) -> None:
    docs = [
        {
            "id": text,
            "text": text,
            "metadata": {text: text, "k": text},
            "embedding": [0.5, 0.5, 0.5, 0.5],
        }
        for text in SQL_LOOKING
    ]
    assert (
        api.post(f"/v1/collections/{loaded}/documents", json={"documents": docs}).json()["written"]
        == 4
    )
    for text in SQL_LOOKING:
        got = api.get(
            f"/v1/collections/{loaded}/documents/{text.replace('%', '%25').replace('#', '%23').replace('?', '%3F')}"
        )
        assert got.status_code == 200, got.text
        assert got.json()["metadata"] == {text: text, "k": text}
        hits = api.post(
            f"/v1/collections/{loaded}/query",
            json={"vector": [0.5, 0.5, 0.5, 0.5], "mode": "vector", "k": 50, "filter": {"k": text}},
        ).json()["hits"]
        assert [h["id"] for h in hits] == [text]
        hits = api.post(
            f"/v1/collections/{loaded}/query",
            json={
                "vector": [0.5, 0.5, 0.5, 0.5],
                "mode": "vector",
                "filter": {"k": {"$gte": text}},
            },
        ).json()["hits"]
        assert text in {h["id"] for h in hits}
    # a SQL-looking filter path is a path like any other
    path = 'x" OR 1=1 --'
    hits = api.post(
        f"/v1/collections/{loaded}/query",
        json={
            "vector": [0.5, 0.5, 0.5, 0.5],
            "mode": "vector",
            "filter": {path: {"$exists": True}},
        },
    ).json()["hits"]
    assert [h["id"] for h in hits] == [path]
    # every table is still there and the other documents are untouched
    assert api.get(f"/v1/collections/{loaded}").json()["documents"] == 14
    with engine.transaction() as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'unidb'"
            ).fetchall()
        }
    assert {"collections", "documents", "chunks", "changes"} <= tables


def test_openapi_documents_every_route(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    assert api.get("/docs").status_code == 200
    paths = schema["paths"]
    assert set(paths) >= {
        "/healthz",
        "/v1/collections",
        "/v1/collections/{name}",
        "/v1/collections/{name}/documents",
        "/v1/collections/{name}/documents/{document_id}",
        "/v1/collections/{name}/query",
    }
    upsert = paths["/v1/collections/{name}/documents"]["post"]
    body = upsert["requestBody"]["content"]["application/json"]["schema"]
    assert "documents" in body["properties"]
    assert "400" in upsert["responses"] and "404" in upsert["responses"]
