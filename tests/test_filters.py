"""The filter language agrees with a Python oracle, and filtered vector search never under-fills."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unidb
from unidb.models import QueryRequest
from unidb.service.engine import Engine

MISSING = object()
KEYS = ["a", "b", "c"]
NESTED = ["x", "y"]
STRINGS = ["", "a", "B", "b", "ab", "Z", "é", "10", "2"]

SCALARS: list[Any] = [None, True, False, -3, -1, 0, 1, 2, 3, -1.5, 0.0, 0.25, 2.5, *STRINGS]


def _random_value(rng: random.Random) -> Any:
    if rng.random() < 0.2:
        return [rng.choice(SCALARS) for _ in range(rng.randint(0, 2))]
    return rng.choice(SCALARS)


def _random_metadata(rng: random.Random) -> dict[str, Any]:
    """Sparse, mixed-type metadata: keys present or not, values of every JSON kind."""
    metadata: dict[str, Any] = {k: _random_value(rng) for k in KEYS if rng.random() < 0.7}
    if rng.random() < 0.7:
        metadata["n"] = {k: _random_value(rng) for k in NESTED if rng.random() < 0.6}
    return metadata


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.0, 0.25, 2.5]),
    st.sampled_from(STRINGS),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2))
paths = st.sampled_from([*KEYS, "n.x", "n.y", "n", "missing", "n.x.deeper"])


def _same(a: Any, b: Any) -> bool:
    """JSON equality as jsonb sees it: booleans are not numbers, 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _lookup(metadata: dict[str, Any], path: str) -> Any:
    value: Any = metadata
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _op_holds(value: Any, op: str, target: Any) -> bool:
    if op == "$eq":
        return value is not MISSING and _same(value, target)
    if op == "$ne":
        return not _op_holds(value, "$eq", target)
    if op == "$in":
        return any(_op_holds(value, "$eq", t) for t in target)
    if op == "$nin":
        return not _op_holds(value, "$in", target)
    if op == "$exists":
        return (value is not MISSING) == target
    if value is MISSING or _kind(value) is None or _kind(value) != _kind(target):
        return False
    return {
        "$gt": value > target,
        "$gte": value >= target,
        "$lt": value < target,
        "$lte": value <= target,
    }[op]


def oracle(spec: dict[str, Any], metadata: dict[str, Any]) -> bool:
    for key, condition in spec.items():
        if key == "$and":
            ok = all(oracle(s, metadata) for s in condition)
        elif key == "$or":
            ok = any(oracle(s, metadata) for s in condition)
        elif key == "$not":
            ok = not oracle(condition, metadata)
        elif isinstance(condition, dict) and any(k.startswith("$") for k in condition):
            value = _lookup(metadata, key)
            ok = all(_op_holds(value, op, target) for op, target in condition.items())
        else:
            ok = _op_holds(_lookup(metadata, key), "$eq", condition)
        if not ok:
            return False
    return True


