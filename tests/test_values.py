"""Python/SQLAlchemy value types round-trip exactly (value and type) through every path:
live create/get, a cold read from the WAL, the archive after a flush (snapshots and
Parquet) read by a fresh store, updates ($set, $inc on Decimal), history, create_many
(the bulk Parquet path) and the DuckDB views. Plus what is refused, the filters, the sort
and the pushdown (which must never drop a match)."""

from __future__ import annotations

import enum
import itertools
import json
import sys
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from backends import backend_fixtures, url_of
from sqlalchemy import Engine

import parquedb_orm as pq
from parquedb_orm.archive.parquet import load_json
from parquedb_orm.core import codec
from parquedb_orm.core.filters import matches, sort_docs
from parquedb_orm.core.pushdown import to_sql

BACKENDS = ["sqlite-memory", "sqlite-file", "postgresql", "mysql"]
META = frozenset(
    {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}
)
NS = "things"


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


class Prio(enum.IntEnum):
    LOW = 1
    URGENT = 9


class Shade(enum.StrEnum):
    DARK = "dark"


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


codec.register_type(Money, "test.money", lambda m: [m.amount, m.currency], lambda v: Money(Decimal(v[0]), str(v[1])))

PARIS_SUMMER = timezone(timedelta(hours=2))
UID = uuid.UUID("12345678-1234-5678-1234-567812345678")

#: what is passed in -> what must come back (bytearray becomes bytes, tuples lists)
CASES: dict[str, tuple[Any, Any]] = {
    "aware": (datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=PARIS_SUMMER),) * 2,
    "aware_utc": (datetime(2026, 3, 4, 3, 6, 7, tzinfo=UTC),) * 2,
    "naive": (datetime(2026, 3, 4, 5, 6, 7, 1),) * 2,
    "price": (Decimal("1.10"),) * 2,
    "precise": (Decimal("-12345678901234567890123456789012345678.000000000000000000001"),) * 2,
    "exp": (Decimal("1E+3"),) * 2,
    "uid": (UID,) * 2,
    "day": (date(2024, 2, 29),) * 2,
    "clock": (time(23, 59, 58, 999999),) * 2,
    "clock_tz": (time(8, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),) * 2,
    "span": (timedelta(days=-3, seconds=5, microseconds=7),) * 2,
    "color": (Color.RED,) * 2,
    "level": (Level.HIGH,) * 2,
    "prio": (Prio.URGENT,) * 2,
    "shade": (Shade.DARK,) * 2,
    "blob": (b"\x00\x01\xfe\xff",) * 2,
    "empty_blob": (b"",) * 2,
    "buffer": (bytearray(b"ba"), b"ba"),
    "view": (memoryview(b"mv"), b"mv"),
    "money": (Money(Decimal("9.90"), "EUR"),) * 2,
    "plain": ({"n": 1, "f": 1.5, "s": "x", "b": True, "z": None},) * 2,
    "nested": (
        {"l": [Decimal("0.1"), (date(2020, 1, 1), {"u": UID}), Prio.LOW], "m": {"when": datetime(2020, 1, 1)}},
        {"l": [Decimal("0.1"), [date(2020, 1, 1), {"u": UID}], Prio.LOW], "m": {"when": datetime(2020, 1, 1)}},
    ),
    "list_of_tags": (
        [Color.BLUE, Level.LOW, b"x", timedelta(0), Money(Decimal("0"), "USD")],
        [Color.BLUE, Level.LOW, b"x", timedelta(0), Money(Decimal("0"), "USD")],
    ),
}


def data_in() -> dict[str, Any]:
    return {k: v[0] for k, v in CASES.items()}


def data_out() -> dict[str, Any]:
    return {k: v[1] for k, v in CASES.items()}


def body(state: dict[str, Any] | None) -> dict[str, Any]:
    assert state is not None
    return {k: v for k, v in state.items() if k not in META}


def sqid(state: dict[str, Any]) -> str:
    return str(state["$id"]).split("/")[1]


