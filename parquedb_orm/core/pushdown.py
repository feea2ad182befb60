"""Predicate pushdown for `find` over archived entities.

A `find` filter is translated, where that is safe, into a DuckDB predicate on the JSON
`state` column of the archive's entity files, so a large namespace is filtered in
DuckDB's engine and only candidate states are decoded in Python. The translation is a
superset: it may let through documents the filter rejects (the Python matcher checks
every candidate again) but never drops one it accepts. Anything it cannot translate
exactly enough becomes TRUE.

Where a file records its fields' types (`parquedb.fields` metadata, see archive/parquet.py)
a top-level field of one non-mixed type is compared on its typed `f_<k>` column instead,
exactly where Python's comparison is certain (a str never equals an int...) and leniently
(TRUE) otherwise; `sort_column` says when DuckDB can order by such a column as
`filters.sort_docs` would.

Files written before the plain format (tagged JSON, no `types` column) hold values beyond
JSON as tagged objects (`codec`): a field holding a Decimal is `{"$decimal": "1.10"}`, a
datetime `{"$date": iso}`... so each predicate looks at the plain JSON value and at the
tag the filter value can equal or be ordered with. Plain files (`plain=True`) hold the
value's plain form at the field's own path (a Decimal as "1.10", a datetime as its ISO
text...), so the predicate compares that text or number directly, which also lets
strings of that shape through (a superset: Python decides). Enum members and custom
types (`$enum`, `$ext`) may compare equal to plain values (an IntEnum equals its int, a
StrEnum its str), so a row holding one always passes to Python: in plain files, any row
whose `types` names such a tag.

A "timestamp" field (aware datetimes in every row: `f_<k>` is TIMESTAMPTZ) is compared
exactly with an aware datetime; any other filter value against it is lenient.
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
TRUE = "TRUE"
FALSE = "FALSE"
#: keys the store maintains (or keeps as its own columns): a file's field list may leave them out
_STORE_KEYS = frozenset(
    {"version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy", "name", "type", "id",
     "number", "seq", "state"}
)  # fmt: skip
_SHREDDED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: a file's field list holds at most this many keys: a longer one may have left keys out
MAX_FIELDS = 64
#: a typed column: (SQL expression, kind), kind one of bool int float string null (no row has it)
Typed = tuple[str, str]
_KINDS = frozenset({"bool", "int", "float", "string", "timestamp"})
_SQL_OP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _path(field: str, tag: str | None = None) -> str:
    return _lit("$." + field + ("" if tag is None else f'."{tag}"'))


def _tagged(field: str, tag: str, plain: bool) -> str:
    if plain:
        return f"json_extract_string(state, {_path(field)})"
    return f"json_extract_string(state, {_path(field, tag)})"


def _opaque(field: str, plain: bool) -> str:
    """The field holds an enum member or a custom type: only Python can compare it."""
    if plain:  # the row's types sidecar names the tag (any field: lenient, never loses a row)
        text = "CAST(types AS VARCHAR)"
        return f"(types IS NOT NULL AND (contains({text}, '\"$enum\"') OR contains({text}, '\"$ext\"')))"
    return f"json_exists(state, {_path(field, '$enum')}) OR json_exists(state, {_path(field, '$ext')})"


def _array(field: str) -> str:
    """Rows where `field` or a path above it holds an array: a condition on an array
    matches any element, and a path continues into an array's documents (`a.b` on
    `a: [{"b": ...}]`), which `$.a.b` does not reach: such rows pass to Python."""
    parts = field.split(".")
    checks = [f"json_type(state, {_path('.'.join(parts[: i + 1]))}) = 'ARRAY'" for i in range(len(parts))]
    return checks[0] if len(checks) == 1 else "(" + " OR ".join(checks) + ")"


def _double(value: Any) -> float | None:
    """A number filter value as a finite float, or None (bool, not a number, too large)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _number_sql(field: str, op: str, value: float, plain: bool) -> str:
    """Numbers (plain JSON or `$decimal`) compared as DOUBLE. Both sides are rounded to a
    double (2**53 + 1 > 2**53, but not as doubles): rounding is monotonic, so inclusive
    bounds lose no exact match; they are also widened by one ulp in case DuckDB's parsing
    and Python's round a value differently. Python re-checks every candidate exactly."""
    num = (
        # a plain Decimal is a string: its text casts too, in rows whose types name one (a
        # JSON true casts to 1 too: a superset, Python refuses a bool for a number)
        f"COALESCE(TRY_CAST(json_extract(state, {_path(field)}) AS DOUBLE), "
        f"CASE WHEN contains(CAST(types AS VARCHAR), '\"$decimal\"') "
        f"THEN TRY_CAST(json_extract_string(state, {_path(field)}) AS DOUBLE) END)"
        if plain
        else (
            f"COALESCE(TRY_CAST(json_extract(state, {_path(field)}) AS DOUBLE), "
            f"TRY_CAST({_tagged(field, '$decimal', False)} AS DOUBLE))"
        )
    )
    low, high = math.nextafter(value, -math.inf), math.nextafter(value, math.inf)
    if op == "$eq":
        return f"{num} BETWEEN {low!r}::DOUBLE AND {high!r}::DOUBLE"
    if op in ("$gt", "$gte"):
        return f"{num} >= {low!r}::DOUBLE"
    return f"{num} <= {high!r}::DOUBLE"


