"""Update operators (`$set`, `$inc`, ...) applied to an entity's data.

`apply_update` is pure and deterministic given the event time, so replaying a stored
UPDATE event reproduces exactly the state the live call returned.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from parquedb_orm.core.codec import check_serialisable, clone
from parquedb_orm.errors import UnknownOperatorError, ValidationError

#: Fields the store maintains; updates may not touch them.
META_FIELDS = frozenset(
    {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}
)
LINK_OPERATORS = frozenset({"$link", "$unlink"})

State = dict[str, Any]


def _check_path(path: object, op: str) -> list[str]:
    if not isinstance(path, str) or not path or path.startswith("$"):
        raise ValidationError(f"{op}: invalid field name {path!r} (non-empty, not starting with '$')")
    parts = path.split(".")
    if any(not p for p in parts):
        raise ValidationError(f"{op}: invalid field path {path!r}")
    if parts[0] in META_FIELDS:
        raise ValidationError(f"{op}: field {parts[0]!r} is maintained by the store and cannot be updated")
    return parts


def _parent(state: State, parts: list[str], create: bool) -> dict[str, Any] | None:
    node: Any = state
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            if not create:
                return None
            if child is not None:
                raise ValidationError(f"cannot descend into {part!r}: it is a {type(child).__name__}")
            child = {}
            node[part] = child
        node = child
    return node if isinstance(node, dict) else None


_MISSING = object()


def _get(state: State, parts: list[str]) -> Any:
    parent = _parent(state, parts, create=False)
    if parent is None:
        return _MISSING
    return parent.get(parts[-1], _MISSING)


def _set(state: State, parts: list[str], value: Any) -> None:
    parent = _parent(state, parts, create=True)
    assert parent is not None
    parent[parts[-1]] = value


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
    return cur + amount if op == "$inc" else cur * amount


def _each(value: Any) -> list[Any]:
    if isinstance(value, dict) and set(value) == {"$each"}:
        items = value["$each"]
        if not isinstance(items, list):
            raise ValidationError(f"$each expects a list, got {type(items).__name__}")
        return items
    if isinstance(value, dict) and any(k.startswith("$") for k in value):
        raise UnknownOperatorError(f"unsupported array modifier in {value!r}: only $each is implemented")
    return [value]


def _existing_list(state: State, parts: list[str], op: str, path: str) -> list[Any]:
    cur = _get(state, parts)
    if cur is _MISSING or cur is None:
        return []
    if not isinstance(cur, list):
        raise ValidationError(f"{op} {path!r}: field holds a {type(cur).__name__}, not a list")
    return list(cur)


def _op_set(state: State, path: str, value: Any, now: datetime) -> None:
    _set(state, _check_path(path, "$set"), clone(value))


def _op_unset(state: State, path: str, value: Any, now: datetime) -> None:
    parts = _check_path(path, "$unset")
    parent = _parent(state, parts, create=False)
    if parent is not None:
        parent.pop(parts[-1], None)


def _op_inc(state: State, path: str, value: Any, now: datetime) -> None:
    parts = _check_path(path, "$inc")
    amount = _number(value, "$inc", path)
    cur = _get(state, parts)
    result = amount if cur is _MISSING or cur is None else _arith(_number(cur, "$inc", path), amount, "$inc", path)
    _set(state, parts, _finite(result, "$inc", path))


def _op_mul(state: State, path: str, value: Any, now: datetime) -> None:
    parts = _check_path(path, "$mul")
    factor = _number(value, "$mul", path)
    cur = _get(state, parts)
    base: Number = 0 if cur is _MISSING or cur is None else _number(cur, "$mul", path)
    _set(state, parts, _finite(_arith(base, factor, "$mul", path), "$mul", path))


def _compare_op(pick_new: Callable[[Any, Any], bool], name: str) -> Callable[[State, str, Any, datetime], None]:
    def apply(state: State, path: str, value: Any, now: datetime) -> None:
        parts = _check_path(path, name)
        cur = _get(state, parts)
        if cur is _MISSING or cur is None:
            _set(state, parts, clone(value))
            return
        _no_float_with_decimal(value, cur, name, path)
        try:
            better = pick_new(value, cur)
        except (TypeError, ArithmeticError):
            # naive vs aware datetime, date vs datetime, str vs int...: refuse, never guess
            raise ValidationError(
                f"{name} {path!r}: cannot compare {value!r} with the stored {cur!r} "
                f"({type(value).__name__} vs {type(cur).__name__})"
            ) from None
        if better:
            _set(state, parts, clone(value))

    return apply


def _op_push(state: State, path: str, value: Any, now: datetime) -> None:
    parts = _check_path(path, "$push")
    _set(state, parts, _existing_list(state, parts, "$push", path) + clone(_each(value)))


def _op_add_to_set(state: State, path: str, value: Any, now: datetime) -> None:
    parts = _check_path(path, "$addToSet")
    items = _existing_list(state, parts, "$addToSet", path)
    for item in _each(value):
        if not any(same(item, have) for have in items):
            items.append(clone(item))
    _set(state, parts, items)


def _op_pull(state: State, path: str, value: Any, now: datetime) -> None:
    from parquedb_orm.core.filters import match_value  # local: filters imports this module's constants

    parts = _check_path(path, "$pull")
    cur = _get(state, parts)
    if cur is _MISSING or cur is None:
        return
    if not isinstance(cur, list):
        raise ValidationError(f"$pull {path!r}: field holds a {type(cur).__name__}, not a list")
    if isinstance(value, dict) and value and all(k.startswith("$") for k in value):
        kept = [item for item in cur if not match_value(item, value)]
    else:
        kept = [item for item in cur if not same(item, value)]
    _set(state, parts, kept)


def _op_rename(state: State, path: str, value: Any, now: datetime) -> None:
    src = _check_path(path, "$rename")
    if not isinstance(value, str):
        raise ValidationError(f"$rename {path!r}: target must be a field name, got {value!r}")
    dst = _check_path(value, "$rename")
    if src == dst:
        raise ValidationError(f"$rename {path!r}: source and target are the same")
    parent = _parent(state, src, create=False)
    if parent is None or src[-1] not in parent:
        return
    moved = parent.pop(src[-1])
    _set(state, dst, moved)


def _op_current_date(state: State, path: str, value: Any, now: datetime) -> None:
    parts = _check_path(path, "$currentDate")
    if value is not True and value != {"$type": "date"}:
        raise ValidationError(f"$currentDate {path!r}: expected true or {{'$type': 'date'}}, got {value!r}")
    _set(state, parts, now)


OPERATORS: dict[str, Callable[[State, str, Any, datetime], None]] = {
    "$set": _op_set,
    "$unset": _op_unset,
    "$inc": _op_inc,
    "$mul": _op_mul,
    "$min": _compare_op(lambda new, cur: new < cur, "$min"),
    "$max": _compare_op(lambda new, cur: new > cur, "$max"),
    "$push": _op_push,
    "$addToSet": _op_add_to_set,
    "$pull": _op_pull,
    "$rename": _op_rename,
    "$currentDate": _op_current_date,
}


def _check_operand(op: str, path: str, value: Any) -> None:
    """Values are stored as given, so they follow the storage rules (no `$` keys inside);
    the operator modifiers themselves (`$each`, `$pull` conditions) are allowed."""
    if op == "$currentDate":
        return  # true or {"$type": "date"}, checked when applied
    if op in ("$push", "$addToSet") and isinstance(value, dict) and value and all(k.startswith("$") for k in value):
        if "$each" in value:
            check_serialisable(value["$each"], path)  # other modifiers are refused when applied
    elif op == "$pull" and isinstance(value, dict) and value and all(k.startswith("$") for k in value):
        for arg in value.values():
            check_serialisable(arg, path)
    else:
        check_serialisable(value, path)


def _finite(value: Any, op: str, path: str) -> Any:
    if (isinstance(value, float) and not math.isfinite(value)) or (
        isinstance(value, Decimal) and not value.is_finite()
    ):
        raise ValidationError(f"{op} {path!r}: the result {value!r} is not a finite number and cannot be stored")
    return value


def same(a: Any, b: Any) -> bool:
    """Equality as stored data sees it: a boolean is not the number 1 or 0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


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
                _check_path(path, op)
                _check_operand(op, path, value)
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