def assert_exact(got: Any, want: Any, *, stored: bool, path: str = "") -> None:
    """Same value and same type, recursively. `stored`: the value was read back from
    storage, so an aware datetime must come back in UTC."""
    where = path or "<root>"
    assert type(got) is type(want), f"{where}: {type(got).__name__} {got!r} != {type(want).__name__} {want!r}"
    if isinstance(want, dict):
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            assert_exact(got[k], want[k], stored=stored, path=f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_exact(g, w, stored=stored, path=f"{path}[{i}]")
    elif isinstance(want, Decimal):
        assert got.as_tuple() == want.as_tuple(), f"{where}: {got!r} != {want!r}"  # digits and exponent
    elif isinstance(want, datetime):
        assert got == want, f"{where}: {got!r} != {want!r}"
        if want.utcoffset() is None:
            assert got.tzinfo is None, f"{where}: naive came back aware: {got!r}"
        else:
            assert got.utcoffset() is not None, f"{where}: aware came back naive: {got!r}"
            if stored:
                assert got.utcoffset() == timedelta(0), f"{where}: not UTC: {got!r}"
    elif isinstance(want, time):
        assert got == want and got.utcoffset() == want.utcoffset(), f"{where}: {got!r} != {want!r}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# ---------------------------------------------------------------------------- backends
kind, engine = backend_fixtures(BACKENDS)


def open_db(engine: Engine, tmp_path: Path) -> pq.ParqueDB:
    return pq.ParqueDB(engine, archive=str(tmp_path / "archive"), policy=pq.FlushPolicy(mode="manual"))


def fresh_db(kind: str, engine: Engine, tmp_path: Path) -> pq.ParqueDB:
    """As another process would open it: its own engine (the in-memory database has none
    other than its one Engine) and no cache."""
    if kind == "sqlite-memory":
        return open_db(engine, tmp_path)
    return pq.ParqueDB(url_of(kind, tmp_path), archive=str(tmp_path / "archive"), policy=pq.FlushPolicy(mode="manual"))


def duck_rows(db: pq.ParqueDB, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = db.duckdb()
    try:
        return list(con.execute(sql, list(params)).fetchall())
    finally:
        con.close()


def update_doc() -> dict[str, Any]:
    return {
        "$set": {"again": data_in(), "price": Decimal("2.50"), "naive": datetime(2000, 1, 1)},
        "$inc": {"precise": Decimal("0.000000000000000000001"), "counter": Decimal("1.5"), "exp": 7},
        "$mul": {"factor": Decimal("3")},
        "$max": {"day": date(2030, 1, 1)},
    }


def updated_out() -> dict[str, Any]:
    want = data_out()
    want.update(
        {
            "price": Decimal("2.50"),
            "naive": datetime(2000, 1, 1),
            "precise": Decimal("-12345678901234567890123456789012345678.000000000000000000000"),
            "exp": Decimal("1007"),
            "day": date(2030, 1, 1),
            "again": data_out(),
            "counter": Decimal("1.5"),
            "factor": Decimal("0"),
        }
    )
    return want


def update_doc_out() -> dict[str, Any]:
    """The update document as stored in the event (bytearray -> bytes...)."""
    doc = update_doc()
    doc["$set"]["again"] = data_out()
    return doc


def test_round_trip_every_path(kind: str, engine: Engine, tmp_path: Path) -> None:
    db = open_db(engine, tmp_path)
    try:
        made = db.create(NS, data_in())
        sid = sqid(made)
        assert_exact(body(made), data_out(), stored=False)
        assert_exact(body(db.get(NS, sid)), data_out(), stored=False)
        # the WAL tail as the analytics views see it (not flushed yet)
        (state_text, types) = duck_rows(db, "SELECT state, types FROM entities WHERE id = ?", sid)[0]
        assert_exact(body(load_json(state_text, types, "state")), data_out(), stored=True)
        (data_text, types) = duck_rows(db, "SELECT data, types FROM events WHERE id = ? AND op = 'CREATE'", sid)[0]
        assert_exact(load_json(data_text, types, "data"), data_out(), stored=True)
    finally:
        db.close()

    # cold: a new store on the same database reads the WAL
    db = open_db(engine, tmp_path)
    try:
        assert_exact(body(db.get(NS, sid)), data_out(), stored=True)
        updated = db.update(NS, sid, update_doc())
        assert_exact(body(updated), updated_out(), stored=False)
        history = db.history(f"{NS}/{sid}")
        assert [h["op"] for h in history] == ["CREATE", "UPDATE"]
        assert_exact(history[0]["data"], data_out(), stored=True)
        assert_exact(history[1]["data"], update_doc_out(), stored=False)
        assert db.get(NS, sid, as_of=1) is not None
        assert_exact(body(db.get(NS, sid, as_of=1)), data_out(), stored=True)
        result = db.flush()
        assert result is not None
    finally:
        db.close()

    # after the flush: snapshots + Parquet, read by a fresh store (own engine, no cache)
    db = fresh_db(kind, engine, tmp_path)
    try:
        assert_exact(body(db.get(NS, sid)), updated_out(), stored=True)
        assert_exact(body(db.get(NS, sid, as_of=1)), data_out(), stored=True)
        history = db.history(f"{NS}/{sid}")
        assert_exact(history[0]["data"], data_out(), stored=True)
        assert_exact(history[1]["data"], update_doc_out(), stored=True)
        found = db.find(NS, {"price": {"$gt": Decimal("2")}, "uid": UID, "blob": b"\x00\x01\xfe\xff"})
        assert [d["$id"] for d in found] == [f"{NS}/{sid}"]
        assert_exact(body(found[0]), updated_out(), stored=True)
        # archived: the Parquet files behind the views
        (state_text, types) = duck_rows(db, "SELECT state, types FROM entities WHERE id = ?", sid)[0]
        assert_exact(body(load_json(state_text, types, "state")), updated_out(), stored=True)
        datas = duck_rows(db, "SELECT op, data, after, types FROM events WHERE id = ? ORDER BY seq", sid)
        assert [row[0] for row in datas] == ["CREATE", "UPDATE"]
        assert_exact(load_json(datas[0][1], datas[0][3], "data"), data_out(), stored=True)
        assert_exact(load_json(datas[1][1], datas[1][3], "data"), update_doc_out(), stored=True)
        assert_exact(body(load_json(datas[1][2], datas[1][3], "after")), updated_out(), stored=True)
        # and once more, on top of the archive, through the WAL
        again = db.update(NS, sid, {"$inc": {"price": Decimal("-0.01")}, "$set": {"more": [Money(Decimal("1"), "X")]}})
        assert_exact(again["price"], Decimal("2.49"), stored=False)
    finally:
        db.close()
    db = fresh_db(kind, engine, tmp_path)
    try:
        got = db.get(NS, sid)
        assert got is not None
        assert_exact(got["price"], Decimal("2.49"), stored=True)
        assert_exact(got["more"], [Money(Decimal("1"), "X")], stored=True)
    finally:
        db.close()


def test_create_many_bulk_path(kind: str, engine: Engine, tmp_path: Path) -> None:
    items = [{**data_in(), "i": i, "price": Decimal(f"{i}.10")} for i in range(6)]

    def want(i: int) -> dict[str, Any]:
        return {**data_out(), "i": i, "price": Decimal(f"{i}.10")}

    db = open_db(engine, tmp_path)
    try:
        made = db.create_many(NS, items)
        assert len(made) == 6
        for i, m in enumerate(made):
            assert_exact(body(m), want(i), stored=False)
            assert_exact(body(db.get(NS, sqid(m))), want(i), stored=False)
    finally:
        db.close()
    db = fresh_db(kind, engine, tmp_path)
    try:
        for i, m in enumerate(made):
            assert_exact(body(db.get(NS, sqid(m))), want(i), stored=True)
            history = db.history(m["$id"])
            assert [h["op"] for h in history] == ["CREATE"]
            assert_exact(history[0]["data"], want(i), stored=True)
        rows = duck_rows(db, "SELECT id, state, types FROM entities ORDER BY id")
        by_id = {eid: load_json(text, types, "state") for eid, text, types in rows}
        ev = {eid: load_json(text, t, "data") for eid, text, t in duck_rows(db, "SELECT id, data, types FROM events")}
        for i, m in enumerate(made):
            assert_exact(body(by_id[sqid(m)]), want(i), stored=True)
            assert_exact(body(ev[sqid(m)]), want(i), stored=True)
        found = db.find(NS, {"price": {"$gte": Decimal("3.1")}}, sort={"price": -1})
        assert [d["i"] for d in found] == [5, 4, 3]
    finally:
        db.close()


# ---------------------------------------------------------------------------- codec
def test_codec_round_trip_each_type() -> None:
    for name, (given, want) in CASES.items():
        text = codec.dumps({name: given})
        assert_exact(codec.loads(text), {name: want}, stored=True, path=name)
        codec.check_serialisable(given, name)


def test_stored_forms() -> None:
    assert codec.dumps(datetime(2026, 1, 1, 2, tzinfo=PARIS_SUMMER)) == '{"$date":"2026-01-01T00:00:00+00:00"}'
    assert codec.dumps(datetime(2026, 1, 1, 2)) == '{"$date":"2026-01-01T02:00:00"}'
    assert codec.dumps(Decimal("1.10")) == '{"$decimal":"1.10"}'
    assert codec.dumps(UID) == '{"$uuid":"12345678-1234-5678-1234-567812345678"}'
    assert codec.dumps(date(2024, 2, 29)) == '{"$day":"2024-02-29"}'
    assert codec.dumps(time(1, 2, tzinfo=timezone(timedelta(hours=1)))) == '{"$time":"01:02:00+01:00"}'
    assert codec.dumps(timedelta(seconds=-1)) == '{"$interval":-1000000}'
    assert codec.dumps(b"\xff") == '{"$bytes":"/w=="}'
    assert codec.dumps(Prio.URGENT) == '{"$enum":["test_values:Prio",9]}'
    assert codec.dumps(Shade.DARK) == '{"$enum":["test_values:Shade","dark"]}'
    assert codec.dumps(Money(Decimal("1"), "EUR")) == '{"$ext":["test.money",[{"$decimal":"1"},"EUR"]]}'


def test_existing_date_data_still_decodes() -> None:
    got = codec.loads('{"createdAt":{"$date":"2025-06-01T12:00:00.123456+00:00"},"$type":"Post"}')
    assert got["createdAt"] == datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_plain_json_and_non_tags_are_left_alone() -> None:
    text = '{"$type":"X","$id":"a/b","u":{"$set":{"a":1}},"s":"{\\"$date\\":\\"x\\"}","two":{"$date":"x","k":1}}'
    assert codec.loads(text) == {
        "$type": "X",
        "$id": "a/b",
        "u": {"$set": {"a": 1}},
        "s": '{"$date":"x"}',
        "two": {"$date": "x", "k": 1},
    }


def test_int_and_str_enums_stay_members_not_plain_values() -> None:
    got = codec.loads(codec.dumps([Prio.LOW, Shade.DARK, {"p": Prio.URGENT}]))
    assert type(got[0]) is Prio and type(got[1]) is Shade and type(got[2]["p"]) is Prio


def test_clone_shares_immutable_values_and_copies_buffers() -> None:
    d, dt, u = Decimal("1.10"), datetime(2020, 1, 1), uuid.uuid4()
    buf = bytearray(b"x")
    out = codec.clone({"d": d, "dt": dt, "u": u, "e": Color.RED, "buf": buf, "l": [d, buf]})
    assert out["d"] is d and out["dt"] is dt and out["u"] is u and out["e"] is Color.RED
    assert type(out["buf"]) is bytes and out["l"][1] == b"x" and type(out["l"][1]) is bytes
    m = Money(Decimal("1"), "EUR")
    assert codec.clone({"m": m})["m"] == m


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (object(), ["'bad'", "object", "Decimal"]),
        ({1, 2}, ["'bad'", "set"]),
        (Decimal("NaN"), ["'bad'", "NaN"]),
        (Decimal("-Infinity"), ["'bad'", "infinity"]),
        (float("nan"), ["'bad'", "NaN"]),
        ({"inner": [1, object()]}, ["'bad.inner[1]'", "object"]),
        ({"$date": "2020-01-01T00:00:00+00:00"}, ["'bad'", "reserved"]),
        ({"k": {"$uuid": str(UID)}}, ["'bad.k'", "reserved"]),
        (complex(1, 2), ["'bad'", "complex"]),
    ],
)
def test_refused_values_name_the_field(value: Any, words: list[str], tmp_path: Path) -> None:
    with pytest.raises(pq.SerializationError) as info:
        codec.check_serialisable(value, "bad")
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    if not isinstance(value, dict):  # dumps itself allows "$" keys (states, operator documents)
        with pytest.raises(pq.SerializationError) as info:
            codec.dumps({"bad": value})
        assert "'bad'" in str(info.value), str(info.value)
    with pq.ParqueDB("sqlite://", archive=str(tmp_path / "a"), policy=pq.FlushPolicy(mode="manual")) as db:
        e = db.create(NS, {"ok": 1})
        with pytest.raises(pq.SerializationError) as info:
            db.update(NS, sqid(e), {"$set": {"bad": value}})
        assert "'bad" in str(info.value), str(info.value)
        with pytest.raises(pq.SerializationError) as info:
            db.create(NS, {"outer": {"bad": value}})
        assert "'outer.bad" in str(info.value), str(info.value)
        with pytest.raises(pq.SerializationError) as info:  # the bulk path (encoder only)
            db.create_many(NS, [{"n": i} for i in range(5)] + [{"n": 5, "outer": {"bad": value}}])
        assert db.find(NS, {}) == [db.get(NS, sqid(e))]


