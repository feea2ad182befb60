"""Update operators (`$set`, `$inc`, ...) applied to an entity's data.

`apply_update` is pure and deterministic given the event time, so replaying a stored
UPDATE event reproduces exactly the state the live call returned.
"""

from __future__ import annotations

import decimal
import itertools
import math
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from parquedb_orm.core.codec import check_serialisable, clone
from parquedb_orm.core.filters import MAX_DEPTH, match_value, matches, same, validate_condition, validate_filter
from parquedb_orm.errors import UnknownOperatorError, ValidationError

#: Fields the store maintains; updates may not touch them.
META_FIELDS = frozenset(
    {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}
)
LINK_OPERATORS = frozenset({"$link", "$unlink"})
__all__ = ["LINK_OPERATORS", "MAX_DEPTH", "META_FIELDS", "OPERATORS", "apply_update", "same", "validate_update"]

State = dict[str, Any]


#: how far past an array's end a numeric path segment may write (the gap is filled with nulls, as MongoDB does)
MAX_PAD = 10_000
_INDEX = re.compile(r"^[0-9]+$")


def check_path(path: object, op: str) -> list[str]:
    """A field path's segments, checked like stored keys (codec refuses `$` keys inside
    values: a `$date` segment would be read back as a tag), so a bad path fails the call
    before anything is written."""
    if not isinstance(path, str) or not path:
        raise ValidationError(f"{op}: field path must be a non-empty string, got {path!r}")
    parts = path.split(".")
    for part in parts:
        if not part:
            raise ValidationError(f"{op}: field path {path!r} has an empty segment (a leading, trailing or double dot)")
        if part.startswith("$"):
            raise ValidationError(
                f"{op}: field path {path!r}: segment {part!r} starts with '$', which is reserved "
                "(stored keys cannot start with '$'; positional operators are not supported)"
            )
    if len(parts) > MAX_DEPTH:
        raise ValidationError(f"{op}: field path {path!r} has {len(parts)} segments; at most {MAX_DEPTH}")
    if parts[0] in META_FIELDS:
        raise ValidationError(f"{op}: field {parts[0]!r} is maintained by the store and cannot be updated")
    return parts


_check_path = check_path


def _index(part: str) -> int | None:
    # more than 18 digits is no list index (and int() of 4,301 digits raises)
    return int(part) if len(part) <= 18 and _INDEX.match(part) else None


def _describe(value: Any) -> str:
    return "null" if value is None else f"a {type(value).__name__}"


def _parent(state: State, parts: list[str], create: bool, op: str = "$set") -> dict[str, Any] | list[Any] | None:
    """The container (dict, or list for a numeric last segment) holding the last segment.
    Numeric segments index into arrays (`a.0.b`); missing parents are created when
    `create` (as embedded documents); a null or scalar parent is refused when writing
    (MongoDB: "Cannot create field ... in element") and is simply absent when reading."""
    node: Any = state
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = _index(part)
            if idx is None:
                if not create:
                    return None
                where = ".".join(parts[:i])
                raise ValidationError(
                    f"{op} {'.'.join(parts)!r}: {where!r} is an array: only a numeric segment can follow it, "
                    f"not {part!r}"
                )
            child = node[idx] if idx < len(node) else _MISSING
        else:
            child = node.get(part, _MISSING)
        if child is _MISSING:
            if not create:
                return None
            child = {}
            _put(node, part, child, op, parts)
        elif not isinstance(child, (dict, list)):
            if not create:
                return None
            raise ValidationError(
                f"{op} {'.'.join(parts)!r}: cannot create field {parts[i + 1]!r} in {'.'.join(parts[: i + 1])!r}: "
                f"it holds {_describe(child)}"
            )
        node = child
    if isinstance(node, list) and _index(parts[-1]) is None:
        if not create:
            return None
        raise ValidationError(
            f"{op} {'.'.join(parts)!r}: {'.'.join(parts[:-1])!r} is an array: only a numeric segment can follow it, "
            f"not {parts[-1]!r}"
        )
    return node  # type: ignore[no-any-return]


def _put(node: dict[str, Any] | list[Any], part: str, value: Any, op: str, parts: list[str]) -> None:
    if isinstance(node, dict):
        node[part] = value
        return
    idx = _index(part)
    assert idx is not None  # _parent checked it
    if idx >= len(node):
        if idx - len(node) > MAX_PAD:
            raise ValidationError(
                f"{op} {'.'.join(parts)!r}: index {idx} is more than {MAX_PAD} past the end of the array "
                f"({len(node)} items)"
            )
        node.extend([None] * (idx + 1 - len(node)))  # MongoDB pads with nulls
    node[idx] = value


_MISSING = object()


