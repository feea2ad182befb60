"""The fuzz targets: one function per target, taking one input, raising `Violation` when
the contract is broken (a raw exception escaped, or a wrong result was accepted)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from parquedb_orm.core import codec, filters, operators, pushdown
from parquedb_orm.core.events import ENTITY_OPS, REL_OPS, Event, RelEvent
from parquedb_orm.errors import CorruptBatchError, ParqueDBError, SerializationError
from parquedb_orm.sql import wal
from parquedb_orm.sql.models import EventsWal, RelsWal

TABLE, ROW = "events_wal", "fuzz-row"
#: the event time of every fuzzed update (apply_update is pure given it)
NOW = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


class Violation(AssertionError):
    """A broken contract: `exc` is the exception that escaped (None for a wrong result)."""

    def __init__(self, target: str, message: str, value: Any, exc: BaseException | None = None) -> None:
        super().__init__(f"[{target}] {message}")
        self.target = target
        self.value = value
        self.exc = exc


def _escaped(target: str, value: Any, exc: BaseException, where: str) -> Violation:
    text = str(exc)
    if len(text) > 300:
        text = text[:300] + "..."
    return Violation(target, f"{where} raised {type(exc).__name__}: {text}", value, exc)


def _guard(target: str, value: Any, where: str, call: Callable[[], Any], allowed: tuple[type, ...]) -> Any:
    """`call()`; an allowed error is returned (not raised), anything else is a Violation."""
    try:
        return call()
    except allowed as exc:
        return exc
    except RecursionError as exc:  # before Exception: keep the traceback short
        raise _escaped(target, value, exc, where) from None
    except Exception as exc:
        raise _escaped(target, value, exc, where) from exc


# ------------------------------------------------------------------ 1. batch codec
def check_codec(blob: bytes) -> None:
    out = _guard(
        "codec",
        blob,
        "decode_batch",
        lambda: codec.decode_batch(blob, table=TABLE, row=ROW),
        (CorruptBatchError, SerializationError),
    )
    if isinstance(out, CorruptBatchError):
        if out.table != TABLE or out.row != ROW:
            raise Violation("codec", f"CorruptBatchError names {out.table!r} row {out.row!r}", blob)
        return
    if isinstance(out, SerializationError):
        return
    if not isinstance(out, list):
        raise Violation("codec", f"decode_batch returned {type(out).__name__}, not a list", blob)


def check_codec_roundtrip(records: list[Any]) -> None:
    """A batch the encoder accepts decodes to the same records (tuples come back as lists)."""
    try:
        blob = codec.encode_batch(records)
    except SerializationError:
        return
    back = codec.decode_batch(blob, table=TABLE, row=ROW)
    if not filters.same(back, records, ordered=True):
        raise Violation("codec", f"round trip changed the records: {back!r}", blob)


# ------------------------------------------------------------------ 2. record decoder
_EVENTS = EventsWal.__table__
_RELS = RelsWal.__table__
_NS, _FIRST = "fuzz", 7


def _decoders() -> list[tuple[str, Any, Callable[..., list[Any]], type]]:
    return [
        ("decode_events", _EVENTS, wal.decode_events, Event),
        ("decode_rel_events", _RELS, wal.decode_rel_events, RelEvent),
    ]


def _decode_all(records: Any) -> list[tuple[str, list[Any] | None]]:
    """(decoder name, its events or None when it refused the batch), for both decoders."""
    out = []
    for name, table, decode, cls in _decoders():
        res = _guard(
            "records",
            records,
            name,
            lambda decode=decode, table=table: decode(table, _NS, _FIRST, records),
            (CorruptBatchError,),
        )
        if isinstance(res, CorruptBatchError):
            row = res.row or ""
            if res.table != table.name or f"ns={_NS}" not in row or f"first_seq={_FIRST}" not in row:
                raise Violation("records", f"{name}: CorruptBatchError names {res.table!r} row {res.row!r}", records)
            out.append((name, None))
            continue
        if not isinstance(res, list) or len(res) != len(records) or not all(type(e) is cls for e in res):
            raise Violation("records", f"{name} returned {res!r}", records)
        out.append((name, res))
    return out


def check_records(records: list[Any]) -> None:
    """No exception but CorruptBatchError (naming table and row) escapes either decoder."""
    _decode_all(records)


def _int(v: Any) -> bool:
    return type(v) is int


def _str(v: Any) -> bool:
    return type(v) is str


def _opt_str(v: Any) -> bool:
    return v is None or type(v) is str


def _opt_dict(v: Any) -> bool:
    return v is None or type(v) is dict


#: what each op's `data` is when the store writes it (engine/store.py)
_EVENT_DATA: dict[str, Callable[[Any], bool]] = {
    "CREATE": lambda v: type(v) is dict,
    "UPDATE": lambda v: type(v) is dict,
    "DELETE": _opt_dict,
    "RESTORE": _opt_dict,
}


def event_type_problems(ev: Any) -> list[str]:
    """The fields of an accepted record whose type the store never writes."""
    bad = []
    if isinstance(ev, Event):
        checks: list[tuple[str, Callable[[Any], bool]]] = [
            ("seq", _int),
            ("ts", _int),
            ("op", lambda v: v in ENTITY_OPS),
            ("id", _str),
            ("actor", _opt_str),
            ("data", _EVENT_DATA.get(ev.op, lambda v: False) if isinstance(ev.op, str) else lambda v: False),
            ("version", _int),
        ]
    else:
        checks = [
            ("seq", _int),
            ("ts", _int),
            ("op", lambda v: v in REL_OPS),
            ("from_id", _str),
            ("predicate", _str),
            ("to", _str),
            ("reverse", _opt_str),
            ("actor", _opt_str),
            # any stored value: links migrated from the legacy layout carry lists and scalars
            ("data", lambda v: True),
        ]
    for name, ok in checks:
        value = getattr(ev, name)
        if not ok(value):
            bad.append(f"{name}={value!r} ({type(value).__name__})")
    return bad


def check_record_types(records: list[Any]) -> None:
    """check_records, and every record a decoder accepts has the field types the store writes."""
    for name, events in _decode_all(records):
        for ev in events or ():
            bad = event_type_problems(ev)
            if bad:
                raise Violation("records_types", f"{name} accepted a record with {', '.join(bad)}", records)


# ------------------------------------------------------------------ 3. filters
def stored_form(doc: Any) -> dict[str, Any]:
    """`doc` as a stored state reads back (tuples as lists...), or {} for a document the
    store would refuse (NaN, a "$" key, an unsupported type): no state can hold those."""
    if not isinstance(doc, dict):
        doc = {"value": doc}
    try:
        codec.check_serialisable(doc)
        out = codec.loads(codec.dumps(doc))
    except ParqueDBError:
        return {}
    return out if isinstance(out, dict) else {}


def _filter_parts(value: Any) -> tuple[Any, Any, Any]:
    if isinstance(value, dict) and "filter" in value:
        return value["filter"], value.get("doc", {}), value.get("sort")
    return value, {}, None


def check_filter(value: Any) -> None:
    """value: {"filter": F, "doc": state, "sort": S} (or a bare filter)."""
    flt, doc, sort = _filter_parts(value)
    res = _guard("filters", value, "validate_filter", lambda: filters.validate_filter(flt), (ParqueDBError,))
    if isinstance(res, ParqueDBError):
        return
    doc = stored_form(doc)
    out = _guard("filters", value, "matches", lambda: filters.matches(doc, res), (ParqueDBError,))
    if not isinstance(out, (bool, ParqueDBError)):
        raise Violation("filters", f"matches returned {out!r}", value)
    if isinstance(out, bool):  # the compiled form find uses must agree with the interpreter
        compiled = _guard(
            "filters", value, "compile_filter", lambda: filters.compile_filter(res)(doc), (ParqueDBError,)
        )
        if compiled is not out:
            raise Violation("filters", f"compile_filter gave {compiled!r}, matches gave {out!r}", value)
    for plain in (False, True):  # the archive's DuckDB translation of the same filter
        sql = _guard(
            "filters", value, "pushdown.to_sql", lambda p=plain: pushdown.to_sql(res, plain=p), (ParqueDBError,)
        )
        if not isinstance(sql, (str, ParqueDBError)):
            raise Violation("filters", f"pushdown.to_sql returned {sql!r}", value)
    keys = _guard("filters", value, "validate_sort", lambda: filters.validate_sort(sort), (ParqueDBError,))
    if isinstance(keys, list):
        docs = [doc, {}, {"value": None}]
        _guard("filters", value, "sort_docs", lambda: filters.sort_docs(docs, keys), (ParqueDBError,))


# ------------------------------------------------------------------ 4. update operators
def _update_parts(value: Any) -> tuple[Any, Any]:
    if isinstance(value, dict) and "update" in value:
        state = value.get("state", {})
        return value["update"], state if isinstance(state, dict) else {"value": state}
    return value, {}


def check_update(value: Any) -> None:
    """value: {"update": U, "state": S} (or a bare update document)."""
    update, state = _update_parts(value)
    state = stored_form(state)
    res = _guard("operators", value, "validate_update", lambda: operators.validate_update(update), (ParqueDBError,))
    if isinstance(res, ParqueDBError):
        return
    before = copy.deepcopy(state)
    new = _guard("operators", value, "apply_update", lambda: operators.apply_update(state, res, NOW), (ParqueDBError,))
    if state != before and repr(state) != repr(before):  # repr: NaN is not equal to itself
        raise Violation("operators", "apply_update changed the state it was given", value)
    if isinstance(new, ParqueDBError):
        return
    if not isinstance(new, dict):
        raise Violation("operators", f"apply_update returned {type(new).__name__}", value)
    # what the store does next: encode the new state (refusals are typed)
    _guard("operators", value, "codec.dumps(new state)", lambda: codec.dumps(new), (ParqueDBError,))


# ------------------------------------------------------------------ 5. end to end
class Api:
    """One in-memory store for a run of `check_api` calls (close it at the end)."""

    def __init__(self) -> None:
        import parquedb_orm as pq

        self.db = pq.ParqueDB("sqlite://")

    def close(self) -> None:
        self.db.close()


def check_api(api: Api, value: Any, kind: str) -> None:
    """kind "filters": create the doc, then find with the filter (and sort); kind
    "operators": create the state, then update it. Only parquedb_orm errors may escape."""
    db = api.db
    if kind == "filters":
        flt, doc, sort = _filter_parts(value)
        doc = doc if isinstance(doc, dict) else {"value": doc}
        _guard("api", value, "create", lambda: db.create("fuzz", doc), (ParqueDBError,))
        _guard("api", value, "find", lambda: db.find("fuzz", flt, sort=sort), (ParqueDBError,))
        return
    update, state = _update_parts(value)
    made = _guard("api", value, "create", lambda: db.create("fuzz", state), (ParqueDBError,))
    if isinstance(made, ParqueDBError):
        made = db.create("fuzz", {})
    eid = made["$id"].split("/", 1)[1]
    _guard("api", value, "update", lambda: db.update("fuzz", eid, update), (ParqueDBError,))
    _guard("api", value, "get", lambda: db.get("fuzz", eid), (ParqueDBError,))


#: target name -> check of one input (the api target takes its store: see check_api)
CHECKS: dict[str, Callable[[Any], None]] = {
    "codec": check_codec,
    "records": check_record_types,
    "filters": check_filter,
    "operators": check_update,
}
