"""SQLite engines the way users configure them: the store adapts to the engine, never fights it.

- SQLAlchemy's documented pysqlite recipe for working SAVEPOINTs (driver autocommit plus a
  `begin` listener that emits BEGIN);
- `isolation_level="AUTOCOMMIT"`;
- the user's own pragmas (journal mode, synchronous), which the store must leave as set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, String, create_engine, event, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import parquedb_orm as pq
from parquedb_orm.sql.models import EventsWal


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(String(50))


def savepoint_recipe(url: str) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def no_driver_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def emit_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def own_pragmas(url: str) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=DELETE")
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    return engine


SETUPS = {
    "savepoint-recipe": savepoint_recipe,
    "autocommit": lambda url: create_engine(url, isolation_level="AUTOCOMMIT"),
    "own-pragmas": own_pragmas,
}


@pytest.fixture(params=sorted(SETUPS))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    engine = SETUPS[request.param](f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def wal_counts(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(EventsWal.event_count).order_by(EventsWal.ns, EventsWal.first_seq)).scalars())


def notes(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(Note.id)).scalars())


def test_enable_on_a_fresh_database_and_savepoints(engine: Engine, tmp_path: Path) -> None:
    Session = sessionmaker(engine)
    handle = pq.enable(Session, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))
    try:
        with Session() as s:
            st = pq.store(s)
            sp = s.begin_nested()  # a savepoint as the transaction's first statement
            gone = st.create("posts", {"name": "dropped"})
            s.add(Note(id=1, text="dropped"))
            sp.rollback()
            with s.begin_nested():
                kept = st.create("posts", {"name": "kept"})
                s.add(Note(id=2, text="kept"))
            s.commit()
        with Session() as s:
            pq.store(s).create("posts", {"name": "rolled back"})
            s.add(Note(id=3, text="rolled back"))
            s.flush()
            s.rollback()
        if _autocommit(engine):
            # an AUTOCOMMIT engine commits each app statement on its own: its rows are the
            # app's choice; the store's own rows still commit only with the session's commit
            assert 2 in notes(engine)
        else:
            assert notes(engine) == {2}
        assert wal_counts(engine) == [1]
        with Session() as s:
            assert pq.store(s).get("posts", kept["$id"].split("/")[1]) is not None
            assert pq.store(s).get("posts", gone["$id"].split("/")[1]) is None
        assert handle.flush().events == 1
        assert handle.duckdb().sql("SELECT count(*) FROM entities").fetchall() == [(1,)]
    finally:
        handle.close()


def _autocommit(engine: Engine) -> bool:
    return engine.dialect._on_connect_isolation_level == "AUTOCOMMIT"  # type: ignore[attr-defined]


def test_parquedb_on_the_engine(engine: Engine, tmp_path: Path) -> None:
    db = pq.ParqueDB(engine, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))
    try:
        e = db.create("posts", {"n": 0})
        for _ in range(3):
            db.update("posts", e["$id"].split("/")[1], {"$inc": {"n": 1}})
        with pytest.raises(RuntimeError), db.transaction() as tx:
            tx.create("posts", {"n": 99})
            raise RuntimeError("boom")
        many = db.create_many("posts", [{"i": i} for i in range(10)])
        assert db.flush().events == 4
        assert len(db.find("posts")) == 11
        assert db.get("posts", many[3]["$id"].split("/")[1]) == many[3]
    finally:
        db.close()
    again = pq.ParqueDB(engine, archive=tmp_path / "archive")
    try:
        assert again.get("posts", e["$id"].split("/")[1])["n"] == 3  # type: ignore[index]
    finally:
        again.close()


def test_the_store_leaves_the_users_pragmas(tmp_path: Path) -> None:
    engine = own_pragmas(f"sqlite:///{tmp_path / 'p.db'}")
    db = pq.ParqueDB(engine)
    try:
        db.create("posts", {"n": 1})
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.execute(select(func.count()).select_from(EventsWal)).scalar_one() == 1
    finally:
        db.close()
        engine.dispose()


def test_several_engines_in_one_process(tmp_path: Path) -> None:
    engines = [create_engine(f"sqlite:///{tmp_path / f'db{i}.db'}") for i in range(2)]
    makers = [sessionmaker(e) for e in engines]
    handles = [pq.enable(m) for m in makers]
    try:
        assert handles[0] is not handles[1]
        s0, s1 = makers[0](), makers[1]()
        a = pq.store(s0).create("posts", {"db": 0})
        b = pq.store(s1).create("posts", {"db": 1})
        s1.rollback()
        s0.commit()
        c = pq.store(s1).create("posts", {"db": 1})
        s1.commit()
        s0.close()
        s1.close()
        assert [d["db"] for d in handles[0].find("posts")] == [0]
        assert [d["db"] for d in handles[1].find("posts")] == [1]
        assert handles[1].get("posts", b["$id"].split("/")[1]) is None
        assert {a["$id"], c["$id"]} and wal_counts(engines[0]) == [1] == wal_counts(engines[1])
    finally:
        for h in handles:
            h.close()
        for e in engines:
            e.dispose()


def test_sessions_joined_to_an_outside_connection_are_refused(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'j.db'}")
    with engine.connect() as conn:
        with pytest.raises(pq.ConfigurationError, match="Connection"):
            pq.enable(sessionmaker(bind=conn), engine=engine)
        maker = sessionmaker(engine)
        handle = pq.enable(maker)
        try:
            with maker(bind=conn, join_transaction_mode="create_savepoint") as s, pytest.raises(
                pq.ConfigurationError, match="Connection"
            ):
                pq.store(s).create("posts", {"n": 1})
        finally:
            handle.close()
    engine.dispose()


def test_close_waits_for_a_running_flush_and_leaves_no_thread(tmp_path: Path) -> None:
    import threading

    engine = create_engine(f"sqlite:///{tmp_path / 'f.db'}")
    maker = sessionmaker(engine)
    before = {t.ident for t in threading.enumerate()}
    policy = pq.FlushPolicy(min_events=1, max_events=1, mode="background")
    handle = pq.enable(maker, archive=tmp_path / "archive", policy=policy)
    with maker() as s:
        for i in range(300):
            pq.store(s).create("posts", {"n": i})
        s.commit()  # >= max_events: a background flush starts now
    handle.close()
    left = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert left == [], left
    with engine.connect() as conn:  # the flush committed (events + entities files) or never began
        assert conn.exec_driver_sql("SELECT count(*) FROM archive_manifest").scalar() in (0, 2)
    db = pq.ParqueDB(engine, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))
    try:
        db.flush()
        assert len(db.find("posts")) == 300
        assert db.duckdb().sql("SELECT count(*) FROM events").fetchall() == [(300,)]
    finally:
        db.close()
        engine.dispose()


def test_wal_retirement_by_delete_on_sqlite(tmp_path: Path) -> None:
    """The capability switched off: SQLite retires flushed WAL rows the way PostgreSQL and
    MySQL do (DELETE), and the result is the same."""
    from parquedb_orm.sql import dialects

    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    dialects.override_capabilities(engine, retire_by_table_swap=False)
    assert dialects.capabilities(engine).retire_by_table_swap is False
    db = pq.ParqueDB(engine, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))
    try:
        made = [db.create("posts", {"n": i}) for i in range(5)]
        db.link(made[0]["$id"], "next", made[1]["$id"])
        assert db.flush().events == 5
        assert wal_counts(engine) == [1]  # the newest row stays (flushed): a stale writer must find it
        db.create("posts", {"n": 5})  # rows above the mark stay
        assert wal_counts(engine) == [1, 1]
        assert db.flush().events == 1
        assert wal_counts(engine) == [1]
        assert len(db.find("posts")) == 6 and len(db.related(made[0]["$id"], "next")) == 1
    finally:
        db.close()
        engine.dispose()