def _get(state: State, parts: list[str]) -> Any:
    parent = _parent(state, parts, create=False)
    if parent is None:
        return _MISSING
    if isinstance(parent, list):
        idx = _index(parts[-1])
        return parent[idx] if idx is not None and idx < len(parent) else _MISSING
    return parent.get(parts[-1], _MISSING)


def _set(state: State, parts: list[str], value: Any, op: str = "$set") -> None:
    parent = _parent(state, parts, create=True, op=op)
    assert parent is not None
    _put(parent, parts[-1], value, op, parts)


Number = int | float | Decimal

#: Decimal $inc/$mul are exact whatever the application's (thread-local) context says, so
#: a replay computes the same digits as the live call; a result that would need rounding
#: (more than 10,000 digits) is refused rather than silently changed
_EXACT = decimal.Context(
    prec=10_000,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[decimal.InvalidOperation, decimal.Inexact, decimal.Rounded, decimal.Overflow],
)


def _number(value: object, op: str, path: str) -> Number:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValidationError(f"{op} {path!r}: {value!r} is not a number")
    return value


def _mixed(a: object, b: object, op: str, path: str) -> ValidationError:
    # Python refuses Decimal + float (a float is not exact); say so instead of a TypeError
    return ValidationError(
        f"{op} {path!r}: cannot combine Decimal and float ({a!r}, {b!r}): use Decimal (or int) for both"
    )


def _no_float_with_decimal(a: object, b: object, op: str, path: str) -> None:
    if (isinstance(a, Decimal) and isinstance(b, float)) or (isinstance(a, float) and isinstance(b, Decimal)):
        raise _mixed(a, b, op, path)


def _arith(cur: Number, amount: Number, op: str, path: str) -> Number:
    if isinstance(cur, Decimal) or isinstance(amount, Decimal):
        if isinstance(cur, float) or isinstance(amount, float):
            raise _mixed(cur, amount, op, path)
        try:
            return _EXACT.add(cur, amount) if op == "$inc" else _EXACT.multiply(cur, amount)
        except decimal.DecimalException as exc:
            raise ValidationError(
                f"{op} {path!r}: the exact result of {cur!r} and {amount!r} cannot be stored ({type(exc).__name__})"
            ) from None
    try:
        return cur + amount if op == "$inc" else cur * amount
    except OverflowError:  # an int beyond float range meets a float
        raise ValidationError(
            f"{op} {path!r}: {cur!r:.40} and {amount!r:.40} have no result a float can hold"
        ) from None


def _each(value: Any) -> list[Any]:
    if isinstance(value, dict) and set(value) == {"$each"}:
        items = value["$each"]
        if not isinstance(items, (list, tuple)):
            raise ValidationError(f"$each expects a list, got {type(items).__name__}")
        return list(items)
    if isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value):
        raise UnknownOperatorError(f"unsupported array modifier in {value!r}: only $each is implemented")
    return [value]


def _existing_list(state: State, parts: list[str], op: str, path: str) -> list[Any]:
    cur = _get(state, parts)
    if cur is _MISSING:
        return []
    if not isinstance(cur, list):
        # MongoDB: "The field ... must be an array but is of type null" (null included)
        raise ValidationError(f"{op} {path!r}: the field holds {_describe(cur)}, not an array")
    return list(cur)


def _op_set(state: State, path: str, value: Any, now: datetime) -> None:
    _set(state, check_path(path, "$set"), clone(value), "$set")


def _op_unset(state: State, path: str, value: Any, now: datetime) -> None:
    parts = check_path(path, "$unset")
    parent = _parent(state, parts, create=False)
    if isinstance(parent, dict):
        parent.pop(parts[-1], None)
    elif isinstance(parent, list):
        idx = _index(parts[-1])
        if idx is not None and idx < len(parent):
            parent[idx] = None  # MongoDB keeps the array's length: an unset element becomes null


def _op_inc(state: State, path: str, value: Any, now: datetime) -> None:
    parts = check_path(path, "$inc")
    amount = _number(value, "$inc", path)
    cur = _get(state, parts)
    if cur is None:
        raise ValidationError(f"$inc {path!r}: the field is null, not a number (MongoDB refuses it too)")
    result = amount if cur is _MISSING else _arith(_number(cur, "$inc", path), amount, "$inc", path)
    _set(state, parts, _finite(result, "$inc", path), "$inc")


def _op_mul(state: State, path: str, value: Any, now: datetime) -> None:
    parts = check_path(path, "$mul")
    factor = _number(value, "$mul", path)
    cur = _get(state, parts)
    if cur is None:
        raise ValidationError(f"$mul {path!r}: the field is null, not a number (MongoDB refuses it too)")
    base: Number = 0 if cur is _MISSING else _number(cur, "$mul", path)
    _set(state, parts, _finite(_arith(base, factor, "$mul", path), "$mul", path), "$mul")


