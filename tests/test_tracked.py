"""Tracked models on every backend: each ORM insert, update and delete, each bulk
statement and upsert, and each relationship change becomes an event; history, as_of and
revert read them back the same before and after a flush and in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from backends import assert_wal_flushed, backend_engine, url_of
from sqlalchemy import Engine, String, create_engine, delete, event, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from tracked_models import (
    Account,
    Base,
    Book,
    Customer,
    Line,
    Order,
    Shelf,
    Status,
    Tag,
    Untracked,
    history_json,
    order_tags,
)

import parquedb_orm as pq
from parquedb_orm.core.ids import encode_id
from parquedb_orm.sql.models import EventsWal, RelsWal

BACKENDS = ["sqlite-file", "postgresql", "mysql"]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(kind: str, tmp_path: Path) -> Iterator[Engine]:
    with backend_engine(kind, tmp_path, Base.metadata) as engine:
        yield engine


@pytest.fixture
def maker(engine: Engine, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    maker = sessionmaker(engine, expire_on_commit=False)
    handle = pq.enable(maker, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))
    yield maker
    handle.close()


def ops(session: Session, model: type, pk: Any) -> list[tuple[str, int]]:
    return [(v.op, v.version) for v in pq.history(session, model, pk)]


def wal_rows(engine: Engine, ns: str) -> list[int]:
    with engine.connect() as conn:
        return [
            n
            for (n,) in conn.execute(
                select(EventsWal.event_count).where(EventsWal.ns == ns).order_by(EventsWal.first_seq)
            )
        ]


def in_fresh_process(kind: str, tmp_path: Path, model: str, key: Any) -> Any:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, str(TESTS / "tracked_models.py"), url_of(kind, tmp_path), str(tmp_path / "archive"),
         model, json.dumps(key)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


class Statements:
    """The SQL statements an engine runs on the app's tables (the store's own reads of its
    tables are counted by the meter tests; row costs are in docs/tracked.md)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sql: list[str] = []
        self.full: list[str] = []

    def _on(self, _conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if " t_" not in statement:
            return
        self.sql.append(statement.split(None, 1)[0].upper())
        self.full.append(statement)

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)


# ---------------------------------------------------------------------------- rows


def test_insert_update_delete_history_as_of_revert(
    kind: str, engine: Engine, maker: sessionmaker[Session], tmp_path: Path
) -> None:
    with maker() as s:
        s.info["actor"] = "alice"
        order = Order(id=1, qty=1, total=Decimal("9.50"))
        s.add(order)
        s.commit()
        t1 = datetime.now(UTC)
        order.qty = 2
        order.status = Status.paid
        order.secret = "changed"  # excluded: not in the events
        s.commit()
        with pq.acting_as(s, "bob", remote_addr="10.0.0.7"):
            order.total = Decimal("12.25")
            order.version = 2
            s.commit()
        order.secret = "excluded only"
        s.commit()  # no tracked field changed: no event

        want = [
            ["UPDATE", 3, "bob", {"total": ["9.50", "12.25"], "row_version": [1, 2]}, {"remote_addr": "10.0.0.7"}],
            ["UPDATE", 2, "alice", {"qty": [1, 2], "status": ["new", "paid"]}, None],
            ["CREATE", 1, "alice",
             {"id": [None, 1], "qty": [None, 1], "total": [None, "9.50"], "status": [None, "new"],
              "row_version": [None, 1], "customer_id": [None, None]}, None],
        ]  # fmt: skip
        assert history_json(s, Order, 1) == want
        first = pq.as_of(s, Order, 1, version=1)
        assert (first.qty, first.total, first.status, first.version) == (1, Decimal("9.50"), Status.new, 1)
        assert first not in s and first.secret is None  # a transient copy, excluded column absent
        assert pq.as_of(s, Order, 1, at=t1).qty == 1
        assert pq.as_of(s, Order, 1, at=t1 - timedelta(days=1)) is None
        # the store sees the row as an entity, keyed by the primary key
        assert pq.store(s).get("orders", encode_id(1))["qty"] == 2  # type: ignore[index]

        pq.revert(s, order, to=1)
        s.commit()
        assert (order.qty, order.status, order.total) == (1, Status.new, Decimal("9.50"))
        assert ops(s, Order, 1)[0] == ("UPDATE", 4)
        assert pq.history(s, Order, 1)[0].changes == {
            "qty": (2, 1), "status": (Status.paid, Status.new), "total": (Decimal("12.25"), Decimal("9.50")),
            "row_version": (2, 1),
        }  # fmt: skip

        s.delete(order)
        s.commit()
        assert ops(s, Order, 1)[0] == ("DELETE", 5)
        assert pq.history(s, Order, 1)[0].state is None
        assert pq.store(s).get("orders", encode_id(1)) is None
        before_flush = history_json(s, Order, 1)

        # revert of a deleted row inserts it again, as a new CREATE
        again = pq.revert(s, Order, 1, to=2)
        s.commit()
        assert (again.id, again.qty, again.status) == (1, 2, Status.paid)
        assert ops(s, Order, 1)[:2] == [("CREATE", 6), ("DELETE", 5)]

    pq.handle(maker).flush()
    with maker() as s:
        assert history_json(s, Order, 1)[1:] == before_flush
        assert pq.as_of(s, Order, 1, version=3).total == Decimal("12.25")
    assert_wal_flushed(engine)  # all archived
    assert in_fresh_process(kind, tmp_path, "Order", 1)[1:] == before_flush


