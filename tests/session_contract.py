"""The session extension under every SQLAlchemy transaction pattern: one abstract case,
run on each backend by the concrete classes in tests/test_contract_*.py.

The rule under test: events belong to the transaction they were made in. A released
savepoint keeps its work, a rolled-back one loses only its own, only the outermost commit
writes (one WAL row per namespace) and publishes to the caches, and every other end of a
transaction leaves no trace in SQL or caches.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import make_engine, reset_schema
from parquedb_meter import meter
from sqlalchemy import Engine, String, event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, scoped_session, sessionmaker

import parquedb_orm as pq
from parquedb_orm.core.ids import decode_id
from parquedb_orm.orm import install
from parquedb_orm.sql.models import Counter, EventsWal, RelsWal


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "app_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))


def sqid(entity: dict[str, Any]) -> str:
    return str(entity["$id"]).split("/")[1]


def count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def wal(engine: Engine) -> dict[str, list[int]]:
    """ns -> event_count of each of its events_wal rows."""
    out: dict[str, list[int]] = {}
    with engine.connect() as conn:
        stmt = select(EventsWal.ns, EventsWal.event_count).order_by(EventsWal.ns, EventsWal.first_seq)
        for ns, n in conn.execute(stmt):
            out.setdefault(ns, []).append(n)
    return out


def items(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(Item.id)).scalars())


class SessionContract:
    backend: str = ""

    @pytest.fixture
    def engine(self, tmp_path: Path) -> Iterator[Engine]:
        engine = make_engine(self.backend, tmp_path)
        Base.metadata.create_all(engine)
        yield engine
        if not self.backend.startswith("sqlite"):
            Base.metadata.drop_all(engine)
            reset_schema(engine)
        engine.dispose()

    @pytest.fixture
    def Session(self, engine: Engine) -> Iterator[sessionmaker[Session]]:
        maker = sessionmaker(engine, expire_on_commit=False)
        handle = pq.enable(maker)
        yield maker
        handle.close()
        # nothing left behind: no listener on the maker or the engine, no bridge
        for name, fn in install.LISTENERS:
            assert not event.contains(maker, name, fn)
        assert len(engine.dispatch.commit) == 0
        assert not any(b.rt.engine is engine for b in install._bridges.values())
        with maker() as s, pytest.raises(pq.ConfigurationError):
            pq.store(s)

    def fresh(self, engine: Engine) -> pq.ParqueDB:
        """Another process's view: a new runtime (every cache cold) on an Engine object of
        its own that shares the pool (an in-memory database lives in its one connection)."""
        return pq.ParqueDB(engine.execution_options())

    def write_lock(self, s: Session, n: int) -> None:
        """App SQL first (on SQLite this takes the write lock: ids are then reserved inside
        the session's own transaction)."""
        s.add(Item(id=n, name=f"i{n}"))
        s.flush()

    # ------------------------------------------------------------------ commit's own flush
    def test_before_flush_listener_during_commit_is_written(self, engine: Engine, Session: Any) -> None:
        made: list[str] = []

        @event.listens_for(Session, "before_flush")
        def mirror(session: Session, _ctx: Any, _instances: Any) -> None:
            for obj in session.new:
                if isinstance(obj, Item):
                    made.append(pq.store(session).create("mirrors", {"item": obj.id})["$id"])

        try:
            with Session() as s:
                s.add(Item(id=1, name="a"))
                s.add(Item(id=2, name="b"))
                s.commit()  # the listener runs inside commit's own autoflush
        finally:
            event.remove(Session, "before_flush", mirror)
        assert items(engine) == {1, 2}
        assert wal(engine) == {"mirrors": [2]}
        db = self.fresh(engine)
        try:
            assert sorted(d["item"] for d in db.find("mirrors")) == [1, 2]
            assert {d["$id"] for d in db.find("mirrors")} == set(made)
        finally:
            db.close()

    def test_after_flush_and_late_before_commit_listeners_are_written(self, engine: Engine, Session: Any) -> None:
        @event.listens_for(Session, "after_flush")
        def after_flush(session: Session, _ctx: Any) -> None:
            pq.store(session).create("audit", {"what": "flush"})

        @event.listens_for(Session, "before_commit")  # installed after enable(): runs after ours
        def before_commit(session: Session) -> None:
            pq.store(session).create("audit", {"what": "commit"})

        try:
            with Session() as s:
                s.add(Item(id=1, name="a"))
                s.commit()
        finally:
            event.remove(Session, "after_flush", after_flush)
            event.remove(Session, "before_commit", before_commit)
        assert wal(engine) == {"audit": [2]}

    def test_store_call_after_commit_is_refused(self, engine: Engine, Session: Any) -> None:
        seen: list[type[BaseException]] = []

        @event.listens_for(Session, "after_commit")
        def late(session: Session) -> None:
            try:
                pq.store(session).create("audit", {"late": True})
            except pq.TransactionError as exc:
                seen.append(type(exc))

        try:
            with Session() as s:
                pq.store(s).create("audit", {"n": 1})
                s.commit()
        finally:
            event.remove(Session, "after_commit", late)
        assert seen == [pq.TransactionError]
        assert wal(engine) == {"audit": [1]}

    # ------------------------------------------------------------------ savepoints
    def test_savepoint_rollback_keeps_the_outer_events(self, engine: Engine, Session: Any) -> None:
        with Session() as s:
            st = pq.store(s)
            self.write_lock(s, 1)
            a = st.create("posts", {"name": "a"})
            sp = s.begin_nested()
            b = st.create("posts", {"name": "b"})
            st.update("posts", sqid(a), {"$set": {"name": "changed in savepoint"}})
            s.add(Item(id=2, name="rolled back"))
            sp.rollback()
            assert st.get("posts", sqid(b)) is None
            assert st.get("posts", sqid(a))["name"] == "a"  # type: ignore[index]
            c = st.create("posts", {"name": "c"})
            s.commit()
        assert items(engine) == {1}
        assert wal(engine) == {"posts": [2]}
        with Session() as s:
            st = pq.store(s)
            assert st.get("posts", sqid(a))["version"] == 1  # type: ignore[index]
            assert st.get("posts", sqid(b)) is None and st.get("posts", sqid(c)) is not None
        db = self.fresh(engine)
        try:
            assert sorted(d["name"] for d in db.find("posts")) == ["a", "c"]
        finally:
            db.close()

    def test_savepoints_two_levels(self, engine: Engine, Session: Any) -> None:
        with Session() as s:
            st = pq.store(s)
            self.write_lock(s, 1)
            st.create("posts", {"name": "outer"})
            with s.begin_nested():  # released
                st.create("posts", {"name": "level1-kept"})
                inner = s.begin_nested()
                st.create("posts", {"name": "level2-dropped"})
                inner.rollback()
                with s.begin_nested():  # released into level 1
                    st.create("posts", {"name": "level2-kept"})
            lvl1 = s.begin_nested()
            st.create("posts", {"name": "level1-dropped"})
            with s.begin_nested():  # released into a savepoint that then rolls back
                st.create("posts", {"name": "level2-in-dropped"})
            lvl1.rollback()
            with pytest.raises(RuntimeError), s.begin_nested():
                st.create("posts", {"name": "raised"})
                raise RuntimeError("boom")
            assert sorted(d["name"] for d in st.find("posts")) == ["level1-kept", "level2-kept", "outer"]
            s.commit()
        assert wal(engine) == {"posts": [3]}
        with Session() as s:
            assert sorted(d["name"] for d in pq.store(s).find("posts")) == ["level1-kept", "level2-kept", "outer"]

    def test_savepoint_opened_before_the_first_store_call(self, engine: Engine, Session: Any) -> None:
        with Session() as s:
            self.write_lock(s, 1)
            sp = s.begin_nested()
            pq.store(s).create("posts", {"name": "only in the savepoint"})
            sp.rollback()
            s.commit()
        assert wal(engine) == {} and items(engine) == {1}

    def test_released_savepoint_then_outer_rollback_leaves_no_trace(self, engine: Engine, Session: Any) -> None:
        with Session() as s:
            st = pq.store(s)
            self.write_lock(s, 1)
            with s.begin_nested():
                gone = st.create("posts", {"name": "x"})
            s.rollback()
        assert wal(engine) == {} and items(engine) == set()
        with Session() as s:
            assert pq.store(s).get("posts", sqid(gone)) is None  # not in the process caches
            assert pq.store(s).find("posts") == []
        assert pq.handle(Session).stats()["unflushed_events"] == 0

    def test_session_commit_with_savepoint_open_commits_it(self, engine: Engine, Session: Any) -> None:
        with Session() as s:
            st = pq.store(s)
            self.write_lock(s, 1)
            s.begin_nested()
            st.create("posts", {"name": "inside"})
            s.commit()  # releases the savepoint, then commits
        assert wal(engine) == {"posts": [1]}

    # ------------------------------------------------------------------ ends without commit
    def test_close_discards(self, engine: Engine, Session: Any) -> None:
        s = Session()
        gone = pq.store(s).create("posts", {"name": "closed"})
        s.close()
        s.add(Item(id=1, name="unrelated"))
        s.commit()  # the same session, reused
        s.close()
        assert wal(engine) == {} and items(engine) == {1}
        with Session() as s2:
            assert pq.store(s2).get("posts", sqid(gone)) is None

    @pytest.mark.parametrize("end", ["rollback", "close", "reset", "invalidate"])
    @pytest.mark.parametrize("sql_first", [False, True])
    def test_every_end_without_commit_discards(self, engine: Engine, Session: Any, end: str, sql_first: bool) -> None:
        if end == "invalidate" and self.backend == "sqlite-memory":
            pytest.skip("an in-memory SQLite database is gone with its invalidated connection")
        s = Session()
        if sql_first:
            self.write_lock(s, 1)
        gone = pq.store(s).create("posts", {"name": end})
        getattr(s, end)()
        with s:
            pq.store(s).create("other", {"n": 1})
            s.commit()
        assert wal(engine) == {"other": [1]} and items(engine) == set()
        with Session() as s2:
            assert pq.store(s2).get("posts", sqid(gone)) is None

    def test_context_manager_begin_rolls_back_on_error(self, engine: Engine, Session: Any) -> None:
        with pytest.raises(RuntimeError), Session.begin() as s:
            pq.store(s).create("posts", {"name": "x"})
            s.add(Item(id=1, name="x"))
            raise RuntimeError("boom")
        with Session.begin() as s:
            pq.store(s).create("posts", {"name": "y"})
            s.add(Item(id=2, name="y"))
        assert wal(engine) == {"posts": [1]} and items(engine) == {2}

    def test_failed_flush_discards(self, engine: Engine, Session: Any) -> None:
        with Session() as s:
            s.add(Item(id=1, name="a"))
            s.commit()
        with Session() as s:
            gone = pq.store(s).create("posts", {"name": "x"})
            s.add(Item(id=1, name="duplicate"))
            with pytest.raises(IntegrityError):
                s.commit()
            s.rollback()
            kept = pq.store(s).create("posts", {"name": "y"})
            s.commit()
        assert wal(engine) == {"posts": [1]}
        with Session() as s:
            assert pq.store(s).get("posts", sqid(gone)) is None
            assert pq.store(s).get("posts", sqid(kept)) is not None

    def test_failed_flush_inside_a_savepoint(self, engine: Engine, Session: Any) -> None:
        with Session() as s:
            s.add(Item(id=1, name="a"))
            s.commit()
        with Session() as s:
            st = pq.store(s)
            self.write_lock(s, 2)
            kept = st.create("posts", {"name": "outer"})
            sp = s.begin_nested()
            gone = st.create("posts", {"name": "inner"})
            s.add(Item(id=1, name="duplicate"))
            with pytest.raises(IntegrityError):
                s.flush()
            sp.rollback()
            s.commit()
        assert wal(engine) == {"posts": [1]} and items(engine) == {1, 2}
        with Session() as s:
            assert pq.store(s).get("posts", sqid(kept)) is not None
            assert pq.store(s).get("posts", sqid(gone)) is None

    def test_version_conflict_at_commit_rolls_back_the_app_rows(self, engine: Engine, Session: Any) -> None:
        with Session() as s:
            e = pq.store(s).create("posts", {"n": 0})
            s.commit()
        s1 = Session()
        pq.store(s1).update("posts", sqid(e), {"$inc": {"n": 1}})  # reads version 1
        with Session() as s2:  # commits version 2 first
            pq.store(s2).update("posts", sqid(e), {"$inc": {"n": 100}})
            s2.commit()
        s1.add(Item(id=1, name="s1"))
        with pytest.raises(pq.VersionConflictError):
            s1.commit()  # the store's check fails inside the COMMIT: the app row goes too
        s1.rollback()
        s1.close()
        assert items(engine) == set()
        with Session() as s:
            pq.store(s).update("posts", sqid(e), {"$inc": {"n": 1000}})  # nothing left in flight
            s.commit()
        with Session() as s:
            final = pq.store(s).get("posts", sqid(e))
            assert final is not None and final["n"] == 1100 and final["version"] == 3

    # ------------------------------------------------------------------ ids
    def test_rolled_back_ids_are_never_issued_again(self, engine: Engine, Session: Any) -> None:
        shown: set[str] = set()
        with Session() as s:
            self.write_lock(s, 1)  # on SQLite: ids now come from a block reserved in this transaction
            shown.add(pq.store(s).create("posts", {"name": "rolled back"})["$id"])
            s.rollback()
        with Session() as s:
            self.write_lock(s, 2)
            sp = s.begin_nested()
            shown.add(pq.store(s).create("tags", {"name": "in a rolled-back savepoint"})["$id"])
            sp.rollback()
            s.commit()
        handle = pq.handle(Session)
        later = {handle.create("posts", {"name": f"p{i}"})["$id"] for i in range(150)}
        later |= {handle.create("tags", {"name": f"t{i}"})["$id"] for i in range(5)}
        with Session() as s:
            later |= {e["$id"] for e in pq.store(s).create_many("posts", [{"n": i} for i in range(3)])}
            s.commit()
        assert not shown & later
        # another process (fresh counters) does not reissue them either
        with engine.connect() as conn:
            stored = dict(conn.execute(select(Counter.name, Counter.value)).all())
        for ref in shown:
            ns, s_id = ref.split("/")
            assert stored[f"id:{ns}"] >= (decode_id(s_id) or 0), (ref, stored)

    # ------------------------------------------------------------------ rows per commit
    def test_250_events_in_one_session_commit_are_one_wal_row_per_namespace(self, engine: Engine, Session: Any) -> None:
        with Session() as s:
            st = pq.store(s)
            posts = [st.create("posts", {"n": i}) for i in range(200)]
            users = [st.create("users", {"n": i}) for i in range(25)]
            for i in range(25):
                st.link(posts[i]["$id"], "author", users[i]["$id"])
            s.add(Item(id=1, name="x"))
            with meter(engine) as m:
                s.commit()
        assert wal(engine) == {"posts": [200], "users": [25]}
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(RelsWal)).scalar_one() == 1
        wal_insert = re.compile(r"\s*INSERT (OR IGNORE |IGNORE )?INTO (events_wal|rels_wal)", re.I)
        inserts = [r.sql for r in m.records if wal_insert.match(r.sql)]
        assert len(inserts) == 2, inserts  # one statement per WAL table, whatever the namespaces

    # ------------------------------------------------------------------ ways to build sessions
    def test_scoped_session(self, engine: Engine) -> None:
        Scoped = scoped_session(sessionmaker(engine))
        handle = pq.enable(Scoped)
        try:
            assert pq.handle(Scoped) is handle
            made = pq.store(Scoped).create("posts", {"name": "scoped"})
            Scoped.add(Item(id=1, name="x"))
            Scoped.commit()
            Scoped.remove()
            assert pq.store(Scoped).get("posts", sqid(made)) is not None
            Scoped.remove()
        finally:
            handle.close()
        assert wal(engine) == {"posts": [1]} and items(engine) == {1}

    def test_binds_and_custom_get_bind(self, engine: Engine) -> None:
        by_binds = sessionmaker(binds={Base: engine})
        handle = pq.enable(by_binds)
        try:
            with by_binds() as s:
                pq.store(s).create("posts", {"via": "binds"})
                s.add(Item(id=1, name="x"))
                s.commit()
        finally:
            handle.close()

        class Routing(Session):
            def get_bind(self, mapper: Any = None, clause: Any = None, **kw: Any) -> Any:
                return engine

        routed = sessionmaker(class_=Routing)
        handle = pq.enable(routed)
        try:
            with routed() as s:
                pq.store(s).create("posts", {"via": "get_bind"})
                s.add(Item(id=2, name="y"))
                s.commit()
        finally:
            handle.close()
        assert wal(engine) == {"posts": [1, 1]} and items(engine) == {1, 2}

    def test_refused_targets_say_why(self, engine: Engine) -> None:
        from sqlalchemy.ext.asyncio import async_sessionmaker

        with pytest.raises(pq.ConfigurationError, match="Async"):
            pq.enable(async_sessionmaker())  # type: ignore[arg-type]
        with pytest.raises(pq.ConfigurationError, match="sessionmaker"):
            pq.enable(engine)  # type: ignore[arg-type]
        with pytest.raises(pq.ConfigurationError, match="engine"):
            pq.enable(sessionmaker())
        with pytest.raises(pq.ConfigurationError, match="migrate"):
            pq.enable(sessionmaker(engine), migrate="yes")  # type: ignore[arg-type]

    def test_handle_flush_stats_duckdb_close(self, engine: Engine, tmp_path: Path) -> None:
        maker = sessionmaker(engine)
        handle = pq.enable(maker, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))
        try:
            assert pq.handle(maker) is handle and pq.enable(maker) is handle
            with maker() as s:
                for i in range(3):
                    pq.store(s).create("posts", {"n": i})
                s.commit()
                assert pq.handle(s) is handle
            assert handle.stats()["unflushed_events"] == 3
            result = handle.flush()
            assert result.events == 3
            assert handle.duckdb().sql("SELECT count(*) FROM entities").fetchall() == [(3,)]
        finally:
            handle.close()
        handle.close()  # twice is fine
        with maker() as s, pytest.raises(pq.ConfigurationError):
            pq.store(s)


__all__ = ["SessionContract", "text"]