#: BSON's comparison order of types (MongoDB's $min/$max, sorting): null < numbers < strings
#: < documents < arrays < binary < booleans < dates; types BSON lacks have no rank
_NULL, _NUMBER, _STRING, _DOCUMENT, _ARRAY, _BINARY, _BOOL, _DATE = 1, 2, 3, 4, 5, 6, 8, 9


def bson_rank(value: Any) -> int | None:
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, Enum):
        return _NUMBER
    if isinstance(value, str) and not isinstance(value, Enum):
        return _STRING
    if isinstance(value, dict):
        return _DOCUMENT
    if isinstance(value, (list, tuple)):
        return _ARRAY
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _BINARY
    if isinstance(value, datetime):
        return _DATE
    return None


def _less(new: Any, cur: Any, op: str, path: str) -> bool | None:
    """`new < cur` in BSON order (None: equal). Values of different BSON types order by
    type; within a type Python compares; what neither can order is refused, never guessed."""
    rn, rc = bson_rank(new), bson_rank(cur)
    if rn is not None and rc is not None and rn != rc:
        return rn < rc
    if rn == _NULL:
        return None
    if rn in (_DOCUMENT, _ARRAY):
        if same(new, cur, ordered=True):
            return None
        raise ValidationError(
            f"{op} {path!r}: comparing two {'documents' if rn == _DOCUMENT else 'arrays'} is not supported "
            f"({new!r} vs the stored {cur!r})"
        )
    if rn == _BINARY:
        a, b = bytes(new), bytes(cur)
        return None if a == b else (len(a), a) < (len(b), b)  # BSON: shorter binary first
    if isinstance(new, bool) != isinstance(cur, bool):  # an IntEnum vs a bool...
        raise _incomparable(new, cur, op, path)
    _no_float_with_decimal(new, cur, op, path)
    try:
        if new == cur:
            return None
        return bool(new < cur)
    except (TypeError, ArithmeticError):
        # naive vs aware datetime, date vs datetime, time vs timedelta...: refuse, never guess
        raise _incomparable(new, cur, op, path) from None


def _incomparable(new: Any, cur: Any, op: str, path: str) -> ValidationError:
    return ValidationError(
        f"{op} {path!r}: cannot compare {new!r} with the stored {cur!r} ({type(new).__name__} vs {type(cur).__name__})"
    )


def _compare_op(name: str) -> Callable[[State, str, Any, datetime], None]:
    def apply(state: State, path: str, value: Any, now: datetime) -> None:
        parts = check_path(path, name)
        cur = _get(state, parts)
        if cur is _MISSING:
            _set(state, parts, clone(value), name)
            return
        less = _less(value, cur, name, path)
        if less is not None and less == (name == "$min"):
            _set(state, parts, clone(value), name)

    return apply


def _op_push(state: State, path: str, value: Any, now: datetime) -> None:
    parts = check_path(path, "$push")
    _set(state, parts, _existing_list(state, parts, "$push", path) + clone(_each(value)), "$push")


def _op_add_to_set(state: State, path: str, value: Any, now: datetime) -> None:
    parts = check_path(path, "$addToSet")
    items = _existing_list(state, parts, "$addToSet", path)
    for item in _each(value):
        # MongoDB: a document is a duplicate only with the same fields in the same order
        if not any(same(item, have, ordered=True) for have in items):
            items.append(clone(item))
    _set(state, parts, items, "$addToSet")


def _is_condition(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(k, str) and k.startswith("$") for k in value)


def _op_pull(state: State, path: str, value: Any, now: datetime) -> None:
    parts = check_path(path, "$pull")
    cur = _get(state, parts)
    if cur is _MISSING:
        return
    if not isinstance(cur, list):
        raise ValidationError(f"$pull {path!r}: the field holds {_describe(cur)}, not an array")
    if _is_condition(value):
        kept = [item for item in cur if not match_value(item, value)]
    elif isinstance(value, dict):
        # MongoDB: a document is a query on the document elements, "as if each array element
        # were a document in a collection" ({"k": 1} pulls {"k": 1, "j": 2} too)
        kept = [item for item in cur if not (isinstance(item, dict) and matches(item, value))]
    else:
        kept = [item for item in cur if not same(item, value, ordered=True)]  # an array: exactly, in order
    _set(state, parts, kept, "$pull")


def _no_array_on(state: State, parts: list[str], path: str) -> None:
    node: Any = state
    for i, part in enumerate(parts):
        if isinstance(node, list):
            raise ValidationError(
                f"$rename {path!r}: {'.'.join(parts[:i])!r} is an array; $rename cannot move array elements"
            )
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]