def test_unresolvable_enum_class_is_an_error() -> None:
    def make() -> type[enum.Enum]:
        class Local(enum.Enum):  # "<locals>" in its qualname: not reachable from its module
            A = 1

        return Local

    text = codec.dumps(make().A)  # encoding registers the class, so it decodes here...
    key = codec.loads(text).__class__
    assert key.__name__ == "Local"
    codec._ENUMS.pop(f"{key.__module__}:{key.__qualname__}")  # ...until the registry forgets it
    with pytest.raises(pq.SerializationError) as info:
        codec.loads(text)
    assert "Local" in str(info.value) and "register_enum" in str(info.value) and "import" in str(info.value)
    codec.register_enum(key)
    assert codec.loads(text) is key.A
    with pytest.raises(pq.SerializationError, match="no_such_module_xyz"):
        codec.loads('{"$enum":["no_such_module_xyz:Thing",1]}')
    assert "no_such_module_xyz" not in sys.modules  # never imported because data named it
    # inside a stored batch it is the same error, not "corrupt"
    with pytest.raises(pq.SerializationError):
        codec.decode_batch(codec.encode_json('[{"$enum":["no_such_module_xyz:Thing",1]}]'), table="t", row="r")


def test_enum_resolved_from_an_imported_module() -> None:
    module = types.ModuleType("pq_values_fake_module")
    exec("import enum\nclass Kind(enum.Enum):\n    A = 'a'\n", module.__dict__)
    text = '{"$enum":["pq_values_fake_module:Kind","a"]}'
    with pytest.raises(pq.SerializationError):
        codec.loads(text)  # module not imported: not resolved
    sys.modules[module.__name__] = module
    try:
        assert codec.loads(text) is module.Kind.A
    finally:
        del sys.modules[module.__name__]
        codec._ENUMS.pop("pq_values_fake_module:Kind", None)


