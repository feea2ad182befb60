"""Bad input to the public API raises a typed error (parquedb_orm.errors) and writes
nothing: each class the reliability probe found (issue 15), through ParqueDB and through
the session extension's store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

import parquedb_orm as pq
from parquedb_orm import errors
from parquedb_orm.sql.models import EventsWal, RelsWal

Call = Callable[[Any, str], object]

DEEP: dict[str, Any] = {}
_x = DEEP
for _ in range(500):
    _x["a"] = {}
    _x = _x["a"]

CASES: dict[str, tuple[Call, type[pq.ParqueDBError]]] = {
    "create_many(ns, None)": (lambda s, e: s.create_many("t", None), pq.ValidationError),
    "create_many(ns, a dict)": (lambda s, e: s.create_many("t", {"a": 1}), pq.ValidationError),
    "create_many rewrites no int key": (lambda s, e: s.create_many("t", [{1: "t"}] * 6), pq.ValidationError),
    "int key": (lambda s, e: s.create("t", {1: "t"}), pq.ValidationError),
    "dotted key": (lambda s, e: s.create("t", {"a.b": 1}), pq.ValidationError),
    "dotted key in create_many": (lambda s, e: s.create_many("t", [{"a.b": 1}] * 6), pq.ValidationError),
    "sort by an int key": (lambda s, e: s.find("t", {}, sort={1: 1}), pq.ValidationError),
    "hard='false'": (lambda s, e: s.delete("t", e, hard="false"), pq.ValidationError),
    "hard=1": (lambda s, e: s.delete("t", e, hard=1), pq.ValidationError),
    "nested 500 deep": (lambda s, e: s.create("t", DEEP), pq.ValidationError),
    "update nested 500 deep": (lambda s, e: s.update("t", e, {"$set": {"d": DEEP}}), pq.ValidationError),
    "filter nested 500 deep": (lambda s, e: s.find("t", {"d": DEEP}), pq.ValidationError),
    "$ in an update path": (lambda s, e: s.update("t", e, {"$set": {"a.$date": 1}}), pq.ValidationError),
    "int key in a $push operand": (lambda s, e: s.update("t", e, {"$push": {"l": {1: 2}}}), pq.ValidationError),
    "operator document as a filter value": (
        lambda s, e: s.find("t", {"name": {"$ne": {"$where": "1"}}}),
        pq.ValidationError,
    ),
    "expected_version=True": (
        lambda s, e: s.update("t", e, {"$set": {"a": 1}}, expected_version=True),
        pq.ValidationError,
    ),
}


def _wal_rows(engine: Any) -> tuple[int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(EventsWal)).scalar_one(),
            conn.execute(select(func.count()).select_from(RelsWal)).scalar_one(),
        )


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_to_parquedb_is_a_typed_error_and_writes_nothing(case: str, tmp_path: Path) -> None:
    call, error = CASES[case]
    with pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "a") as db:
        eid = db.create("t", {"name": "x"})["$id"].split("/")[1]
        before, state = _wal_rows(db.engine), db.get("t", eid)
        with pytest.raises(error):
            call(db, eid)
        assert _wal_rows(db.engine) == before
        assert db.get("t", eid) == state
        assert db.find("t") == [state]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_through_a_session_is_a_typed_error(case: str, tmp_path: Path) -> None:
    call, error = CASES[case]
    engine = create_engine(f"sqlite:///{tmp_path / 's.db'}")
    Session = sessionmaker(engine)
    handle = pq.enable(Session, archive=tmp_path / "a")
    try:
        with Session() as s:
            eid = pq.store(s).create("t", {"name": "x"})["$id"].split("/")[1]
            s.commit()
        before = _wal_rows(engine)
        with Session() as s:
            with pytest.raises(error):
                call(pq.store(s), eid)
            s.commit()
        assert _wal_rows(engine) == before
    finally:
        handle.close()
        engine.dispose()


def _deep(levels: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    x = out
    for _ in range(levels - 1):
        x["a"] = {}
        x = x["a"]
    return out


def test_the_nesting_limit_is_100_levels_on_every_write_path(tmp_path: Path) -> None:
    """docs/limits.md: 100 levels stored and read back (also from the archive); deeper refused."""
    with pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "a") as db:
        ok = db.create("t", {"d": _deep(100)})
        sq = ok["$id"].split("/")[1]
        many = db.create_many("t", [{"d": _deep(100)}] * 6)
        db.flush()
        assert db.get("t", sq)["d"] == _deep(100) and db.get("t", many[0]["$id"].split("/")[1])["d"] == _deep(100)
        for call in (
            lambda: db.create("t", {"d": _deep(102)}),
            lambda: db.create_many("t", [{"d": _deep(120)}] * 6),
            lambda: db.update("t", sq, {"$set": {"e": _deep(102)}}),
        ):
            with pytest.raises(pq.SerializationError, match="nested more than 100 levels"):
                call()


class TestWalRecordTypes:
    """A record inside a batch whose checksum is right but whose fields have the wrong
    types is corruption too: CorruptBatchError naming the table and row, at decode."""

    GOOD_EVENT = [5, 1_700_000_000_000_000, "CREATE", "abc", None, {"a": 1}, 1]
    GOOD_REL = [5, 1_700_000_000_000_000, "LINK", "abc", "refs", "ns/def", None, None, None]

    def _event(self, rec: object) -> None:
        from parquedb_orm.core.events import Event

        Event.from_record(rec, table="events_wal", row="ns=t, first_seq=1")

    def _rel(self, rec: object) -> None:
        from parquedb_orm.core.events import RelEvent

        RelEvent.from_record(rec, table="rels_wal", row="ns=t, first_seq=1")

    def test_good_records_decode(self) -> None:
        from parquedb_orm.core.events import CREATE, LINK

        assert self.GOOD_EVENT[2] == CREATE and self.GOOD_REL[2] == LINK
        self._event(self.GOOD_EVENT)
        self._rel(self.GOOD_REL)

    @pytest.mark.parametrize(
        ("index", "value"),
        [(0, "5"), (0, True), (1, 1.5), (2, ["c"]), (2, "zz"), (3, 7), (3, ""), (4, 3), (5, "x"), (5, None), (6, "1")],
        ids=[
            "seq-str",
            "seq-bool",
            "ts-float",
            "op-list",
            "op-unknown",
            "id-int",
            "id-empty",
            "actor-int",
            "data-str",
            "create-data-null",
            "version-str",
        ],
    )
    def test_wrong_event_field_types(self, index: int, value: object) -> None:
        rec = list(self.GOOD_EVENT)
        rec[index] = value
        with pytest.raises(errors.CorruptBatchError) as info:
            self._event(rec)
        assert info.value.table == "events_wal" and info.value.row == "ns=t, first_seq=1"
        assert "events_wal" in str(info.value)

    @pytest.mark.parametrize(
        ("index", "value"),
        [(0, "5"), (2, {}), (3, 1), (4, None), (5, "no-slash"), (5, 3), (6, 1), (7, [])],
        ids=[
            "seq-str",
            "op-dict",
            "from-int",
            "predicate-null",
            "to-no-ns",
            "to-int",
            "reverse-int",
            "actor-list",
        ],
    )
    def test_wrong_rel_field_types(self, index: int, value: object) -> None:
        rec = list(self.GOOD_REL)
        rec[index] = value
        with pytest.raises(errors.CorruptBatchError) as info:
            self._rel(rec)
        assert info.value.table == "rels_wal"

    @pytest.mark.parametrize("rec", [None, {}, "x", [], list(range(9)), [1] * 20], ids=repr)
    def test_not_records(self, rec: object) -> None:
        with pytest.raises(errors.CorruptBatchError):
            self._event(rec)
        with pytest.raises(errors.CorruptBatchError):
            self._rel(rec)

    def test_a_store_reading_such_a_row_names_it(self, tmp_path: Path) -> None:
        """End to end: a WAL row rewritten with a valid checksum but a string seq."""
        from sqlalchemy import update

        from parquedb_orm.core import codec
        from parquedb_orm.sql import wal

        url = f"sqlite:///{tmp_path / 's.db'}"
        db = pq.ParqueDB(url)
        created = db.create("t", {"a": 1})
        eid = created["$id"].split("/", 1)[1]
        with db.engine.begin() as conn:
            first, blob = conn.execute(
                wal.EVENTS.select().with_only_columns(wal.EVENTS.c.first_seq, wal.EVENTS.c.events)
            ).one()
            records = codec.decode_batch(blob, table="events_wal", row="x")
            records[0][0] = str(records[0][0])
            conn.execute(
                update(wal.EVENTS).where(wal.EVENTS.c.first_seq == first).values(events=codec.encode_batch(records))
            )
        db.close()
        db = pq.ParqueDB(url)
        with pytest.raises(errors.CorruptBatchError) as info:
            db.get("t", eid)
        assert info.value.table == "events_wal" and f"first_seq={first}" in str(info.value)
        db.close()


class TestUnopenableDatabase:
    """A database that cannot be opened (a missing folder, a server down, a wrong user, a
    dialect that is not installed) is ConfigurationError naming it, not the driver's error."""

    @pytest.mark.parametrize(
        "url",
        [
            "sqlite:////no/such/folder/s.db",
            "postgresql+psycopg://postgres@127.0.0.1:1/test",
            "mysql+pymysql://root@127.0.0.1:1/test",
            "nosuch://x",
            "postgresql+nodriver://x/y",
        ],
        ids=["sqlite-missing-folder", "postgresql-down", "mariadb-down", "unknown-dialect", "unknown-driver"],
    )
    def test_open(self, url: str) -> None:
        with pytest.raises(pq.ConfigurationError, match=r"cannot (open the database|use)"):
            pq.ParqueDB(url)

    def test_wrong_credentials_name_the_server(self) -> None:
        from backends import PG_ADMIN

        bad = PG_ADMIN.replace("postgres@", "no_such_user_pq@", 1)
        with pytest.raises(pq.ConfigurationError, match="cannot open the database") as info:
            pq.ParqueDB(bad)
        assert "no_such_user_pq" in str(info.value)

    def test_enable_on_an_unopenable_engine(self) -> None:
        engine = create_engine("sqlite:////no/such/folder/s.db")
        with pytest.raises(pq.ConfigurationError, match="cannot open the database"):
            pq.enable(sessionmaker(bind=engine))
        engine.dispose()