def test_rollback_and_savepoints_keep_only_committed_changes(maker: sessionmaker[Session], engine: Engine) -> None:
    with maker() as s:
        s.add(Order(id=1, qty=1))
        s.commit()
        order = s.get(Order, 1)
        assert order is not None
        order.qty = 50
        s.flush()
        s.rollback()
        with s.begin_nested():
            s.get(Order, 1).qty = 2  # type: ignore[union-attr]
        sp = s.begin_nested()
        s.get(Order, 1).qty = 3  # type: ignore[union-attr]
        s.flush()
        sp.rollback()
        s.commit()
        assert ops(s, Order, 1) == [("UPDATE", 2), ("CREATE", 1)]
        assert pq.history(s, Order, 1)[0].changes == {"qty": (1, 2)}
    assert wal_rows(engine, "orders") == [1, 1]


def test_a_commit_of_1000_rows_writes_one_wal_row(engine: Engine, maker: sessionmaker[Session]) -> None:
    with maker() as s:
        s.add_all([Order(id=i, qty=i) for i in range(1, 1001)])
        s.commit()
        for o in s.scalars(select(Order)):
            o.qty += 1
        s.commit()
    assert wal_rows(engine, "orders") == [1000, 1000]
    with maker() as s:
        assert ops(s, Order, 1000) == [("UPDATE", 2), ("CREATE", 1)]


def test_untracked_models_write_no_events(engine: Engine, maker: sessionmaker[Session]) -> None:
    with maker() as s, Statements(engine) as seen:
        s.add(Untracked(id=1, name="a"))
        s.commit()
        s.get(Untracked, 1).name = "b"  # type: ignore[union-attr]
        s.commit()
    assert seen.sql.count("INSERT") == 1 and seen.sql.count("UPDATE") == 1  # the app's own only
    with engine.connect() as conn:
        assert conn.execute(select(EventsWal)).first() is None


# ---------------------------------------------------------------------------- bulk statements