def _typed(field: str, op: str, value: Any, plain: bool) -> str | None:
    """The predicate on the plain JSON value or the one tag `value` compares with, or None
    when there is no safe one. `op` is `$eq` or an ordering operator."""
    sql_op = "=" if op == "$eq" else _SQL_OP[op]
    f = _double(value)
    if f is not None:
        return _number_sql(field, op, f, plain)
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
        stored = f"TRY_CAST({_tagged(field, '$date', plain)} AS {kind})"
        # a text DuckDB cannot parse gives NULL, which passes (IS NOT FALSE): Python decides
        return (
            f"(json_exists(state, {_path(field, None if plain else '$date')}) AND "
            f"({stored} {sql_op} TRY_CAST({_lit(text)} AS {kind})) IS NOT FALSE)"
        )
    if isinstance(value, date):
        day = _lit(date.isoformat(value))
        return f"{_tagged(field, '$day', plain)} {sql_op} {day}"  # ISO dates sort as text
    if isinstance(value, uuid.UUID):
        # str(UUID) is fixed-width lowercase hex: text order is UUID order
        return f"{_tagged(field, '$uuid', plain)} {sql_op} {_lit(uuid.UUID.__str__(value))}"
    if isinstance(value, (bytes, bytearray, memoryview)) and op == "$eq":
        return f"{_tagged(field, '$bytes', plain)} = {_lit(base64.b64encode(bytes(value)).decode('ascii'))}"
    return None  # bool, None, time, timedelta, enum, custom, list, dict: Python only


def column(field: str, fields: Mapping[str, str] | None) -> Typed | None:
    """The typed column holding `field` in a file with these field types, or None when only
    the JSON `state` knows (no metadata, a mixed field, a key the list may have left out).
    A nested path under a typed (scalar) field, or a field the file provably lacks, is
    missing from every row: the NULL 'column'."""
    if fields is None:
        return None
    top = field.split(".", 1)[0]
    kind = fields.get(top)
    if kind is None:
        complete = len(fields) < MAX_FIELDS and _SHREDDED.match(top) is not None and top not in _STORE_KEYS
        return ("NULL", "null") if complete else None
    if kind not in _KINDS:
        return None
    if "." in field:
        return ("NULL", "null")
    return ('"f_' + top + '"', kind)


def _value_kind(value: Any) -> str | None:
    """bool, number, string, none, or None: a value a typed column cannot judge exactly."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float, Decimal)):
        return "number" if _double(value) is not None else None
    if isinstance(value, str):
        return "string"
    return None


def _typed_number(col: str, kind: str, op: str, value: Any) -> str:
    if kind == "int" and isinstance(value, int) and -(2**63) <= value < 2**63:
        return f"{col} {'=' if op == '$eq' else _SQL_OP[op]} {int(value)}"  # exact
    f = _double(value)
    assert f is not None
    low, high = math.nextafter(f, -math.inf), math.nextafter(f, math.inf)
    num = f"CAST({col} AS DOUBLE)"
    if op == "$eq":
        return f"{num} BETWEEN {low!r}::DOUBLE AND {high!r}::DOUBLE"
    if op in ("$gt", "$gte"):
        return f"{num} >= {low!r}::DOUBLE"
    return f"{num} <= {high!r}::DOUBLE"


def _instant(value: Any) -> str | None:
    """An aware datetime as a TIMESTAMPTZ literal (None: not one, or out of range)."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        return None
    try:
        return f"CAST({_lit(datetime.isoformat(datetime.astimezone(value, UTC)))} AS TIMESTAMPTZ)"
    except OverflowError:
        return None


def _typed_time(col: str, op: str, value: Any) -> str:
    """A timestamp column (aware datetimes only) against a filter value: exact for an aware
    datetime; a missing field never equals or orders with one; anything else: Python."""
    if value is None:
        # MongoDB (as filters._range): $gte/$lte null match a null or missing field too
        return f"{col} IS NULL" if op in ("$eq", "$gte", "$lte") else FALSE
    lit = _instant(value)
    if lit is None:
        return TRUE
    return f"{col} {'=' if op == '$eq' else _SQL_OP[op]} {lit}"


def _typed_eq(typed: Typed, value: Any) -> str:
    """Python's `stored == value` (filters._eq) on a typed column: a scalar, never a list."""
    col, kind = typed
    if kind == "timestamp":
        return _typed_time(col, "$eq", value)
    vk = _value_kind(value)
    if vk is None:
        return TRUE  # enums, custom types, dates...: Python decides
    if vk == "none":
        return f"{col} IS NULL"  # missing or null
    if kind == "null":
        return FALSE
    if vk == "string":
        return f"{col} = {_lit(value)}" if kind == "string" else FALSE
    if kind == "string":
        return FALSE
    if kind == "bool":
        # a bool is not a number (filters: operators.same): true never equals 1
        return f"{col} = {'TRUE' if value else 'FALSE'}" if vk == "bool" else FALSE
    if vk == "bool":
        return FALSE
    return _typed_number(col, kind, "$eq", value)


