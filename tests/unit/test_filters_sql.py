"""The filter compiler alone: the SQL and parameters it produces, and the limits it enforces
before doing the work (tests/test_filters.py runs the same language against Postgres)."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from unidb.errors import InvalidInput
from unidb.service.search.filters import CompiledFilter, compile_filter

COLUMN = sql.Identifier("d", "metadata")


def _compiled(spec: dict[str, Any] | None, **limits: int) -> CompiledFilter:
    return compile_filter(spec, column=COLUMN, **limits)


def _sql(compiled: CompiledFilter) -> str:
    return compiled.expression.as_string(None)


def _plain(param: Any) -> Any:
    if isinstance(param, Jsonb):
        return param.obj
    if isinstance(param, list):
        return [_plain(p) for p in param]
    return param


def test_no_filter_is_true_without_parameters() -> None:
    for spec in (None, {}):
        compiled = _compiled(spec)
        assert _sql(compiled) == "TRUE"
        assert compiled.params == []
        assert compiled.matches_everything


def test_a_bare_value_is_one_containment_the_gin_index_can_answer() -> None:
    compiled = _compiled({"a.b": "x"})
    assert _sql(compiled) == '("d"."metadata" @> %s)'
    assert _plain(compiled.params) == [{"a": {"b": "x"}}]
    assert not compiled.matches_everything


def test_values_are_parameters_never_sql_text() -> None:
    evil = "'; DROP TABLE unidb.documents; --"
    compiled = _compiled({"k": evil, "n": {"$gt": evil, "$in": [evil, 1]}, "m": [evil]})
    text = _sql(compiled)
    assert "DROP" not in text
    assert text.count("%s") == len(compiled.params)
    assert evil in compiled.params  # the comparison's value, bound as it is


@pytest.mark.parametrize(
    ("spec", "count"),
    [
        ({"a": 1}, 1),  # one containment
        ({"a": {"$ne": 1}}, 1),
        ({"a": {"$eq": [1, 2]}}, 2),  # a non-scalar: the path, then the value
        ({"a": {"$exists": True}}, 1),  # the path
        ({"a": {"$gt": 1}}, 3),  # the path twice (type check, value), then the bound
        ({"a": {"$in": [1, 2, 3]}}, 3),  # short lists: one containment a value
        ({"a": {"$in": []}}, 0),
        ({"a": {"$in": list(range(17))}}, 1),  # long lists: one jsonb[] of containments
        ({"a": {"$nin": [*range(17), [1]]}}, 3),  # ...plus the path and the arrays' jsonb[]
        ({"$or": [{"a": 1}, {"b": {"$lt": "x"}}], "$not": {"c": None}}, 5),
    ],
)
def test_parameters_per_operator(spec: dict[str, Any], count: int) -> None:
    compiled = _compiled(spec)
    assert len(compiled.params) == count
    assert _sql(compiled).count("%s") == count


def test_long_in_lists_bind_every_value_in_one_parameter() -> None:
    values = list(range(100_000))
    compiled = _compiled({"n": {"$in": values}}, max_in_values=100_000)
    assert len(compiled.params) == 1
    assert _plain(compiled.params[0]) == [{"n": v} for v in values]
    assert "ANY(%s::jsonb[])" in _sql(compiled)


def test_comparisons_hold_only_within_a_kind() -> None:
    numbers = _sql(_compiled({"a": {"$gte": 2}}))
    strings = _sql(_compiled({"a": {"$lt": "m"}}))
    assert "jsonb_typeof" in numbers and "'number'" in numbers and "::numeric >=" in numbers
    assert "'string'" in strings and 'COLLATE "C" <' in strings


@pytest.mark.parametrize(
    ("spec", "everything"),
    [
        ({"x": {"$nin": []}}, True),
        ({"$not": {"x": {"$in": []}}}, True),
        ({"$or": [{"a": 1}, {"x": {"$nin": []}}]}, True),
        ({"x": {"$in": []}}, False),
        ({"a": 1}, False),
        ({"a": {"$ne": 3}, "y": {"$nin": []}}, False),
        ({"$and": [{"x": {"$nin": []}}, {"$not": {"$and": [{"a": 1}, {"y": {"$in": []}}]}}]}, True),
    ],
)
def test_filters_true_of_every_document_are_known(spec: dict[str, Any], everything: bool) -> None:
    assert _compiled(spec).matches_everything is everything


def test_condition_limit_names_the_part_that_crossed_it() -> None:
    with pytest.raises(InvalidInput, match="UNIDB_MAX_FILTER_CONDITIONS") as wide_or:
        _compiled({"$or": [{"n": i} for i in range(5)]}, max_conditions=5)
    assert wide_or.value.field == "filter.$or"
    with pytest.raises(InvalidInput, match="UNIDB_MAX_FILTER_CONDITIONS") as keys:
        _compiled({f"k{i}": i for i in range(6)}, max_conditions=5)
    assert keys.value.field == "filter"
    # every operator of a field counts, and so does each value of a short $in
    with pytest.raises(InvalidInput, match="UNIDB_MAX_FILTER_CONDITIONS"):
        _compiled({"a": {"$gt": 1, "$lt": 9, "$ne": 5, "$exists": True}}, max_conditions=3)
    with pytest.raises(InvalidInput, match="UNIDB_MAX_FILTER_CONDITIONS"):
        _compiled({"a": {"$in": [1, 2, 3, 4]}}, max_conditions=3)
    assert len(_compiled({"a": {"$in": [1, 2, 3]}}, max_conditions=3).params) == 3


def test_in_values_are_bounded_over_the_whole_filter() -> None:
    spread = {"a": {"$in": list(range(30))}, "b": {"$nin": list(range(30))}}
    with pytest.raises(InvalidInput, match="UNIDB_MAX_FILTER_IN_VALUES") as refused:
        _compiled(spread, max_in_values=50)
    assert refused.value.field == "filter.b.$nin"
    assert len(_compiled(spread, max_in_values=60).params) == 2


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"$not": {"$not": {"$not": {"a": 1}}}}, "filter.$not.$not.$not", "nested deeper"),
        ({"$bogus": 1}, "filter.$bogus", "unknown operator"),
        ({"a": {"$regex": "x"}}, "filter.a.$regex", "unknown operator"),
        ({"a..b": 1}, "filter.a..b", "dotted names"),
        ({".".join(["p"] * 33): 1}, "filter." + ".".join(["p"] * 33), "dotted names"),
        ({"$or": []}, "filter.$or", "non-empty list"),
        ({"$and": [{}]}, "filter.$and[0]", "empty filter"),
        ({"a": {"$in": "x"}}, "filter.a.$in", "list of values"),
        ({"a": {"$exists": 1}}, "filter.a.$exists", "true or false"),
        ({"a": {"$gt": True}}, "filter.a.$gt", "number or a string"),
        ({"a": {"$gt": float("nan")}}, "filter.a.$gt", "finite"),
        ({"a": float("inf")}, "filter.a", "finite"),
        ({"a": "x\x00"}, "filter.a", "NUL"),
    ],
)
def test_bad_filters_name_their_part(spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as refused:
        _compiled(spec, max_depth=3)
    assert refused.value.field == field
