"""`find` filters (`$eq $ne $gt $gte $lt $lte $in $nin $exists $not`, `$and $or $nor`,
and a top-level `$not`) and sorting; docs/operators.md states the semantics.

MongoDB's matching: a dotted path indexes arrays (`a.0`) and continues into their
document elements; a condition on an array matches the array itself or any element;
null matches a missing field. Equality is `operators.same` (a bool is not a number,
documents compare field-order-sensitively). Ordering brackets by type: numbers (int,
float, Decimal) with numbers, strings with strings, datetimes with datetimes of the same
kind (naive or aware), dates, times, timedeltas, UUIDs, bytes with their own kind; a pair
Python cannot order (str vs int, naive vs aware datetime...) simply does not match.
Operands are checked up front (`validate_filter`): a typo or an operator document used as
a value is refused with a typed error, never matched.
"""

from __future__ import annotations

import heapq
import operator
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from parquedb_orm.core.codec import check_serialisable
from parquedb_orm.errors import UnknownOperatorError, ValidationError

#: how deep a filter, an update's paths and a filter's literals may nest (a deeper one is
#: refused, never a RecursionError)
MAX_DEPTH = 100
_MISSING = object()
FIELD_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$not"})
LOGICAL_OPERATORS = frozenset({"$and", "$or", "$nor", "$not"})
_RANGE = frozenset({"$gt", "$gte", "$lt", "$lte"})
#: keys of a stored state that start with `$` and can be filtered on
_STATE_KEYS = frozenset({"$id", "$type"})


def _values(node: Any, parts: list[str]) -> list[Any]:
    """Every value a dotted path reaches, MongoDB's way: a numeric segment indexes an
    array, and a path continues into each document element of an array it meets
    (`tags.name` on `tags: [{"name": ...}, ...]`). `_MISSING` where the path ends early."""
    if not parts:
        return [node]
    head, rest = parts[0], parts[1:]
    if isinstance(node, dict):
        return _values(node[head], rest) if head in node else [_MISSING]
    if isinstance(node, list):
        out: list[Any] = []
        # more than 18 digits is no list index (and int() of 4,301 digits raises)
        if head.isascii() and head.isdigit() and len(head) <= 18 and int(head) < len(node):
            out += _values(node[int(head)], rest)
        for item in node:
            if isinstance(item, dict):
                out += _values(item, parts)
        return out or [_MISSING]
    return [_MISSING]


def _resolve(doc: Any, path: str) -> Any:
    """The one value at `path` without array traversal (sorting), `_MISSING` if none."""
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _cmp(a: Any, b: Any, op: str) -> bool:
    """One ordering comparison with MongoDB's type bracketing: a number orders only with
    numbers (a bool is not one), a string with strings...; missing, null, documents and
    arrays never order with a scalar."""
    if a is _MISSING or a is None or isinstance(a, (dict, list, tuple)):
        return False
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    try:
        if op == "$gt":
            return bool(a > b)
        if op == "$gte":
            return bool(a >= b)
        if op == "$lt":
            return bool(a < b)
        return bool(a <= b)
    except (TypeError, ArithmeticError):  # ArithmeticError: a custom type's comparison refusing
        return False


def _eq(values: list[Any], target: Any) -> bool:
    """MongoDB equality: a value equal to the target (documents field-order-sensitive, a
    bool never equals a number), or an array holding an element equal to it; null matches
    a missing field too."""
    for value in values:
        if value is _MISSING:
            if target is None:
                return True
        elif same(value, target, ordered=True) or (
            isinstance(value, list) and any(same(item, target, ordered=True) for item in value)
        ):
            return True
    return False


def _range(values: list[Any], target: Any, op: str) -> bool:
    if target is None:
        # MongoDB: $gte/$lte null match what equals null (null, missing); $gt/$lt nothing
        return op in ("$gte", "$lte") and _eq(values, None)
    for value in values:
        if _cmp(value, target, op) or (isinstance(value, list) and any(_cmp(item, target, op) for item in value)):
            return True
    return False


def _match(values: list[Any], cond: Any) -> bool:
    if not _is_operators(cond):
        return _eq(values, cond)
    for op, arg in cond.items():
        if op == "$eq":
            ok = _eq(values, arg)
        elif op == "$ne":
            ok = not _eq(values, arg)
        elif op in _RANGE:
            ok = _range(values, arg, op)
        elif op == "$in":
            ok = any(_eq(values, item) for item in arg)
        elif op == "$nin":
            ok = not any(_eq(values, item) for item in arg)
        elif op == "$exists":
            ok = any(v is not _MISSING for v in values) == bool(arg)
        elif op == "$not":
            ok = not _match(values, arg)
        else:
            raise UnknownOperatorError(f"unknown filter operator {op!r}; supported: {sorted(FIELD_OPERATORS)}")
        if not ok:
            return False
    return True