comparables = st.one_of(
    st.integers(-3, 3), st.sampled_from([-1.5, 0.25, 2.5]), st.sampled_from(STRINGS)
)
conditions = st.one_of(
    values,
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$eq", "$ne"]), values),
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), comparables),
    st.builds(
        lambda op, v: {op: v},
        st.sampled_from(["$in", "$nin"]),
        # long lists cross into one jsonb[] parameter, arrays among them included
        st.one_of(st.lists(scalars, max_size=3), st.lists(values, min_size=17, max_size=24)),
    ),
    st.builds(lambda v: {"$exists": v}, st.booleans()),
    st.builds(lambda lo, hi: {"$gte": lo, "$lt": hi}, st.integers(-3, 3), st.integers(-3, 3)),
)
leaf_filters = st.dictionaries(paths, conditions, min_size=1, max_size=2)
filters = st.recursive(
    leaf_filters,
    lambda inner: st.one_of(
        st.builds(lambda fs: {"$and": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda fs: {"$or": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda f: {"$not": f}, inner),
    ),
    max_leaves=6,
)

N_DOCS = 120


@pytest.fixture(scope="module")
def corpus(engine: Engine) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    name = "t_filter_oracle"
    engine_client = unidb.Client(backend=engine)
    engine_client.delete_collection(name)
    engine_client.create_collection(name, dim=2)
    rng = np.random.default_rng(7)
    metas = [_random_metadata(random.Random(i)) for i in range(N_DOCS)]
    docs = [
        {"id": f"m{i}", "text": "", "metadata": meta, "embedding": rng.normal(size=2).tolist()}
        for i, meta in enumerate(metas)
    ]
    engine_client.upsert(name, docs)
    yield name, docs
    engine_client.delete_collection(name)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=filters)
def test_filters_match_the_oracle(
    engine: Engine, corpus: tuple[str, list[dict[str, Any]]], spec: dict[str, Any]
) -> None:
    name, docs = corpus
    response = engine.query(
        name, QueryRequest(vector=[1.0, 0.0], k=1000, mode="vector", filter=spec)
    )
    expected = {d["id"] for d in docs if oracle(spec, d["metadata"])}
    assert {h.id for h in response.hits} == expected
    assert response.exhaustive


def test_array_fields_are_compared_whole(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(
        collection,
        [
            {"id": "arr", "metadata": {"tags": ["x", "y"]}, "embedding": [1.0, 0.0]},
            {"id": "str", "metadata": {"tags": "x"}, "embedding": [1.0, 0.0]},
        ],
    )

    def ids(spec: dict[str, Any]) -> set[str]:
        return {
            h.id
            for h in client.query(collection, vector=[1.0, 0.0], mode="vector", filter=spec).hits
        }

    assert ids({"tags": "x"}) == {"str"}
    assert ids({"tags": ["x", "y"]}) == {"arr"}
    assert ids({"tags": {"$in": ["x", ["x", "y"]]}}) == {"arr", "str"}


def test_selective_filter_on_hnsw_still_returns_k(engine: Engine, collection: str) -> None:
    """1 % of rows match; the HNSW graph alone would under-fill, the answer must not."""
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=16)
    rng = np.random.default_rng(11)
    n = 3000
    vectors = rng.normal(size=(n, 16)).astype(np.float32)
    docs = [
        {
            "id": f"v{i}",
            "metadata": {"rare": i % 100 == 0, "bucket": i % 10},
            "embedding": vectors[i].tolist(),
        }
        for i in range(n)
    ]
    for start in range(0, n, 500):
        client.upsert(collection, docs[start : start + 500])
    assert engine.build_vector_index(collection)
    assert client.get_collection(collection).vector_index == "hnsw"

    query = rng.normal(size=16).astype(np.float32)
    rare = client.query(
        collection, vector=query.tolist(), k=25, mode="vector", filter={"rare": True}
    )
    assert len(rare.hits) == 25
    assert all(h.metadata["rare"] is True for h in rare.hits)
    exact_rare = _exact_top(vectors, query, [i for i in range(n) if i % 100 == 0], 25)
    assert [h.id for h in rare.hits] == exact_rare

    broad = client.query(
        collection, vector=query.tolist(), k=10, mode="vector", filter={"bucket": {"$lt": 5}}
    )
    assert len(broad.hits) == 10 and not broad.exhaustive
    exact_broad = _exact_top(vectors, query, [i for i in range(n) if i % 10 < 5], 10)
    assert len(set(h.id for h in broad.hits) & set(exact_broad)) >= 8  # approximate, high recall

    unfiltered = client.query(collection, vector=query.tolist(), k=10, mode="vector")
    assert len(unfiltered.hits) == 10 and not unfiltered.exhaustive


def _exact_top(vectors: np.ndarray, query: np.ndarray, rows: list[int], k: int) -> list[str]:
    subset = vectors[rows]
    cosine = subset @ query / (np.linalg.norm(subset, axis=1) * np.linalg.norm(query))
    order = np.argsort(-cosine)[:k]
    return [f"v{rows[i]}" for i in order]


def test_index_is_partial_per_collection_and_used(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=8)
    rng = np.random.default_rng(3)
    client.upsert(
        collection, [{"id": str(i), "embedding": rng.normal(size=8).tolist()} for i in range(300)]
    )
    assert client.get_collection(collection).vector_index == "none"
    assert engine.build_vector_index(collection)
    with engine.transaction() as conn:
        collection_id = conn.execute(
            "SELECT id FROM unidb.collections WHERE name = %s", (collection,)
        ).fetchone()[0]  # type: ignore[index]
        definition = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'unidb' AND indexname = %s",
            (f"chunks_embedding_hnsw_c{collection_id}",),
        ).fetchone()[0]  # type: ignore[index]
        assert "hnsw" in definition and "vector(8)" in definition
        assert f"WHERE (collection_id = {collection_id})" in definition
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                f"EXPLAIN SELECT document_key FROM unidb.chunks c WHERE c.collection_id = {collection_id}"
                f" ORDER BY (c.embedding::vector(8)) <=> %s::vector(8) LIMIT 5",
                (rng.normal(size=8).astype(np.float32),),
            ).fetchall()
        )
    assert f"chunks_embedding_hnsw_c{collection_id}" in plan