def test_bulk_update_delete_insert(kind: str, engine: Engine, maker: sessionmaker[Session], tmp_path: Path) -> None:
    returning_update = kind != "mysql"  # MariaDB has RETURNING for INSERT and DELETE, not UPDATE
    with maker() as s:
        s.info["actor"] = "batch"
        with Statements(engine) as seen:
            result = s.execute(insert(Order), [{"id": i, "qty": i} for i in range(1, 6)])
        assert seen.sql == ["INSERT"], seen.full  # RETURNING: no extra statement
        s.execute(insert(Order).values([{"id": 6, "qty": 6}, {"id": 7, "qty": 7}]))
        s.commit()
        assert [ops(s, Order, i) for i in (1, 7)] == [[("CREATE", 1)], [("CREATE", 1)]]

        with Statements(engine) as seen:
            result = s.execute(update(Order).where(Order.qty > 4).values(qty=Order.qty + 100))
        assert result.rowcount == 3
        # RETURNING: the UPDATE alone; else one SELECT of the keys before, one of the new rows after
        assert seen.sql == (["UPDATE"] if returning_update else ["SELECT", "UPDATE", "SELECT"])
        s.commit()
        assert pq.history(s, Order, 5)[0].changes == {"qty": (5, 105)}
        assert ops(s, Order, 4) == [("CREATE", 1)]

        # ORM bulk UPDATE by primary key: the keys are in the parameters, one SELECT after
        with Statements(engine) as seen:
            s.execute(update(Order), [{"id": 1, "qty": 11}, {"id": 2, "qty": 12}])
        assert seen.sql[-1] == "SELECT" and seen.sql.count("SELECT") == 1
        s.commit()
        assert pq.history(s, Order, 2)[0].changes == {"qty": (2, 12)}

        with Statements(engine) as seen:
            result = s.execute(delete(Order).where(Order.qty >= 100))
        assert result.rowcount == 3
        assert seen.sql == ["DELETE"]  # RETURNING on all three
        s.commit()
        assert ops(s, Order, 6) == [("DELETE", 3), ("UPDATE", 2), ("CREATE", 1)]
        assert pq.history(s, Order, 6)[0].actor == "batch"
        assert pq.as_of(s, Order, 6, version=2).qty == 106
        restored = pq.revert(s, Order, 6, to=2)
        s.commit()
        assert restored.qty == 106 and s.get(Order, 6) is restored
        before = {i: history_json(s, Order, i) for i in range(1, 8)}
    pq.handle(maker).flush()
    with maker() as s:
        assert {i: history_json(s, Order, i) for i in range(1, 8)} == before
    assert in_fresh_process(kind, tmp_path, "Order", 6) == before[6]


def _upsert(kind: str, rows: list[dict[str, Any]]) -> Any:
    if kind == "mysql":
        from sqlalchemy.dialects.mysql import insert as my_insert

        stmt = my_insert(Order).values(rows)
        return stmt.on_duplicate_key_update(qty=stmt.inserted.qty)
    if kind == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt_pg = pg_insert(Order).values(rows)
        return stmt_pg.on_conflict_do_update(index_elements=[Order.id], set_={"qty": stmt_pg.excluded.qty})
    from sqlalchemy.dialects.sqlite import insert as lite_insert

    stmt_lite = lite_insert(Order).values(rows)
    return stmt_lite.on_conflict_do_update(index_elements=[Order.id], set_={"qty": stmt_lite.excluded.qty})


def test_upserts(kind: str, engine: Engine, maker: sessionmaker[Session], tmp_path: Path) -> None:
    with maker() as s:
        s.add(Order(id=1, qty=1))
        s.commit()
        s.execute(_upsert(kind, [{"id": 1, "qty": 10}, {"id": 2, "qty": 20}]))
        s.commit()
        assert ops(s, Order, 1) == [("UPDATE", 2), ("CREATE", 1)]
        assert pq.history(s, Order, 1)[0].changes == {"qty": (1, 10)}
        assert ops(s, Order, 2) == [("CREATE", 1)]
        s.execute(_upsert(kind, [{"id": 2, "qty": 20}]))  # no change: no event
        s.commit()
        assert ops(s, Order, 2) == [("CREATE", 1)]
        assert pq.as_of(s, Order, 1, version=1).qty == 1
        pq.revert(s, Order, 1, to=1)
        s.commit()
        assert s.get(Order, 1).qty == 1  # type: ignore[union-attr]
        assert pq.history(s, Order, 1)[0].changes == {"qty": (10, 1)}
        before = history_json(s, Order, 1)
    pq.handle(maker).flush()
    with maker() as s:
        assert history_json(s, Order, 1) == before
    assert in_fresh_process(kind, tmp_path, "Order", 1) == before


# ---------------------------------------------------------------------------- relationships