def match_value(value: Any, cond: Any) -> bool:
    """Does one value (an array element for `$pull`) satisfy a condition (a literal or a
    dict of operators)?"""
    return _match([value], cond)


def _is_operators(cond: Any) -> bool:
    return isinstance(cond, dict) and bool(cond) and all(isinstance(k, str) and k.startswith("$") for k in cond)


def matches(doc: dict[str, Any], flt: dict[str, Any]) -> bool:
    """Does a state satisfy a filter (checked by `validate_filter`)?"""
    for key, cond in flt.items():
        if key == "$and":
            if not all(matches(doc, sub) for sub in cond):
                return False
        elif key == "$or":
            if not any(matches(doc, sub) for sub in cond):
                return False
        elif key == "$nor":
            if any(matches(doc, sub) for sub in cond):
                return False
        elif key == "$not":
            if matches(doc, cond):
                return False
        elif not _match(_values(doc, key.split(".")), cond):
            return False
    return True


Test = Callable[[dict[str, Any]], bool]
Check = Callable[[list[Any]], bool]
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def compile_filter(flt: dict[str, Any]) -> Test:
    """`matches(doc, flt)` as one function built once (a find tests every entity of a
    namespace: interpreting the filter dict per document cost ~7 µs a document). Same
    semantics: every branch ends in the same helpers `matches` uses."""
    tests: list[Test] = []
    for key, cond in flt.items():
        if key in ("$and", "$or", "$nor"):
            subs = [compile_filter(sub) for sub in cond]
            tests.append(_all(subs) if key == "$and" else _any(subs) if key == "$or" else _negate(_any(subs)))
        elif key == "$not":
            tests.append(_negate(compile_filter(cond)))
        else:
            tests.append(_compile_field(key, cond))
    if len(tests) == 1:
        return tests[0]
    return _all(tests)