def _typed_cmp(typed: Typed, op: str, value: Any) -> str:
    """Python's ordering (filters._range) on a typed column: a bool against a non-bool and
    kinds Python cannot order never match; a null operand as MongoDB has it."""
    col, kind = typed
    if kind == "timestamp":
        return _typed_time(col, op, value)
    vk = _value_kind(value)
    if vk is None:
        return TRUE
    if vk == "none":
        # MongoDB: $gte/$lte null match a null or missing field, $gt/$lt null nothing
        return f"{col} IS NULL" if op in ("$gte", "$lte") else FALSE
    if kind == "null":
        return FALSE
    if vk == "bool":
        return f"{col} {_SQL_OP[op]} {'TRUE' if value else 'FALSE'}" if kind == "bool" else FALSE
    if vk == "string":
        # DuckDB compares VARCHAR bytewise: UTF-8 byte order is code point order, Python's
        return f"{col} {_SQL_OP[op]} {_lit(value)}" if kind == "string" else FALSE
    return _typed_number(col, kind, op, value) if kind in ("int", "float") else FALSE


def sort_column(field: str, fields: Mapping[str, str] | None) -> Typed | None:
    """The column DuckDB can order by as `filters.sort_docs` orders `field` (a store key
    or a typed field; None: only Python can)."""
    meta = _META_COLUMNS.get(field)
    if meta is not None:
        return meta
    typed = column(field, fields)
    if typed is not None and typed[1] == "float":
        return (f"(CASE WHEN {typed[0]} = 0 THEN 0.0 ELSE {typed[0]} END)", "float")  # -0.0 ties 0.0
    return typed


_META_COLUMNS: dict[str, Typed] = {
    "createdAt": ("created_at", "ts"),
    "updatedAt": ("updated_at", "ts"),
    "deletedAt": ("deleted_at", "ts"),
    "version": ("version", "int"),
    "$id": ("id", "string"),
    "$type": ("type", "string"),
}


def _eq(field: str, value: Any, plain: bool) -> str:
    pred = _typed(field, "$eq", value, plain)
    if pred is None:
        return TRUE
    return f"({pred} OR {_array(field)} OR {_opaque(field, plain)})"


def _cmp(field: str, op: str, value: Any, plain: bool) -> str:
    pred = _typed(field, op, value, plain)
    if pred is None:
        return TRUE
    return f"({pred} OR {_array(field)} OR {_opaque(field, plain)})"


def _cond(field: str, cond: Any, fields: Mapping[str, str] | None, plain: bool) -> str:
    typed = column(field, fields)

    def eq(value: Any) -> str:
        return _eq(field, value, plain) if typed is None else _typed_eq(typed, value)

    if not (isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond)):
        return eq(cond)
    parts = []
    for op, arg in cond.items():
        if op == "$eq":
            parts.append(eq(arg))
        elif op in _SQL_OP:
            parts.append(_cmp(field, op, arg, plain) if typed is None else _typed_cmp(typed, op, arg))
        elif op == "$in" and isinstance(arg, (list, tuple)) and arg:
            parts.append(_or([eq(v) for v in arg]))
        else:
            parts.append(TRUE)  # $ne, $nin, $exists, $not: not worth the risk
    return _and(parts)


def _and(parts: list[str]) -> str:
    kept = [p for p in parts if p != TRUE]
    if FALSE in kept:
        return FALSE
    return "(" + " AND ".join(kept) + ")" if kept else TRUE


def _or(alts: list[str]) -> str:
    if TRUE in alts:
        return TRUE
    kept = [a for a in alts if a != FALSE]
    return "(" + " OR ".join(kept) + ")" if kept else FALSE


def to_sql(flt: dict[str, Any], fields: Mapping[str, str] | None = None, *, plain: bool = False) -> str:
    """A DuckDB boolean expression over `state` (and, given a file's field types, its
    typed `f_<k>` columns) accepting at least what `flt` accepts. `plain`: the file holds
    plain JSON and a `types` column (else tagged JSON, as files written before)."""
    parts = []
    for key, cond in flt.items():
        if key == "$and":
            parts.append(_and([to_sql(sub, fields, plain=plain) for sub in cond]))
        elif key == "$or":
            parts.append(_or([to_sql(sub, fields, plain=plain) for sub in cond]))
        elif key == "$type" and isinstance(cond, str):
            parts.append(f"type = {_lit(cond)}")
        elif key.startswith("$") or not _FIELD.match(key):
            parts.append(TRUE)
        else:
            parts.append(_cond(key, cond, fields, plain))
    return _and(parts)