def test_enum_value_not_a_member() -> None:
    with pytest.raises(pq.SerializationError, match="not a member"):
        codec.loads('{"$enum":["test_values:Color","green"]}')


def test_register_type_rules() -> None:
    class Other:
        pass

    with pytest.raises(pq.ConfigurationError):
        codec.register_type(Other, "test.money", lambda v: 1, lambda v: Other())
    with pytest.raises(pq.ConfigurationError):
        codec.register_type(Other, "bad name!", lambda v: 1, lambda v: Other())
    with pytest.raises(pq.ConfigurationError):
        codec.register_type(Decimal, "mydecimal", str, Decimal)
    codec.register_type(Money, "test.money", lambda m: [m.amount, m.currency], lambda v: Money(Decimal(v[0]), v[1]))
    with pytest.raises(pq.SerializationError, match=r"nobody\.knows"):
        codec.loads('{"$ext":["nobody.knows",1]}')


def test_register_type_encode_must_return_storable_values() -> None:
    class Bad:
        pass

    class Sneaky:
        pass

    codec.register_type(Bad, "test.bad", lambda v: object(), lambda v: Bad())
    codec.register_type(Sneaky, "test.sneaky", lambda v: {"$date": "x"}, lambda v: Sneaky())
    with pytest.raises(pq.SerializationError, match="object"):
        codec.check_serialisable(Bad(), "f")
    with pytest.raises(pq.SerializationError, match="reserved"):
        codec.dumps({"f": Sneaky()})