def _op_rename(state: State, path: str, value: Any, now: datetime) -> None:
    src = check_path(path, "$rename")
    dst = check_path(value, "$rename")
    _no_array_on(state, src, path)
    _no_array_on(state, dst, path)
    parent = _parent(state, src, create=False)
    if not isinstance(parent, dict) or src[-1] not in parent:
        return
    moved = parent.pop(src[-1])
    _set(state, dst, moved, "$rename")


def _op_current_date(state: State, path: str, value: Any, now: datetime) -> None:
    parts = check_path(path, "$currentDate")
    if value is not True and value != {"$type": "date"}:
        raise ValidationError(f"$currentDate {path!r}: expected true or {{'$type': 'date'}}, got {value!r}")
    _set(state, parts, now, "$currentDate")


OPERATORS: dict[str, Callable[[State, str, Any, datetime], None]] = {
    "$set": _op_set,
    "$unset": _op_unset,
    "$inc": _op_inc,
    "$mul": _op_mul,
    "$min": _compare_op("$min"),
    "$max": _compare_op("$max"),
    "$push": _op_push,
    "$addToSet": _op_add_to_set,
    "$pull": _op_pull,
    "$rename": _op_rename,
    "$currentDate": _op_current_date,
}


def _check_operand(op: str, path: str, value: Any) -> None:
    """Values are stored as given, so they follow the storage rules (no `$` keys inside);
    the operator modifiers themselves (`$each`, `$pull` conditions) are checked here."""
    if op == "$currentDate":
        if value is not True and value != {"$type": "date"}:
            raise ValidationError(f"$currentDate {path!r}: expected true or {{'$type': 'date'}}, got {value!r}")
        return
    if op == "$rename":
        if not isinstance(value, str):
            raise ValidationError(f"$rename {path!r}: target must be a field path string, got {value!r}")
        return
    if op in ("$push", "$addToSet") and _is_condition(value):
        if "$each" in value:
            check_serialisable(value["$each"], path)  # other modifiers are refused when applied
    elif op == "$pull" and isinstance(value, dict):
        if _is_condition(value):
            validate_condition(value, f"$pull {path!r}")
        else:
            validate_filter(value)
    else:
        check_serialisable(value, path)


def _finite(value: Any, op: str, path: str) -> Any:
    if (isinstance(value, float) and not math.isfinite(value)) or (
        isinstance(value, Decimal) and not value.is_finite()
    ):
        raise ValidationError(f"{op} {path!r}: the result {value!r} is not a finite number and cannot be stored")
    return value


def _paths(update: dict[str, dict[str, Any]]) -> list[tuple[tuple[str, ...], str]]:
    out = []
    for op, fields in update.items():
        if op in OPERATORS:
            for path, value in fields.items():
                out.append((tuple(path.split(".")), op))
                if op == "$rename":
                    out.append((tuple(value.split(".")), op))
    return out


def _check_conflicts(update: dict[str, dict[str, Any]]) -> None:
    """MongoDB refuses an update whose paths overlap (`b.c` and `b`, or one path under two
    operators): the result would depend on the order they are applied in."""
    paths = sorted(_paths(update))
    # sorted, a path is followed by the paths under it: checking neighbours finds every overlap
    for (a, op_a), (b, op_b) in itertools.pairwise(paths):
        if b[: len(a)] == a:
            where = ".".join(a) if a == b else f"{'.'.join(a)!r} and {'.'.join(b)!r}"
            raise ValidationError(
                f"conflicting paths in one update: {where} ({op_a}, {op_b}); "
                "an update may touch a field (or anything under it) only once"
            )


def validate_update(update: object) -> dict[str, dict[str, Any]]:
    """Check the shape of an update document; returns it typed. Writes nothing."""
    if not isinstance(update, dict) or not update:
        raise ValidationError(f"update must be a non-empty dict of operators, got {update!r}")
    for op, fields in update.items():
        if op not in OPERATORS and op not in LINK_OPERATORS:
            known = ", ".join(sorted(OPERATORS) + sorted(LINK_OPERATORS))
            raise UnknownOperatorError(f"unknown update operator {op!r}; supported: {known}")
        if not isinstance(fields, dict) or not fields:
            raise ValidationError(f"{op} expects a non-empty dict of fields, got {fields!r}")
        if op in OPERATORS:
            for path, value in fields.items():
                check_path(path, op)
                _check_operand(op, path, value)
                if op == "$rename":
                    check_path(value, op)
                    if path == value:
                        raise ValidationError(f"$rename {path!r}: source and target are the same")
    _check_conflicts(update)
    return update


def apply_update(data: State, update: dict[str, dict[str, Any]], now: datetime) -> State:
    """A new state: `data` with every operator applied in document order."""
    state: State = clone(data)
    for op, fields in update.items():
        fn = OPERATORS.get(op)
        if fn is None:
            continue  # $link/$unlink become relationship events, not state
        for path, value in fields.items():
            fn(state, path, value, now)
    return state
