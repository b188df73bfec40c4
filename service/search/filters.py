"""unidb's metadata filter language, compiled to parameterized SQL over a jsonb column.

    {"lang": "en", "year": {"$gte": 2020}, "$or": [{"a.b": 1}, {"tags": {"$exists": true}}]}

Field operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists``; logical: ``$and $or $not``.
A bare value means ``$eq``; several entries in one object are ANDed. Dotted paths walk nested
objects. ``$gt``-style comparisons hold only between values of the same kind (number or
string, strings in code-point order); a missing field fails every operator but ``$ne``,
``$nin`` and ``$exists: false``. Values are always bound parameters, never SQL text.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from unidb.errors import InvalidInput

MAX_PATH_SEGMENTS = 32
# an $in list longer than this is bound as one array parameter, not one parameter per value
# (short lists stay ORed containments, which the metadata GIN index can answer)
_IN_AS_ARRAY_ABOVE = 16
_COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_FIELD_OPS = {"$eq", "$ne", "$in", "$nin", "$exists", *_COMPARISONS}


# Postgres binds at most 65,535 parameters per statement; a filter leaves room for the rest
MAX_PARAMS = 60_000


class CompiledFilter:
    """A boolean SQL expression and its parameters, in order. ``matches_everything``: the
    filter is true of every document whatever its metadata (empty, or ``$nin: []``-like)."""

    def __init__(
        self, expression: sql.Composable, params: list[Any], *, matches_everything: bool = False
    ) -> None:
        self.expression = expression
        self.params = params
        self.matches_everything = matches_everything


def compile_filter(
    spec: dict[str, Any] | None,
    *,
    column: sql.Composable,
    max_depth: int = 8,
    max_conditions: int = 1_000,
    max_in_values: int = 10_000,
) -> CompiledFilter:
    """Compile ``spec`` against the jsonb ``column``; raises InvalidInput naming the bad part.

    The work is bounded before it is done: past ``max_conditions`` conditions (each field
    operator, logical branch and short ``$in`` value counts), or past ``max_in_values``
    ``$in``/``$nin`` values in the whole filter, compiling stops with a 400 naming the limit.
    """
    params: list[Any] = []
    if not spec:
        return CompiledFilter(sql.SQL("TRUE"), params, matches_everything=True)
    compiler = _Compiler(column, params, max_depth, max_conditions, max_in_values)
    expression = compiler.filter(spec, "filter", 1)
    if len(params) > MAX_PARAMS:  # not reachable within the condition limit's ceiling
        raise InvalidInput(f"the filter needs over {MAX_PARAMS} parameters", field="filter")
    return CompiledFilter(
        expression, params, matches_everything=compiler.constant(expression) is True
    )


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _nest(path: list[str], value: Any) -> Any:
    for key in reversed(path):
        value = {key: value}
    return value


class _Compiler:
    def __init__(
        self,
        column: sql.Composable,
        params: list[Any],
        max_depth: int,
        max_conditions: int,
        max_in_values: int,
    ) -> None:
        self.column = column
        self.params = params
        self.max_depth = max_depth
        self.max_conditions = max_conditions
        self.max_in_values = max_in_values
        self.conditions = 0
        self.in_values = 0
        # expressions whose value is known whatever the row: id → True / False
        self._constants: dict[int, bool] = {}
        self._kept: list[sql.Composable] = []  # keeps those ids from being reused

    def constant(self, expression: sql.Composable) -> bool | None:
        return self._constants.get(id(expression))

    def _known(self, expression: sql.Composable, value: bool | None) -> sql.Composable:
        if value is not None:
            self._constants[id(expression)] = value
            self._kept.append(expression)
        return expression

    def _all(self, parts: list[sql.Composable]) -> sql.Composable:
        if len(parts) == 1:
            return parts[0]
        known = [self.constant(p) for p in parts]
        value = False if False in known else True if all(known) else None
        return self._known(sql.SQL("({})").format(sql.SQL(" AND ").join(parts)), value)

    def _any(self, parts: list[sql.Composable]) -> sql.Composable:
        if len(parts) == 1:
            return parts[0]
        known = [self.constant(p) for p in parts]
        value = True if True in known else False if all(k is False for k in known) else None
        return self._known(sql.SQL("({})").format(sql.SQL(" OR ").join(parts)), value)

    def _not(self, inner: sql.Composable) -> sql.Composable:
        value = self.constant(inner)
        return self._known(sql.SQL("NOT ({})").format(inner), None if value is None else not value)

    def _count(self, where: str, n: int = 1) -> None:
        self.conditions += n
        if self.conditions > self.max_conditions:
            raise InvalidInput(
                f"the filter has more than {self.max_conditions} conditions "
                "(UNIDB_MAX_FILTER_CONDITIONS)",
                field=where,
            )

    def _param(self, value: Any) -> sql.Composable:
        self.params.append(value)
        return sql.Placeholder()

    def filter(self, spec: Any, where: str, depth: int) -> sql.Composable:
        if depth > self.max_depth:
            raise InvalidInput(f"is nested deeper than {self.max_depth} levels", field=where)
        if not isinstance(spec, dict):
            raise InvalidInput("must be an object", field=where)
        if not spec:
            # only the whole filter may be empty: an empty branch would let a filter that
            # looks selective (a delete's, say) admit every document
            raise InvalidInput("an empty filter inside $and, $or or $not", field=where)
        parts = []
        for key, value in spec.items():
            self._count(where)
            if not isinstance(key, str):
                raise InvalidInput("keys must be strings", field=where)
            if key in ("$and", "$or"):
                parts.append(self._logical(key, value, f"{where}.{key}", depth))
            elif key == "$not":
                parts.append(self._not(self.filter(value, f"{where}.$not", depth + 1)))
            elif key.startswith("$"):
                raise InvalidInput(f"unknown operator {key!r}", field=f"{where}.{key}")
            else:
                parts.append(self._field(key, value, f"{where}.{key}", depth))
        return self._all(parts)

    def _logical(self, op: str, value: Any, where: str, depth: int) -> sql.Composable:
        if not isinstance(value, list) or not value:
            raise InvalidInput(f"{op} takes a non-empty list of filters", field=where)
        # counted before any branch is compiled: a huge list is refused at once
        self._count(where, len(value))
        inner = [self.filter(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
        return self._all(inner) if op == "$and" else self._any(inner)

    def _path(self, key: str, where: str) -> list[str]:
        segments = key.split(".")
        if any(not s for s in segments) or len(segments) > MAX_PATH_SEGMENTS or "\x00" in key:
            raise InvalidInput(
                f"field path {key!r} must be 1 to {MAX_PATH_SEGMENTS} non-empty dotted names",
                field=where,
            )
        return segments

    def _field(self, key: str, condition: Any, where: str, depth: int) -> sql.Composable:
        path = self._path(key, where)
        if isinstance(condition, dict) and any(str(k).startswith("$") for k in condition):
            if depth + 1 > self.max_depth:
                raise InvalidInput(f"is nested deeper than {self.max_depth} levels", field=where)
            # each operator is a condition of its own (the entry counted the first)
            self._count(where, len(condition) - 1)
            parts = [self._op(path, op, value, f"{where}.{op}") for op, value in condition.items()]
            return self._all(parts)
        return self._eq(path, condition, where)

    def _value_at(self, path: list[str]) -> sql.Composable:
        return sql.SQL("({} #> {})").format(self.column, self._param(path))

    def _eq(self, path: list[str], value: Any, where: str) -> sql.Composable:
        _check_json(value, where)
        if _is_scalar(value):
            # containment of a scalar is equality, and it can use the GIN index
            return sql.SQL("({} @> {})").format(self.column, self._param(Jsonb(_nest(path, value))))
        return sql.SQL("COALESCE({} = {}, false)").format(
            self._value_at(path), self._param(Jsonb(value))
        )

    def _op(self, path: list[str], op: str, value: Any, where: str) -> sql.Composable:
        if op not in _FIELD_OPS:
            raise InvalidInput(f"unknown operator {op!r}", field=where)
        if op == "$eq":
            return self._eq(path, value, where)
        if op == "$ne":
            return self._not(self._eq(path, value, where))
        if op in ("$in", "$nin"):
            if not isinstance(value, list):
                raise InvalidInput(f"{op} takes a list of values", field=where)
            self.in_values += len(value)
            if self.in_values > self.max_in_values:
                raise InvalidInput(
                    f"the filter's $in and $nin lists hold over {self.max_in_values} values "
                    "(UNIDB_MAX_FILTER_IN_VALUES)",
                    field=where,
                )
            matched = self._in(path, value, where)
            return matched if op == "$in" else self._not(matched)
        if op == "$exists":
            if not isinstance(value, bool):
                raise InvalidInput("$exists takes true or false", field=where)
            test = "IS NOT NULL" if value else "IS NULL"
            return sql.SQL("({} {})").format(self._value_at(path), sql.SQL(test))
        return self._compare(path, _COMPARISONS[op], value, where)

    def _in(self, path: list[str], values: list[Any], where: str) -> sql.Composable:
        if not values:
            return self._known(sql.SQL("FALSE"), False)
        if len(values) <= _IN_AS_ARRAY_ABOVE:
            # each value its own condition and parameter
            self._count(where, len(values) - 1)
            alternatives = [self._eq(path, v, f"{where}[{i}]") for i, v in enumerate(values)]
            return self._any(alternatives)
        for i, v in enumerate(values):
            _check_json(v, f"{where}[{i}]")
        # the same tests as _eq, each list bound as one jsonb[] parameter
        scalars = [Jsonb(_nest(path, v)) for v in values if _is_scalar(v)]
        others = [Jsonb(v) for v in values if not _is_scalar(v)]
        tests = []
        if scalars:
            tests.append(
                sql.SQL("({} @> ANY({}::jsonb[]))").format(self.column, self._param(scalars))
            )
        if others:
            tests.append(
                sql.SQL("COALESCE({} = ANY({}::jsonb[]), false)").format(
                    self._value_at(path), self._param(others)
                )
            )
        return sql.SQL("({})").format(sql.SQL(" OR ").join(tests))

    def _compare(self, path: list[str], operator: str, value: Any, where: str) -> sql.Composable:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidInput("comparisons take a number or a string", field=where)
        if isinstance(value, float) and value != value:
            raise InvalidInput("comparisons take a finite number", field=where)
        _check_json(value, where)
        if isinstance(value, str):
            template = (
                "COALESCE(CASE WHEN jsonb_typeof({kind}) = 'string'"
                " THEN ({target} #>> '{{}}') COLLATE \"C\" {op} {v}::text END, false)"
            )
        else:
            template = (
                "COALESCE(CASE WHEN jsonb_typeof({kind}) = 'number'"
                " THEN ({target})::numeric {op} {v}::numeric END, false)"
            )
        # each placeholder binds its own parameter, appended in the order they appear
        kind = self._value_at(path)
        target = self._value_at(path)
        return sql.SQL(template).format(
            kind=kind, target=target, op=sql.SQL(operator), v=self._param(value)
        )


def _check_json(value: Any, where: str) -> None:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise InvalidInput("must be a finite number", field=where)
    if isinstance(value, str) and "\x00" in value:
        raise InvalidInput("must not contain the NUL character", field=where)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_json(k, where)
            _check_json(v, where)
    elif isinstance(value, list):
        for v in value:
            _check_json(v, where)