def test_subclass_of_registered_type_uses_it() -> None:
    class Euro(Money):
        pass

    got = codec.loads(codec.dumps(Euro(Decimal("2"), "EUR")))
    assert type(got) is Money and got == Money(Decimal("2"), "EUR")


# ---------------------------------------------------------------------------- operators
@pytest.fixture
def mem() -> Iterator[pq.ParqueDB]:
    db = pq.ParqueDB("sqlite://")
    yield db
    db.close()


def test_decimal_arithmetic(mem: pq.ParqueDB) -> None:
    e = mem.create(NS, {"d": Decimal("1.10"), "i": 2, "f": 1.5, "big": Decimal("9" * 40 + ".99")})
    out = mem.update(NS, sqid(e), {"$inc": {"d": 1, "i": Decimal("0.5"), "big": Decimal("0.01")}})
    assert_exact(out["d"], Decimal("2.10"), stored=False)
    assert_exact(out["i"], Decimal("2.5"), stored=False)
    assert_exact(out["big"], Decimal("1" + "0" * 40 + ".00"), stored=False)  # no 28-digit rounding
    out = mem.update(NS, sqid(e), {"$mul": {"d": Decimal("2")}, "$min": {"i": Decimal("2.4")}, "$max": {"f": 1}})
    assert_exact(out["d"], Decimal("4.20"), stored=False)
    assert_exact(out["i"], Decimal("2.4"), stored=False)
    for doc in (
        {"$inc": {"d": 0.1}},
        {"$inc": {"f": Decimal("1")}},
        {"$mul": {"d": 1.5}},
        {"$min": {"d": 0.5}},
        {"$max": {"f": Decimal("9")}},
    ):
        with pytest.raises(pq.ValidationError, match="Decimal and float"):
            mem.update(NS, sqid(e), doc)
    with pytest.raises(pq.ValidationError):
        mem.update(NS, sqid(e), {"$inc": {"d": Decimal("1E+100000")}})  # would need rounding
    assert mem.get(NS, sqid(e))["version"] == 3  # type: ignore[index]