def _all(tests: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    return lambda x: all(t(x) for t in tests)


def _any(tests: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    return lambda x: any(t(x) for t in tests)


def _negate(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda x: not test(x)


def _compile_field(key: str, cond: Any) -> Test:
    check = _compile_cond(cond)
    parts = key.split(".")
    if len(parts) == 1:
        # _values(doc, [key]) of a document: [doc[key]] or [_MISSING]
        return lambda d: check([d.get(key, _MISSING)])
    return lambda d: check(_values(d, parts))


def _compile_op(op: str, arg: Any) -> Check:
    if op == "$eq":
        return lambda values: _eq(values, arg)
    if op == "$ne":
        return lambda values: not _eq(values, arg)
    if op in _RANGE:
        return _compile_range(op, arg)
    if op == "$in":
        return lambda values: any(_eq(values, item) for item in arg)
    if op == "$nin":
        return lambda values: not any(_eq(values, item) for item in arg)
    if op == "$exists":
        return lambda values: any(v is not _MISSING for v in values) == bool(arg)
    if op == "$not":
        return _negate(_compile_cond(arg))
    raise UnknownOperatorError(f"unknown filter operator {op!r}; supported: {sorted(FIELD_OPERATORS)}")


def _compile_cond(cond: Any) -> Check:
    if not _is_operators(cond):
        return lambda values: _eq(values, cond)
    checks = [_compile_op(op, arg) for op, arg in cond.items()]
    return checks[0] if len(checks) == 1 else _all(checks)


def _compile_range(op: str, target: Any) -> Check:
    if target is None or type(target) not in (int, float):
        return lambda values: _range(values, target, op)
    compare = _OPS[op]

    def check(values: list[Any]) -> bool:
        for value in values:
            kind = type(value)
            if kind is int or kind is float:  # a number against a number: _cmp's answer
                if compare(value, target):
                    return True
            elif _cmp(value, target, op) or (isinstance(value, list) and any(_cmp(i, target, op) for i in value)):
                return True
        return False

    return check


def validate_filter(flt: object, _depth: int = 0) -> dict[str, Any]:
    """Check a filter's shape and every operand up front, so a typo or an operand that
    cannot mean anything fails loudly instead of matching nothing (or everything)."""
    if flt is None and _depth == 0:
        return {}
    if _depth > MAX_DEPTH:
        raise ValidationError(f"filter nested more than {MAX_DEPTH} levels deep")
    if not isinstance(flt, dict):
        raise ValidationError(f"filter must be a dict, got {type(flt).__name__}")
    for key, cond in flt.items():
        if not isinstance(key, str) or not key:
            raise ValidationError(f"filter key {key!r} must be a non-empty string")
        if key in ("$and", "$or", "$nor"):
            if not isinstance(cond, (list, tuple)) or not cond:
                raise ValidationError(f"{key} expects a non-empty list of filters, got {cond!r}")
            for sub in cond:
                validate_filter(sub, _depth + 1)
        elif key == "$not":
            validate_filter(cond, _depth + 1)
        elif key.startswith("$") and key not in _STATE_KEYS:
            raise UnknownOperatorError(f"unknown filter operator {key!r}; supported: {sorted(LOGICAL_OPERATORS)}")
        else:
            _check_field(key)
            _validate_cond(cond, f"filter on {key!r}", _depth + 1)
    return flt


def _check_field(key: str) -> None:
    if key in _STATE_KEYS:
        return
    parts = key.split(".")
    if any(not p for p in parts):
        raise ValidationError(f"filter field {key!r} has an empty segment (a leading, trailing or double dot)")
    bad = next((p for p in parts if p.startswith("$")), None)
    if bad is not None:
        raise ValidationError(
            f"filter field {key!r}: segment {bad!r} starts with '$' (stored keys never do; "
            "positional operators are not supported)"
        )
    if len(parts) > MAX_DEPTH:
        raise ValidationError(f"filter field {key!r} has {len(parts)} segments; at most {MAX_DEPTH}")


def validate_condition(cond: object, where: str) -> None:
    """Check one field's condition (a literal or a dict of operators), as `$pull` takes it."""
    _validate_cond(cond, where, 1)


def _validate_cond(cond: Any, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValidationError(f"{where}: filter nested more than {MAX_DEPTH} levels deep")
    if not (isinstance(cond, dict) and any(isinstance(k, str) and k.startswith("$") for k in cond)):
        _operand(cond, where, "value", depth)
        return
    if not _is_operators(cond):
        raise ValidationError(
            f"{where}: {cond!r} mixes operators and field names; to match an embedded document "
            "write it without '$' keys, to use operators write only operators"
        )
    for op, arg in cond.items():
        if op not in FIELD_OPERATORS:
            raise UnknownOperatorError(f"{where}: unknown filter operator {op!r}; supported: {sorted(FIELD_OPERATORS)}")
        if op in ("$eq", "$ne"):
            _operand(arg, where, op, depth)
        elif op in _RANGE:
            if isinstance(arg, (dict, list, tuple)):
                raise ValidationError(
                    f"{where}: {op} needs a scalar (number, string, date...) or null, got {type(arg).__name__} "
                    f"{arg!r}: ordering documents and arrays is not supported"
                )
            _operand(arg, where, op, depth)
        elif op in ("$in", "$nin"):
            if not isinstance(arg, (list, tuple)):
                raise ValidationError(f"{where}: {op} expects a list, got {type(arg).__name__} {arg!r}")
            for item in arg:
                _operand(item, where, op, depth)
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise ValidationError(f"{where}: $exists expects true or false, got {arg!r}")
        else:  # $not
            if not _is_operators(arg):
                raise ValidationError(
                    f"{where}: $not expects a dict of operators (e.g. {{'$not': {{'$gt': 5}}}}), got {arg!r}; "
                    "for 'not equal' use $ne"
                )
            _validate_cond(arg, where, depth + 1)


def _operand(value: Any, where: str, op: str, depth: int) -> None:
    """A literal a filter compares with: a value that could be stored (no `$` keys, no
    NaN, a supported type), nested at most MAX_DEPTH levels."""
    if isinstance(value, dict):
        dollar = [k for k in value if isinstance(k, str) and k.startswith("$")]
        if dollar:
            known = FIELD_OPERATORS | LOGICAL_OPERATORS
            if any(k not in known for k in dollar):
                raise UnknownOperatorError(
                    f"{where}: {op} operand {value!r} holds the unknown operator "
                    f"{next(k for k in dollar if k not in known)!r}; an operand is a plain value"
                )
            raise ValidationError(
                f"{where}: {op} operand {value!r} is an operator document; an operand is a plain value"
            )
    _check_depth(value, where, depth)
    check_serialisable(value, where)


def _check_depth(value: Any, where: str, depth: int) -> None:
    stack = [(value, depth)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list, tuple)):
            if level > MAX_DEPTH:
                raise ValidationError(f"{where}: value nested more than {MAX_DEPTH} levels deep")
            items = node.values() if isinstance(node, dict) else node
            stack.extend((item, level + 1) for item in items)


def same(a: Any, b: Any, *, ordered: bool = False) -> bool:
    """Equality as stored data sees it: a boolean is not the number 1 or 0 (1 == 1.0 ==
    Decimal(1) as in MongoDB); a tuple is the list it is stored as. `ordered`: documents
    are equal only with their fields in the same order (MongoDB's query and $addToSet
    equality); otherwise field order is ignored."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, ordered=ordered) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        if len(a) != len(b):
            return False
        if ordered:
            return all(ka == kb and same(a[ka], b[kb], ordered=True) for ka, kb in zip(a, b, strict=True))
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple, dict)) or isinstance(b, (list, tuple, dict)):
        return False
    try:
        return bool(a == b)
    except (TypeError, ArithmeticError):  # a custom type's __eq__ refusing
        return False


def _sort_key(value: Any) -> tuple[Any, ...]:
    """A total order across types, so sorting never raises: missing/None, bool, numbers
    (int, float, Decimal together), strings, datetimes, dates, times, timedeltas, UUIDs,
    bytes, enum members, then anything else by its text."""
    if value is _MISSING or value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, (int, float, Decimal)):  # IntEnum members are ints and sort as such
        return (2, value)
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, datetime):
        # naive and aware cannot be compared: aware ones sort by their UTC wall time, among
        # the naive ones, which count as UTC here (a tie puts the naive one first)
        if value.utcoffset() is None:
            return (4, value.replace(tzinfo=None), 0)
        try:
            return (4, value.astimezone(UTC).replace(tzinfo=None), 1)
        except OverflowError:  # near datetime.min/max
            return (4, value.replace(tzinfo=None), 1)
    if isinstance(value, date):
        return (5, value)
    if isinstance(value, time):
        offset = value.utcoffset()
        us = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
        return (6, us - (0 if offset is None else offset // timedelta(microseconds=1)), offset is not None)
    if isinstance(value, timedelta):
        return (7, value)
    if isinstance(value, uuid.UUID):
        return (8, value.int)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (9, bytes(value))
    if isinstance(value, Enum):
        return (10, type(value).__qualname__, _sort_key(value.value))
    return (11, type(value).__qualname__, str(value))


def validate_sort(sort: object) -> list[tuple[str, int]]:
    if sort is None:
        return []
    if not isinstance(sort, dict):
        raise ValidationError(f"sort must be a dict of field -> 1 or -1, got {sort!r}")
    out: list[tuple[str, int]] = []
    for key, direction in sort.items():
        if not isinstance(key, str) or not key:
            raise ValidationError(f"sort key {key!r} must be a non-empty field name (a string)")
        if direction not in (1, -1) or isinstance(direction, bool):
            raise ValidationError(f"sort direction for {key!r} must be 1 or -1, got {direction!r}")
        out.append((key, direction))
    return out


def _order_key(sort: list[tuple[str, int]]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    keys = [key for key, _direction in sort]
    return lambda d: tuple(_sort_key(_resolve(d, key)) for key in keys)


def page(
    docs: list[dict[str, Any]],
    sort: list[tuple[str, int]],
    skip: int,
    limit: int | None,
    creation: Callable[[dict[str, Any]], Any],
    created: Callable[[dict[str, Any]], Any],
) -> list[dict[str, Any]]:
    """`docs` in creation order (`creation`, a costly key), then stably by `sort`, sliced
    `[skip:skip + limit]`. With a limit only the documents that can reach the page get the
    costly key: those ordered before or level with the page's last one by `sort` (or by
    `created`, the cheap first part of `creation`, when there is no sort). The answer is
    the full sort's."""
    if limit is not None and skip + limit < len(docs):
        want = skip + limit
        if want == 0:
            return []
        directions = {direction for _key, direction in sort}
        if len(directions) <= 1:
            if len(sort) == 1 and "." not in sort[0][0]:
                field = sort[0][0]
                keys = [d.get(field, _MISSING) for d in docs]
                if not all(type(k) is int or type(k) is float for k in keys):
                    keys = [(_sort_key(k),) for k in keys]
                # else plain numbers: ordered among themselves as their _sort_key tuples are
            elif sort:
                keyf = _order_key(sort)
                keys = [keyf(d) for d in docs]
            else:
                keys = [(created(d),) for d in docs]
            descending = directions == {-1}
            pick = heapq.nlargest if descending else heapq.nsmallest
            edge = keys[pick(want, range(len(docs)), key=keys.__getitem__)[-1]]
            docs = [d for d, k in zip(docs, keys, strict=True) if (k >= edge if descending else k <= edge)]
    docs.sort(key=creation)
    if sort:
        docs = sort_docs(docs, sort)
    return docs[skip:] if limit is None else docs[skip : skip + limit]


def sort_docs(docs: list[dict[str, Any]], sort: list[tuple[str, int]]) -> list[dict[str, Any]]:
    for key, direction in reversed(sort):  # stable sorts, least significant key first
        docs.sort(key=lambda d: _sort_key(_resolve(d, key)), reverse=direction == -1)
    return docs
