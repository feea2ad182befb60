"""Predicate pushdown for `find` over archived entities.

A `find` filter is translated, where that is safe, into a DuckDB predicate on the JSON
`state` column of the archive's entity files, so a large namespace is filtered in
DuckDB's engine and only candidate states are decoded in Python. The translation is a
superset: it may let through documents the filter rejects (the Python matcher checks
every candidate again) but never drops one it accepts. Anything it cannot translate
exactly enough becomes TRUE.

Stored values beyond JSON are tagged objects (`codec`): a field holding a Decimal is
`{"$decimal": "1.10"}`, a datetime `{"$date": iso}`... so each predicate looks at the
plain JSON value and at the tag the filter value can equal or be ordered with. Enum
members and custom types (`$enum`, `$ext`) may compare equal to plain values (an IntEnum
equals its int, a StrEnum its str), so a field holding one always passes to Python.
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
TRUE = "TRUE"
_SQL_OP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _path(field: str, tag: str | None = None) -> str:
    return _lit("$." + field + ("" if tag is None else f'."{tag}"'))


def _tagged(field: str, tag: str) -> str:
    return f"json_extract_string(state, {_path(field, tag)})"


def _opaque(field: str) -> str:
    """The field holds an enum member or a custom type: only Python can compare it."""
    return f"json_exists(state, {_path(field, '$enum')}) OR json_exists(state, {_path(field, '$ext')})"


def _array(field: str) -> str:
    # a field holding a list matches when the list contains the value: keep arrays
    return f"json_type(state, {_path(field)}) = 'ARRAY'"


def _double(value: Any) -> float | None:
    """A number filter value as a finite float, or None (bool, not a number, too large)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _number_sql(field: str, op: str, value: float) -> str:
    """Numbers (plain JSON or `$decimal`) compared as DOUBLE. Both sides are rounded to a
    double (2**53 + 1 > 2**53, but not as doubles): rounding is monotonic, so inclusive
    bounds lose no exact match; they are also widened by one ulp in case DuckDB's parsing
    and Python's round a value differently. Python re-checks every candidate exactly."""
    num = (
        f"COALESCE(TRY_CAST(json_extract(state, {_path(field)}) AS DOUBLE), "
        f"TRY_CAST({_tagged(field, '$decimal')} AS DOUBLE))"
    )
    low, high = math.nextafter(value, -math.inf), math.nextafter(value, math.inf)
    if op == "$eq":
        return f"{num} BETWEEN {low!r}::DOUBLE AND {high!r}::DOUBLE"
    if op in ("$gt", "$gte"):
        return f"{num} >= {low!r}::DOUBLE"
    return f"{num} <= {high!r}::DOUBLE"


def _typed(field: str, op: str, value: Any) -> str | None:
    """The predicate on the plain JSON value or the one tag `value` compares with, or None
    when there is no safe one. `op` is `$eq` or an ordering operator."""
    sql_op = "=" if op == "$eq" else _SQL_OP[op]
    f = _double(value)
    if f is not None:
        return _number_sql(field, op, f)
    if isinstance(value, str):
        return f"json_extract_string(state, {_path(field)}) {sql_op} {_lit(value)}"
    if isinstance(value, datetime):
        # instants compare exactly in microseconds; a stored datetime of the other kind
        # (naive vs aware) never matches in Python, so casting it too is only lenient
        kind = "TIMESTAMP" if value.utcoffset() is None else "TIMESTAMPTZ"
        try:
            text = datetime.isoformat(value if kind == "TIMESTAMP" else datetime.astimezone(value, UTC))
        except OverflowError:  # near datetime.min/max
            return None
        stored = f"TRY_CAST({_tagged(field, '$date')} AS {kind})"
        # a text DuckDB cannot parse gives NULL, which passes (IS NOT FALSE): Python decides
        return (
            f"(json_exists(state, {_path(field, '$date')}) AND "
            f"({stored} {sql_op} TRY_CAST({_lit(text)} AS {kind})) IS NOT FALSE)"
        )
    if isinstance(value, date):
        return f"{_tagged(field, '$day')} {sql_op} {_lit(date.isoformat(value))}"  # ISO dates sort as text
    if isinstance(value, uuid.UUID):
        # str(UUID) is fixed-width lowercase hex: text order is UUID order
        return f"{_tagged(field, '$uuid')} {sql_op} {_lit(uuid.UUID.__str__(value))}"
    if isinstance(value, (bytes, bytearray, memoryview)) and op == "$eq":
        return f"{_tagged(field, '$bytes')} = {_lit(base64.b64encode(bytes(value)).decode('ascii'))}"
    return None  # bool, None, time, timedelta, enum, custom, list, dict: Python only


def _eq(field: str, value: Any) -> str:
    pred = _typed(field, "$eq", value)
    if pred is None:
        return TRUE
    return f"({pred} OR {_array(field)} OR {_opaque(field)})"


def _cmp(field: str, op: str, value: Any) -> str:
    pred = _typed(field, op, value)
    if pred is None:
        return TRUE
    return f"({pred} OR {_opaque(field)})"


def _cond(field: str, cond: Any) -> str:
    if not (isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond)):
        return _eq(field, cond)
    parts = []
    for op, arg in cond.items():
        if op == "$eq":
            parts.append(_eq(field, arg))
        elif op in _SQL_OP:
            parts.append(_cmp(field, op, arg))
        elif op == "$in" and isinstance(arg, (list, tuple)) and arg:
            alts = [_eq(field, v) for v in arg]
            parts.append(TRUE if TRUE in alts else "(" + " OR ".join(alts) + ")")
        else:
            parts.append(TRUE)  # $ne, $nin, $exists, $not: not worth the risk
    return _and(parts)


def _and(parts: list[str]) -> str:
    kept = [p for p in parts if p != TRUE]
    return "(" + " AND ".join(kept) + ")" if kept else TRUE


def to_sql(flt: dict[str, Any]) -> str:
    """A DuckDB boolean expression over `state` accepting at least what `flt` accepts."""
    parts = []
    for key, cond in flt.items():
        if key == "$and":
            parts.append(_and([to_sql(sub) for sub in cond]))
        elif key == "$or":
            alts = [to_sql(sub) for sub in cond]
            parts.append(TRUE if TRUE in alts else "(" + " OR ".join(alts) + ")")
        elif key == "$type" and isinstance(cond, str):
            parts.append(f"type = {_lit(cond)}")
        elif key.startswith("$") or not _FIELD.match(key):
            parts.append(TRUE)
        else:
            parts.append(_cond(key, cond))
    return _and(parts)