def test_min_max_incomparable_is_a_validation_error(mem: pq.ParqueDB) -> None:
    e = mem.create(NS, {"naive": datetime(2020, 1, 1), "day": date(2020, 1, 1), "c": Color.RED})
    for doc in (
        {"$min": {"naive": datetime(2019, 1, 1, tzinfo=UTC)}},
        {"$max": {"day": datetime(2021, 1, 1)}},
        {"$max": {"c": Color.BLUE}},
    ):
        with pytest.raises(pq.ValidationError, match="cannot compare"):
            mem.update(NS, sqid(e), doc)
    # types BSON knows order as MongoDB orders them: a string sorts before a date
    assert mem.update(NS, sqid(e), {"$min": {"naive": "2019"}})["naive"] == "2019"
    out = mem.update(NS, sqid(e), {"$currentDate": {"now": True}, "$max": {"naive": datetime(2021, 1, 1)}})
    assert out["now"].utcoffset() == timedelta(0) and out["naive"] == datetime(2021, 1, 1)


def test_add_to_set_and_pull_with_new_types(mem: pq.ParqueDB) -> None:
    e = mem.create(NS, {"l": [Decimal("1.0"), UID]})
    out = mem.update(NS, sqid(e), {"$addToSet": {"l": {"$each": [Decimal("1.00"), UID, b"x", Color.RED]}}})
    assert out["l"] == [Decimal("1.0"), UID, b"x", Color.RED]
    out = mem.update(NS, sqid(e), {"$pull": {"l": Color.RED}})
    assert out["l"] == [Decimal("1.0"), UID, b"x"]


# ---------------------------------------------------------------------------- filters and sort
DOCS: list[dict[str, Any]] = [
    {"v": Decimal("10.5")},
    {"v": 10},
    {"v": 10.0},
    {"v": 2**53 + 1},
    {"v": Decimal("1E-400")},
    {"v": Decimal("-1E+400")},
    {"v": True},
    {"v": "10"},
    {"v": "b"},
    {"v": datetime(2024, 1, 1, tzinfo=UTC)},
    {"v": datetime(2024, 1, 1, 1, 30, 0, 1, tzinfo=UTC)},
    {"v": datetime(2024, 1, 1)},
    {"v": datetime(2024, 1, 1, 0, 0, 0, 1)},
    {"v": date(2024, 1, 1)},
    {"v": date(2023, 12, 31)},
    {"v": time(1, 2)},
    {"v": timedelta(1)},
    {"v": UID},
    {"v": uuid.UUID(int=1)},
    {"v": b"ab"},
    {"v": b""},
    {"v": Color.RED},
    {"v": Level.HIGH},
    {"v": Prio.URGENT},
    {"v": Shade.DARK},
    {"v": Money(Decimal("1"), "EUR")},
    {"v": [Decimal("10"), UID, b"ab", Prio.URGENT]},
    {"v": {"k": 1}},
    {"v": None},
    {},
]
TARGETS: list[Any] = [
    Decimal("10"),
    Decimal("10.5"),
    10,
    10.5,
    2**53,
    Decimal("0"),
    0,
    9,
    1,
    "10",
    "b",
    "dark",
    datetime(2024, 1, 1, tzinfo=UTC),
    datetime(2024, 1, 1, 2, 30, tzinfo=timezone(timedelta(hours=1))),
    datetime(2024, 1, 1),
    date(2024, 1, 1),
    UID,
    uuid.UUID(int=0),
    b"ab",
    bytearray(b"ab"),
    Color.RED,
    Level.HIGH,
    Prio.URGENT,
    Shade.DARK,
    Money(Decimal("1"), "EUR"),
    time(1, 2),
    timedelta(1),
    None,
    10**400,
]