def test_query_schedules_hnsw_build_past_threshold(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=4, pgvector_hnsw=True)
    plain = f"{collection}_plain"
    client.create_collection(plain, dim=4)
    rng = np.random.default_rng(5)
    threshold = engine.settings.hnsw_min_rows
    docs = [{"id": str(i), "embedding": rng.normal(size=4).tolist()} for i in range(threshold)]
    try:
        for name in (collection, plain):
            client.upsert(name, docs)
            assert client.query(name, vector=[1, 0, 0, 0], k=3, mode="vector").exhaustive
        engine.wait_for_index_builds()
        opted = client.get_collection(collection)
        assert opted.pgvector_hnsw and opted.vector_index == "hnsw"
        assert not client.query(collection, vector=[1, 0, 0, 0], k=3, mode="vector").exhaustive
        # without opting in, writes keep no HNSW index up to date: the scan stays exact
        left = client.get_collection(plain)
        assert not left.pgvector_hnsw and left.vector_index == "none"
        assert client.query(plain, vector=[1, 0, 0, 0], k=3, mode="vector").exhaustive
    finally:
        client.delete_collection(plain)


def test_wide_filters_are_refused_at_the_limit(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    limit = engine.settings.max_filter_conditions
    wide_or = {"$or": [{"n": i} for i in range(limit + 1)]}
    with pytest.raises(unidb.InvalidInput, match="UNIDB_MAX_FILTER_CONDITIONS") as refused:
        client.query(collection, vector=[1.0, 0.0], mode="vector", filter=wide_or)
    assert refused.value.field == "filter.$or"
    many_keys = {f"k{i}": i for i in range(limit + 1)}
    with pytest.raises(unidb.InvalidInput, match="UNIDB_MAX_FILTER_CONDITIONS"):
        client.query(collection, vector=[1.0, 0.0], mode="vector", filter=many_keys)
    too_many = {"n": {"$in": list(range(engine.settings.max_filter_in_values + 1))}}
    with pytest.raises(unidb.InvalidInput, match="UNIDB_MAX_FILTER_IN_VALUES") as long_in:
        client.delete_where(collection, filter=too_many)
    assert long_in.value.field == "filter.n.$in"


def test_long_in_lists_are_one_parameter(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(
        collection,
        [{"id": f"d{i}", "metadata": {"n": i}, "embedding": [1.0, 0.0]} for i in range(50)],
    )
    # far more values than Postgres allows bind parameters (65,535)
    wanted = [*range(0, 50, 7), *range(1_000, 80_000)]
    spec = {"n": {"$in": wanted}}
    request = QueryRequest(vector=[1.0, 0.0], k=100, mode="vector", filter=spec)
    engine.settings.max_filter_in_values, saved = 100_000, engine.settings.max_filter_in_values
    try:
        hits = engine.query(collection, request).hits
        assert len(engine.planner.compiled_filter(spec).params) == 1  # the values, as one jsonb[]
    finally:
        engine.settings.max_filter_in_values = saved
    assert {h.id for h in hits} == {f"d{i}" for i in range(0, 50, 7)}


def test_a_missing_collection_is_named_before_its_filter_is_compiled(engine: Engine) -> None:
    client = unidb.Client(backend=engine)
    wide = {"$or": [{"n": i} for i in range(engine.settings.max_filter_conditions + 1)]}
    with pytest.raises(unidb.NotFound):
        client.query("no_such_collection", vector=[1.0, 0.0], mode="vector", filter=wide)
    with pytest.raises(unidb.NotFound):
        client.delete_where("no_such_collection", filter=wide)


def test_metadata_filters_use_the_gin_index_under_row_level_security(
    engine: Engine, collection: str
) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(
        collection,
        [
            {"id": str(i), "metadata": {"lab": f"l{i % 7}"}, "embedding": [1.0, 0.0]}
            for i in range(50)
        ],
    )
    # the service's own role, bound by the documents' policy, with a tenant named
    with engine.transaction() as conn:
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                # no collection predicate: the primary key's bitmap must not win on
                # statistics other tests' rows left behind
                "EXPLAIN SELECT d.key FROM unidb.documents d WHERE d.metadata @> %s::jsonb",
                ('{"lab": "l3"}',),
            ).fetchall()
        )
    assert "documents_metadata_gin" in plan


