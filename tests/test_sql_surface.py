"""The SQL surface through plain psycopg: search functions joined with a user's own table."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector

import unidb
from unidb.service.engine import Engine


@pytest.fixture
def sql(database_url: str) -> Iterator[psycopg.Connection[object]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        register_vector(conn)
        yield conn


def test_search_vector_agrees_with_rest_and_joins_user_tables(
    engine: Engine, collection: str, sql: psycopg.Connection[object], server_url: str
) -> None:
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    with unidb.Client(server_url) as client:
        client.create_collection(collection, dim=8)
        client.upsert(collection, [
            {"id": f"n{i}", "text": f"note {i}", "metadata": {"owner": i % 3, "team": "db" if i % 2 else "ml"},
             "embedding": vectors[i]} for i in range(60)
        ])  # fmt: skip
        query = rng.normal(size=8).astype(np.float32)
        rest = client.query(collection, vector=query, k=7, mode="vector").hits
        rest_filtered = client.query(
            collection, vector=query, k=5, mode="vector", filter={"team": "db"}
        ).hits

    rows = sql.execute(
        "SELECT id, score FROM unidb.search_vector(%s, %s, 7)", (collection, query)
    ).fetchall()
    assert [r[0] for r in rows] == [h.id for h in rest]
    assert [r[1] for r in rows] == pytest.approx([h.score for h in rest], abs=1e-6)
    rows = sql.execute(
        'SELECT id FROM unidb.search_vector(%s, %s, 5, \'{"team": "db"}\')', (collection, query)
    ).fetchall()
    assert [r[0] for r in rows] == [h.id for h in rest_filtered]

    table = f"users_{collection}"
    sql.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
    try:
        sql.execute(f"INSERT INTO {table} VALUES (0, 'ada'), (1, 'grace'), (2, 'linus')")
        joined = sql.execute(
            f"SELECT s.id, u.name FROM unidb.search_vector(%s, %s, 7) s"
            f" JOIN {table} u ON u.id = (s.metadata->>'owner')::int ORDER BY s.score DESC",
            (collection, query),
        ).fetchall()
        assert [r[0] for r in joined] == [h.id for h in rest]
        assert all(name == ["ada", "grace", "linus"][int(doc[1:]) % 3] for doc, name in joined)
    finally:
        sql.execute(f"DROP TABLE {table}")


def test_search_text_and_hybrid(
    engine: Engine, collection: str, sql: psycopg.Connection[object]
) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(collection, [
        {"id": "sail", "text": "Sailing boats race on the lake", "metadata": {"kind": "sport"}, "embedding": [0, 1]},
        {"id": "hike", "text": "Mountain hiking trails in autumn", "metadata": {"kind": "sport"}, "embedding": [1, 0]},
        {"id": "both", "text": "Sailing near the mountains", "metadata": {"kind": "travel", "title": "Lakes"}, "embedding": [0.9, 0.1]},
    ])  # fmt: skip
    text_hits = [r[0] for r in sql.execute(
        "SELECT id FROM unidb.search_text(%s, 'sailed boats', 10)", (collection,)).fetchall()]  # fmt: skip
    assert text_hits[0] == "sail" and set(text_hits) == {"sail", "both"}
    titled = sql.execute(
        "SELECT id FROM unidb.search_text(%s, 'lakes', 10)", (collection,)
    ).fetchall()
    assert {r[0] for r in titled} == {"sail", "both"}  # the title is searched too
    filtered = sql.execute(
        "SELECT id FROM unidb.search_text(%s, 'sailing', 10, '{\"kind\": \"travel\"}')",
        (collection,),
    ).fetchall()
    assert filtered == [("both",)]
    assert sql.execute(
        "SELECT count(*) FROM unidb.search_text(%s, 'the', 10)", (collection,)
    ).fetchone() == (0,)
    hybrid = sql.execute(
        "SELECT id, score FROM unidb.search_hybrid(%s, 'sailing', '[1,0]'::vector, 3)",
        (collection,),
    ).fetchall()
    assert hybrid[0][0] == "both"
    assert hybrid[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_sql_functions_refuse_bad_calls(
    engine: Engine, collection: str, sql: psycopg.Connection[object]
) -> None:
    unidb.Client(backend=engine).create_collection(collection, dim=3)
    with pytest.raises(psycopg.errors.NoDataFound, match="does not exist"):
        sql.execute("SELECT * FROM unidb.search_vector('no_such_collection', '[1,2,3]'::vector)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="expected 3 dimensions"):
        sql.execute("SELECT * FROM unidb.search_vector(%s, '[1,2]'::vector)", (collection,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="k must be"):
        sql.execute("SELECT * FROM unidb.search_vector(%s, '[1,2,3]'::vector, 0)", (collection,))
