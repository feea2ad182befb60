"""`find` filters (`$eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $not`) and sorting.

Comparisons are Python's: numbers (int, float, Decimal) with numbers, strings with
strings, datetimes with datetimes of the same kind (naive or aware), dates, times,
timedeltas, UUIDs, bytes with their own kind. A pair Python cannot order (str vs int,
naive vs aware datetime, date vs datetime...) simply does not match.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from parquedb_orm.errors import UnknownOperatorError, ValidationError

_MISSING = object()
FIELD_OPERATORS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$not"})
LOGICAL_OPERATORS = frozenset({"$and", "$or", "$not"})


def _resolve(doc: Any, path: str) -> Any:
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _cmp(a: Any, b: Any, op: str) -> bool:
    if a is _MISSING or a is None or b is None:
        return False
    # numbers compare with numbers (bool is not a number here), strings with strings...
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


def _eq(value: Any, target: Any) -> bool:
    if value is _MISSING:
        return target is None
    if isinstance(value, list) and not isinstance(target, list):
        return target in value
    return bool(value == target)


def match_value(value: Any, cond: Any) -> bool:
    """Does a field value satisfy a condition (a literal or a dict of operators)?"""
    if not (isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond)):
        return _eq(value, cond)
    for op, arg in cond.items():
        if op == "$eq":
            ok = _eq(value, arg)
        elif op == "$ne":
            ok = not _eq(value, arg)
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            ok = _cmp(value, arg, op)
        elif op == "$in":
            ok = any(_eq(value, item) for item in _as_list(arg, op))
        elif op == "$nin":
            ok = not any(_eq(value, item) for item in _as_list(arg, op))
        elif op == "$exists":
            ok = (value is not _MISSING) == bool(arg)
        elif op == "$not":
            ok = not match_value(value, arg)
        else:
            raise UnknownOperatorError(f"unknown filter operator {op!r}; supported: {sorted(FIELD_OPERATORS)}")
        if not ok:
            return False
    return True


def _as_list(arg: Any, op: str) -> list[Any]:
    if not isinstance(arg, (list, tuple)):
        raise ValidationError(f"{op} expects a list, got {arg!r}")
    return list(arg)


def matches(doc: dict[str, Any], flt: dict[str, Any]) -> bool:
    for key, cond in flt.items():
        if key == "$and":
            if not all(matches(doc, sub) for sub in cond):
                return False
        elif key == "$or":
            if not any(matches(doc, sub) for sub in cond):
                return False
        elif key == "$not":
            if matches(doc, cond):
                return False
        elif not match_value(_resolve(doc, key), cond):
            return False
    return True


def validate_filter(flt: object) -> dict[str, Any]:
    """Check a filter's shape up front so a typo fails loudly instead of matching nothing."""
    if flt is None:
        return {}
    if not isinstance(flt, dict):
        raise ValidationError(f"filter must be a dict, got {type(flt).__name__}")
    for key, cond in flt.items():
        if not isinstance(key, str) or not key:
            raise ValidationError(f"filter key {key!r} must be a non-empty string")
        if key in ("$and", "$or"):
            if not isinstance(cond, list) or not cond:
                raise ValidationError(f"{key} expects a non-empty list of filters")
            for sub in cond:
                validate_filter(sub)
        elif key == "$not":
            validate_filter(cond)
        elif key.startswith("$") and key not in ("$id", "$type"):
            raise UnknownOperatorError(f"unknown filter operator {key!r}; supported: {sorted(LOGICAL_OPERATORS)}")
        else:
            _validate_cond(cond)
    return flt


def _validate_cond(cond: Any) -> None:
    if isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
        for op, arg in cond.items():
            if op not in FIELD_OPERATORS:
                raise UnknownOperatorError(f"unknown filter operator {op!r}; supported: {sorted(FIELD_OPERATORS)}")
            if op in ("$in", "$nin"):
                _as_list(arg, op)
            if op == "$not":
                _validate_cond(arg)


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
        if direction not in (1, -1) or isinstance(direction, bool):
            raise ValidationError(f"sort direction for {key!r} must be 1 or -1, got {direction!r}")
        out.append((key, direction))
    return out


def sort_docs(docs: list[dict[str, Any]], sort: list[tuple[str, int]]) -> list[dict[str, Any]]:
    for key, direction in reversed(sort):  # stable sorts, least significant key first
        docs.sort(key=lambda d: _sort_key(_resolve(d, key)), reverse=direction == -1)
    return docs