def test_filters_on_new_types() -> None:
    docs = [{"v": v} for v in (Decimal("9.99"), Decimal("10.01"), 11, 9.5)]
    assert [d["v"] for d in docs if matches(d, {"v": {"$gt": Decimal("10")}})] == [Decimal("10.01"), 11]
    assert matches({"v": date(2024, 1, 2)}, {"v": {"$gt": date(2024, 1, 1)}})
    assert not matches({"v": date(2024, 1, 2)}, {"v": {"$gt": datetime(2024, 1, 1)}})  # incomparable: no match
    assert not matches({"v": datetime(2024, 1, 2)}, {"v": {"$gt": datetime(2024, 1, 1, tzinfo=UTC)}})
    assert matches({"v": UID}, {"v": UID}) and matches({"v": UID}, {"v": {"$in": [UID]}})
    assert matches({"v": b"ab"}, {"v": b"ab"}) and not matches({"v": b"ab"}, {"v": "ab"})
    assert matches({"v": Color.RED}, {"v": Color.RED}) and not matches({"v": Color.RED}, {"v": Color.BLUE})
    assert not matches({"v": Color.RED}, {"v": {"$gt": Color.BLUE}})


def test_sort_total_order_over_mixed_types() -> None:
    docs = [dict(d) for d in DOCS] * 2
    for direction in (1, -1):
        out = sort_docs(list(docs), [("v", direction)])
        assert len(out) == len(docs)
    nums = sort_docs([{"v": v} for v in (Decimal("2.5"), 1, 3.5, Decimal("-1"), 2)], [("v", 1)])
    assert [d["v"] for d in nums] == [Decimal("-1"), 1, 2, Decimal("2.5"), 3.5]
    dts = [datetime(2024, 1, 1, 12), datetime(2024, 1, 1, 11, tzinfo=UTC), datetime(2024, 1, 1, 13, tzinfo=UTC)]
    assert [d["v"] for d in sort_docs([{"v": v} for v in dts], [("v", 1)])] == [dts[1], dts[0], dts[2]]


def _filters() -> Iterator[dict[str, Any]]:
    for target in TARGETS:
        yield {"v": target}
        for op in ("$eq", "$gt", "$gte", "$lt", "$lte"):
            yield {"v": {op: target}}
    for a, b in itertools.combinations(TARGETS[:12], 2):
        yield {"v": {"$in": [a, b]}}
    yield {"v": {"$gte": Decimal("10"), "$lt": 11}}
    yield {"$or": [{"v": UID}, {"v": date(2024, 1, 1)}]}


@pytest.mark.parametrize("plain", [False, True], ids=["tagged", "plain"])
def test_pushdown_never_drops_a_match(plain: bool) -> None:
    """Every filter x every stored value: what DuckDB keeps must include what Python matches,
    on files of the tagged format (written before the plain one) and of the plain one
    (plain JSON + the `types` sidecar)."""
    con = duckdb.connect()
    con.execute("CREATE TABLE ents (i INTEGER, type VARCHAR, state JSON, types JSON)")
    rows = []
    for i, d in enumerate(DOCS):
        doc = {"$type": "Thing", **d}
        if plain:
            text, paths = codec.plain_dumps(doc)
            rows.append([i, text, None if paths is None else json.dumps({"state": paths})])
        else:
            rows.append([i, codec.dumps(doc), None])
    con.executemany("INSERT INTO ents VALUES (?, 'Thing', ?, ?)", rows)
    checked = 0
    for flt in _filters():
        sql = to_sql(flt, plain=plain)
        kept = {i for (i,) in con.execute(f"SELECT i FROM ents WHERE {sql}").fetchall()}
        want = {i for i, d in enumerate(DOCS) if matches(d, flt)}
        assert want <= kept, (flt, sql, [DOCS[i] for i in want - kept])
        checked += 1
    assert checked > 200
    # and it does filter: a Decimal bound keeps numbers near or past it (strict bounds are
    # widened by an ulp), opaque values (enums, custom types) and nothing else
    bound = to_sql({"v": {"$gt": Decimal("10")}}, plain=plain)
    kept = {i for (i,) in con.execute(f"SELECT i FROM ents WHERE {bound}").fetchall()}
    # (an array is kept: a range matches any of its elements, e.g. the list of row 26)
    assert {0, 1, 2, 3} <= kept and not kept & {4, 5, 8, 9, 13, 17, 19}
    con.close()


