"""Predicate pushdown for `find` over archived entities.

A `find` filter is translated, where that is safe, into a DuckDB predicate on the JSON
`state` column of the archive's entity files, so a large namespace is filtered in
DuckDB's engine and only candidate states are decoded in Python. The translation is a
superset: it may let through documents the filter rejects (the Python matcher checks
every candidate again) but never drops one it accepts. Anything it cannot translate
exactly enough becomes TRUE.
"""

from __future__ import annotations

import re
from typing import Any

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
TRUE = "TRUE"


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _path(field: str) -> str:
    return _lit("$." + field)


def _eq(field: str, value: Any) -> str:
    # a field holding a list matches when the list contains the value: keep arrays
    array = f"json_type(state, {_path(field)}) = 'ARRAY'"
    if _num(value):
        return f"(TRY_CAST(json_extract(state, {_path(field)}) AS DOUBLE) = {float(value)!r} OR {array})"
    if isinstance(value, str):
        return f"(json_extract_string(state, {_path(field)}) = {_lit(value)} OR {array})"
    return TRUE


def _cmp(field: str, op: str, value: Any) -> str:
    sql_op = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
    if _num(value):
        return f"TRY_CAST(json_extract(state, {_path(field)}) AS DOUBLE) {sql_op} {float(value)!r}"
    if isinstance(value, str):
        return f"json_extract_string(state, {_path(field)}) {sql_op} {_lit(value)}"
    return TRUE


def _cond(field: str, cond: Any) -> str:
    if not (isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond)):
        return _eq(field, cond)
    parts = []
    for op, arg in cond.items():
        if op == "$eq":
            parts.append(_eq(field, arg))
        elif op in ("$gt", "$gte", "$lt", "$lte"):
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