def test_filters_true_of_every_document_never_delete(engine: Engine, collection: str) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    client.upsert(
        collection,
        [{"id": str(i), "metadata": {"a": i}, "embedding": [1.0, 0.0]} for i in range(5)],
    )
    everything = [
        {"nope": {"$nin": []}},
        {"$not": {"x": {"$in": []}}},
        {"$or": [{"a": 1}, {"x": {"$nin": []}}]},
        {"$and": [{"x": {"$nin": []}}, {"$not": {"$and": [{"a": 1}, {"y": {"$in": []}}]}}]},
        {"a": {"$ne": 3}, "$or": [{"x": {"$nin": []}}, {"a": 2}], "y": {"$nin": []}},
    ]
    for spec in everything[:4]:
        with pytest.raises(unidb.InvalidInput, match="all: true") as refused:
            client.delete_where(collection, filter=spec)
        assert refused.value.field == "filter"
    assert client.get_collection(collection).documents == 5
    # still a filter for queries, and a selective one is no constant
    hits = client.query(collection, vector=[1.0, 0.0], mode="vector", filter=everything[0])
    assert len(hits.hits) == 5
    assert client.delete_where(collection, filter=everything[4]) == 4
    assert [d.id for d in client.query(collection, vector=[1.0, 0.0], mode="vector").hits] == ["3"]


def test_every_operator_and_in_value_counts_toward_the_limits(
    engine: Engine, collection: str
) -> None:
    client = unidb.Client(backend=engine)
    client.create_collection(collection, dim=2)
    dense_field = {
        "$in": [[i] for i in range(16)],
        "$nin": [[i] for i in range(16)],
        "$gt": 1,
        "$gte": 1,
        "$lt": 9,
        "$lte": 9,
        "$ne": [1],
        "$eq": [1],
        "$exists": True,
    }
    # about 81 parameters a field: past 65,535 before, now past the condition limit
    wide = {f"f{i}": dense_field for i in range(engine.settings.max_filter_conditions)}
    with pytest.raises(unidb.InvalidInput, match="UNIDB_MAX_FILTER_CONDITIONS"):
        client.query(collection, vector=[1.0, 0.0], mode="vector", filter=wide)
    per_field = engine.settings.max_filter_in_values // 2 + 1
    spread = {"a": {"$in": list(range(per_field))}, "b": {"$in": list(range(per_field))}}
    with pytest.raises(unidb.InvalidInput, match="UNIDB_MAX_FILTER_IN_VALUES") as refused:
        client.query(collection, vector=[1.0, 0.0], mode="vector", filter=spread)
    assert refused.value.field == "filter.b.$in"