def test_find_with_pushdown_equals_memory_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_module = sys.modules["parquedb_orm.engine.store"]
    with pq.ParqueDB(
        f"sqlite:///{tmp_path / 'p.db'}", archive=str(tmp_path / "a"), policy=pq.FlushPolicy(mode="manual")
    ) as db:
        db.create_many(NS, [dict(d) for d in DOCS])
        db.flush()
        db.create(NS, {"v": Decimal("10.25")})  # a WAL tail on top
        for flt in [{"v": t} for t in TARGETS] + [{"v": {"$gt": t}} for t in TARGETS]:
            expected = db.find(NS, flt)
            monkeypatch.setattr(store_module, "PUSHDOWN_ABOVE", 0)
            got = db.find(NS, flt)
            monkeypatch.undo()
            assert sorted(d["$id"] for d in got) == sorted(d["$id"] for d in expected), flt
            assert got == expected or sorted(got, key=lambda d: d["$id"]) == sorted(expected, key=lambda d: d["$id"])


def test_native_fast_path_encodes_as_the_converting_path() -> None:
    """dumps sends JSON-native values straight to a reused C encoder; the text must be the
    very text the converting walk and json.JSONEncoder give (floats, big ints, unicode,
    nesting), and anything else must still go through the walk."""
    from hypothesis import given, settings
    from hypothesis import strategies as hs

    scalars = (
        hs.none()
        | hs.booleans()
        | hs.integers(min_value=-(2**70), max_value=2**70)
        | hs.floats(allow_nan=False, allow_infinity=False)
        | hs.text(max_size=8)
    )
    values = hs.recursive(
        scalars,
        lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=4), inner, max_size=4),
        max_leaves=20,
    )

    @settings(max_examples=300, deadline=None)
    @given(values)
    def same(value: Any) -> None:
        reference = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode(value)
        assert codec.dumps(value) == reference
        assert codec._json_native(value, 0)

    same()
    # not native: converted (tuples, datetimes) or refused (NaN, non-str keys, too deep)
    assert codec.dumps({"a": (1, 2)}) == '{"a":[1,2]}'
    assert codec.dumps([datetime(2020, 1, 1)]) == '[{"$date":"2020-01-01T00:00:00"}]'
    for bad in (float("nan"), {"a": [float("inf")]}, {1: "x"}):
        with pytest.raises(pq.errors.SerializationError):
            codec.dumps(bad)
    deep: Any = 1
    for _ in range(codec.MAX_VALUE_DEPTH + 20):
        deep = [deep]
    assert not codec._json_native(deep, 0)


def test_plain_fast_path_matches_the_typed_walk() -> None:
    """plain_dumps (the archive's JSON) takes a fast path for JSON-native values and for
    states whose only typed values are top-level UTC datetimes; its text and typed paths
    must be the walk's, for those shapes and for every other (which fall back to it)."""
    from hypothesis import given, settings
    from hypothesis import strategies as hs

    def walk(value: Any) -> tuple[str, Any]:
        paths: list[Any] = []
        text = codec._encode(lambda: codec._plain(value, [], paths))
        return text, paths or None

    utc = hs.datetimes(timezones=hs.just(UTC))
    odd = hs.datetimes() | hs.decimals(allow_nan=False, allow_infinity=False) | hs.dates() | hs.uuids()
    scalars = (
        hs.none()
        | hs.booleans()
        | hs.integers()
        | hs.floats(allow_nan=False, allow_infinity=False)
        | hs.text(max_size=6)
    )
    nested = hs.recursive(
        scalars | odd,
        lambda inner: hs.lists(inner, max_size=3) | hs.dictionaries(hs.text(max_size=3), inner, max_size=3),
        max_leaves=10,
    )
    states = hs.dictionaries(hs.text(max_size=5), scalars | utc | odd | nested, max_size=8)

    @settings(max_examples=300, deadline=None)
    @given(states | nested)
    def same(value: Any) -> None:
        assert codec.plain_dumps(value) == walk(value)

    same()
    state = {"$id": "p/1", "n": 1, "createdAt": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), "tags": ["a"]}
    text = '{"$id":"p/1","n":1,"createdAt":"2026-01-02T03:04:05.000006+00:00","tags":["a"]}'
    assert codec.plain_dumps(state) == (text, [[["createdAt"], "$date"]])