def test_relationship_changes_are_links(
    kind: str, engine: Engine, maker: sessionmaker[Session], tmp_path: Path
) -> None:
    with maker() as s:
        ann, bo = Customer(id=1, name="ann"), Customer(id=2, name="bo")
        red, blue = Tag(id=1, label="red"), Tag(id=2, label="blue")
        order = Order(id=1, qty=1, customer=ann, tags=[red])
        s.add_all([ann, bo, red, blue, order])
        s.commit()
        st = pq.store(s)
        assert [c["name"] for c in st.related(pq.ref(order), "customer")] == ["ann"]
        assert [o["qty"] for o in st.related(pq.ref(ann), "orders", direction="inbound")] == [1]
        order.customer = bo
        order.tags.append(blue)
        s.commit()
        order.tags.remove(red)
        s.commit()
        assert [c["name"] for c in st.related(pq.ref(order), "customer")] == ["bo"]
        assert st.related(pq.ref(ann), "orders", direction="inbound") == []
        assert [t["label"] for t in st.related(pq.ref(order), "tags")] == ["blue"]
        rel_history = [(v.op, v.version, v.changes) for v in pq.history(s, order) if v.op in ("LINK", "UNLINK")]
        assert rel_history == [
            ("UNLINK", 2, {"tags": ("tags/" + encode_id(1), None)}),
            ("LINK", 2, {"tags": (None, "tags/" + encode_id(2))}),
            ("LINK", 2, {"customer": (None, "customers/" + encode_id(2))}),
            ("UNLINK", 2, {"customer": ("customers/" + encode_id(1), None)}),
            ("LINK", 1, {"tags": (None, "tags/" + encode_id(1))}),
            ("LINK", 1, {"customer": (None, "customers/" + encode_id(1))}),
        ]

        # one-to-many declared only on the parent: the child's foreign key links parent -> child
        shelf = Shelf(id=1, books=[Book(id=1, title="a"), Book(id=2, title="b")])
        s.add(shelf)
        s.commit()
        assert sorted(b["title"] for b in st.related(pq.ref(shelf), "books")) == ["a", "b"]
        s.delete(s.get(Book, 1))
        s.commit()
        assert [b["title"] for b in st.related(pq.ref(shelf), "books")] == ["b"]

        # revert restores the many-to-many members and the foreign key of version 1
        pq.revert(s, order, to=1)
        s.commit()
        assert order.customer is ann and [t.label for t in order.tags] == ["red"]
        assert [t["label"] for t in st.related(pq.ref(order), "tags")] == ["red"]
        # a deleted row's links go with it
        s.delete(order)
        s.commit()
        assert st.related(pq.ref(order), "tags") == [] and st.related(pq.ref(order), "customer") == []
        links_before = history_json(s, Order, 1)
        assert [h[0] for h in links_before].count("LINK") == 6  # 2 made, 2 changed, 2 by the revert
    pq.handle(maker).flush()
    with maker() as s:
        assert s.get(Order, 1) is None
        assert history_json(s, Order, 1) == links_before
        assert [b["title"] for b in pq.store(s).related("shelves/" + encode_id(1), "books")] == ["b"]
    assert in_fresh_process(kind, tmp_path, "Order", 1) == links_before
    with engine.connect() as conn:
        assert sorted(conn.execute(select(RelsWal.ns)).all()) == [("orders",), ("shelves",)]  # the newest, archived
    assert_wal_flushed(engine)


# ---------------------------------------------------------------------------- keys


def test_composite_string_and_uuid_keys(
    kind: str, engine: Engine, maker: sessionmaker[Session], tmp_path: Path
) -> None:
    when = datetime(2026, 5, 1, 12, 30)
    with maker() as s:
        s.add_all([Line(order_no=1, line_no=1, sku="a"), Line(order_no=1, line_no=2, sku="b")])
        acct = Account(code="acme/../../etc", opened=when)  # a key that is no path
        s.add(acct)
        s.commit()
        s.get(Line, (1, 2)).sku = "c"  # type: ignore[union-attr]
        acct.opened = None
        s.commit()
        assert ops(s, Line, (1, 2)) == [("UPDATE", 2), ("CREATE", 1)]
        assert ops(s, Line, (1, 1)) == [("CREATE", 1)]
        assert pq.as_of(s, Line, (1, 2), version=1).sku == "b"
        assert pq.history(s, acct)[0].changes == {"opened": (when, None)}
        token = acct.token
        ref = pq.ref(acct)
        assert ref.startswith("accounts/_") and "/" not in ref.split("/", 1)[1] and ".." not in ref
    pq.handle(maker).flush()
    with maker() as s:
        got = pq.as_of(s, Account, "acme/../../etc", version=1)
        assert (got.opened, got.token) == (when, token)
        assert pq.store(s).get(*ref.split("/"))["opened"] is None  # type: ignore[index]
    assert in_fresh_process(kind, tmp_path, "Line", [1, 2])[0][:2] == ["UPDATE", 2]


# ---------------------------------------------------------------------------- bad input


def test_configuration_errors(maker: sessionmaker[Session]) -> None:
    class Other(DeclarativeBase):
        pass

    class Clash(pq.Tracked, Other):
        __tablename__ = "clash"
        id: Mapped[int] = mapped_column(primary_key=True)
        createdAt: Mapped[str] = mapped_column(String(5))

    class BadName(pq.Tracked, Other):
        __tablename__ = "bad name"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Excl(Other):
        __tablename__ = "excl"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(pq.ConfigurationError, match="rename it"):
        pq.history(None, Clash, 1)  # type: ignore[arg-type]
    with pytest.raises(pq.ConfigurationError, match="namespace"):
        pq.history(None, BadName, 1)  # type: ignore[arg-type]
    pq.track(Excl, exclude=["nope"])
    with pytest.raises(pq.ConfigurationError, match="nope"):
        pq.history(None, Excl, 1)  # type: ignore[arg-type]
    pq.untrack(Excl)
    with pytest.raises(pq.ConfigurationError, match="not tracked"):
        pq.history(None, Excl, 1)  # type: ignore[arg-type]
    with pytest.raises(pq.ConfigurationError, match="list of attribute names"):
        pq.track(Excl, exclude="id")
    with pytest.raises(pq.ConfigurationError, match="mapped class"):
        pq.track("Order")  # type: ignore[call-overload]
    with maker() as s:
        s.add(Order(id=1, qty=1))
        s.commit()
        with pytest.raises(pq.ValidationError, match="exactly one"):
            pq.as_of(s, Order, 1, version=1, at=datetime.now(UTC))
        with pytest.raises(pq.ValidationError, match="timezone-aware"):
            pq.as_of(s, Order, 1, at=datetime(2026, 1, 1))
        with pytest.raises(pq.ValidationError, match="2-part primary key"):
            pq.history(s, Line, 1)
        with pytest.raises(pq.ValidationError, match="positive int"):
            pq.as_of(s, Order, 1, version=0)
        s.info["actor"] = ""
        s.get(Order, 1).qty = 2  # type: ignore[union-attr]
        with pytest.raises(pq.ValidationError, match="actor"):
            s.commit()  # the flush fails before anything is written
        s.rollback()
        assert ops(s, Order, 1) == [("CREATE", 1)]
        assert s.get(Order, 1).qty == 1  # type: ignore[union-attr]


def test_tables_used_here_exist_once() -> None:
    # the secondary table and every tracked model share the one metadata the fixtures create
    assert order_tags.metadata is Base.metadata and Order.__table__.metadata is Base.metadata


def test_two_writers_in_shared_mode(kind: str, engine: Engine, tmp_path: Path) -> None:
    """Two runtimes (as two processes) on one database: versions continue across them."""
    other = create_engine(url_of(kind, tmp_path))
    makers = [sessionmaker(engine, expire_on_commit=False), sessionmaker(other, expire_on_commit=False)]
    handles = [pq.enable(m, shared=True, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))
               for m in makers]  # fmt: skip
    try:
        with makers[0]() as a, makers[1]() as b:
            a.info["actor"], b.info["actor"] = "a", "b"
            a.add(Order(id=1, qty=1))
            a.commit()
            b.get(Order, 1).qty = 2  # type: ignore[union-attr]
            b.commit()
            a.get(Order, 1).qty = 3  # type: ignore[union-attr]  # a's identity map still says 1: the store does not
            a.commit()
            want = [("UPDATE", 3, "a", {"qty": (2, 3)}), ("UPDATE", 2, "b", {"qty": (1, 2)}),
                    ("CREATE", 1, "a", None)]  # fmt: skip
            for session in (a, b):
                got = [(v.op, v.version, v.actor, v.changes if v.op == "UPDATE" else None)
                       for v in pq.history(session, Order, 1)]  # fmt: skip
                assert got == want
        handles[1].flush()
        with makers[0]() as a:
            assert ops(a, Order, 1) == [("UPDATE", 3), ("UPDATE", 2), ("CREATE", 1)]
    finally:
        for h in handles:
            h.close()
        other.dispose()
