"""AsyncSession, AsyncEngine and AsyncParqueDB, on real async drivers: SQLite files via
aiosqlite and PostgreSQL via asyncpg (docs/async.md).

Each test runs its coroutine with `asyncio.run` and creates and disposes its async engine
inside it (async connections belong to the loop that opened them). Assertions on SQL use a
sync engine of the same database (`Backend.check`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from backends import reset_schema, server_url
from sqlalchemy import Engine, ForeignKey, String, create_engine, event, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

import parquedb_orm as pq
from parquedb_orm import db as db_module
from parquedb_orm.core.ids import encode_id
from parquedb_orm.engine import setup
from parquedb_orm.orm import install
from parquedb_orm.orm.aio import AsyncParqueDB, AsyncStore
from parquedb_orm.sql.models import ArchiveFile, EventsWal, RelsWal

T = TypeVar("T")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "app_async_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))


class Buyer(pq.Tracked, Base):
    __tablename__ = "app_async_buyers"
    __pq_namespace__ = "async_buyers"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))


class Purchase(pq.Tracked, Base):
    __tablename__ = "app_async_purchases"
    __pq_namespace__ = "async_purchases"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    qty: Mapped[int]
    buyer_id: Mapped[int | None] = mapped_column(ForeignKey("app_async_buyers.id"))
    buyer: Mapped[Buyer | None] = relationship()


@dataclass
class Backend:
    kind: str
    url: str  # the async URL the app uses
    check: Engine  # a sync engine of the same database, for assertions
    tmp: Path

    def engine(self) -> AsyncEngine:
        return create_async_engine(self.url)

    def wal(self) -> dict[str, list[int]]:
        """ns -> event_count of each of its events_wal rows."""
        out: dict[str, list[int]] = {}
        with self.check.connect() as conn:
            stmt = select(EventsWal.ns, EventsWal.event_count).order_by(EventsWal.ns, EventsWal.first_seq)
            for ns, n in conn.execute(stmt):
                out.setdefault(ns, []).append(n)
        return out

    def rels(self) -> dict[str, list[int]]:
        """ns -> event_count of each of its rels_wal rows."""
        out: dict[str, list[int]] = {}
        with self.check.connect() as conn:
            stmt = select(RelsWal.ns, RelsWal.event_count).order_by(RelsWal.ns, RelsWal.first_seq)
            for ns, n in conn.execute(stmt):
                out.setdefault(ns, []).append(n)
        return out

    def items(self) -> dict[int, str]:
        with self.check.connect() as conn:
            return {i: n for i, n in conn.execute(select(Item.id, Item.name))}

    def count(self, table: str) -> int:
        with self.check.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(text(table))).scalar_one())


def _reset(engine: Engine) -> None:
    Base.metadata.drop_all(engine)
    reset_schema(engine)


@pytest.fixture(params=["sqlite-file", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite-file":
        path = tmp_path / "app.db"
        check = create_engine(f"sqlite:///{path}")
        Base.metadata.create_all(check)
        yield Backend("sqlite-file", f"sqlite+aiosqlite:///{path}", check, tmp_path)
        check.dispose()
        return
    sync_url = server_url("postgresql")  # skips (locally) or fails (CI) without a server
    check = create_engine(sync_url)
    _reset(check)
    Base.metadata.create_all(check)
    async_url = make_url(sync_url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    yield Backend("postgresql", async_url, check, tmp_path)
    _reset(check)
    check.dispose()


@pytest.fixture(autouse=True)
def no_derived_engine_left() -> Iterator[None]:
    before = set(db_module._derived)
    yield
    left = {k: d for k, d in db_module._derived.items() if k not in before}
    for key in left:
        db_module._derived.pop(key).engine.dispose()
    assert not left, f"derived sync engines left open: {[d.engine.url for d in left.values()]}"


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


def sqid(entity: dict[str, Any]) -> str:
    return str(entity["$id"]).split("/")[1]


def assert_clean(maker: async_sessionmaker[Any], engine: AsyncEngine, own: type[Session], original: object) -> None:
    """What closing the handle must leave: no listener on the maker's Session class or the
    engine, the maker's own sync_session_class back, no bridge for the engine."""
    for name, fn in install.LISTENERS:
        assert not event.contains(own, name, fn)
    assert maker.kw.get("sync_session_class", "unset") == original
    assert "parquedb_orm.bridge" not in (maker.kw.get("info") or {})
    assert len(engine.sync_engine.dispatch.commit) == 0
    assert not any(engine.sync_engine in b.binds for b in install._bridges.values())


# --------------------------------------------------------------------------- sessions


def test_store_ops_commit_with_the_session_and_roll_back_with_it(backend: Backend) -> None:
    async def main() -> None:
        engine = backend.engine()
        maker = async_sessionmaker(engine, expire_on_commit=False)
        handle = pq.enable(maker)
        try:
            assert isinstance(handle, pq.ParqueDB) and not handle.engine.dialect.is_async
            async with maker() as s:
                st = pq.store(s)
                assert isinstance(st, AsyncStore)
                s.add(Item(id=1, name="one"))
                await s.flush()
                post = await st.create("posts", {"title": "hello", "views": 0}, actor="users/ann")
                user = await st.create("users", {"name": "ann"})
                post = await st.update("posts", sqid(post), {"$inc": {"views": 2}})
                await st.link(post["$id"], "author", user["$id"], reverse="posts")
                assert post["version"] == 2 and post["views"] == 2
                assert [u["$id"] for u in await st.related(post["$id"], "author")] == [user["$id"]]
                assert [p["$id"] for p in await st.find("posts", {"views": {"$gt": 1}})] == [post["$id"]]
                await s.commit()
            assert backend.items() == {1: "one"}
            # one WAL row per namespace: posts (create, update), users (create); the link's own row
            assert backend.wal() == {"posts": [2], "users": [1]} and backend.rels() == {"posts": [1]}

            async with maker() as s:
                st = pq.store(s)
                got = await st.get("posts", sqid(post))
                assert got is not None and got["views"] == 2 and got["version"] == 2
                assert [e["op"] for e in await st.history(post["$id"])] == ["CREATE", "UPDATE", "LINK"]
                links = await st.links(user["$id"], "posts", direction="inbound")
                assert len(links) == 1 and links[0]["from"] == post["$id"]
                s.add(Item(id=2, name="two"))
                gone = await st.create("posts", {"title": "rolled back"})
                await st.delete("posts", sqid(post))
                assert await st.get("posts", sqid(post)) is None
                await s.rollback()
            assert backend.items() == {1: "one"}
            assert backend.wal() == {"posts": [2], "users": [1]}
            async with maker() as s:
                st = pq.store(s)
                assert await st.get("posts", sqid(gone)) is None
                kept = await st.get("posts", sqid(post))
                assert kept is not None and kept["version"] == 2
            assert handle.get("posts", sqid(post))["views"] == 2  # type: ignore[index]
            assert handle.stats()["unflushed_events"] == 4  # 3 entity events and the link

            # an error at COMMIT (the app's own constraint) rolls the events back too
            async with maker() as s:
                await pq.store(s).create("posts", {"title": "duplicate item"})
                s.add(Item(id=1, name="clash"))
                with pytest.raises(IntegrityError):
                    await s.commit()
            assert backend.wal() == {"posts": [2], "users": [1]}
            assert len(handle.find("posts")) == 1
        finally:
            handle.close()
            await engine.dispose()

    run(main)


def test_savepoints(backend: Backend) -> None:
    async def main() -> None:
        engine = backend.engine()
        maker = async_sessionmaker(engine, expire_on_commit=False)
        handle = pq.enable(maker)
        try:
            async with maker() as s:
                st = pq.store(s)
                s.add(Item(id=1, name="outer"))
                await s.flush()  # on SQLite the session holds the write lock from here on
                outer = await st.create("posts", {"name": "outer"})
                async with s.begin_nested():  # released
                    kept = await st.create("posts", {"name": "kept"})
                    await st.update("posts", sqid(outer), {"$set": {"name": "outer, renamed"}})
                with pytest.raises(RuntimeError):
                    async with s.begin_nested():
                        dropped = await st.create("posts", {"name": "dropped"})
                        s.add(Item(id=2, name="dropped"))
                        await s.flush()
                        raise RuntimeError("roll the savepoint back")
                sp = await s.begin_nested()
                await st.update("posts", sqid(kept), {"$set": {"name": "never"}})
                await sp.rollback()
                assert await st.get("posts", sqid(dropped)) is None
                names = sorted(p["name"] for p in await st.find("posts"))
                assert names == ["kept", "outer, renamed"]
                await s.commit()
            assert backend.items() == {1: "outer"}
            assert backend.wal() == {"posts": [3]}  # create outer, create kept, update outer
            fresh = pq.ParqueDB(backend.check)  # another process's view: cold caches
            try:
                assert {p["$id"]: (p["name"], p["version"]) for p in fresh.find("posts")} == {
                    outer["$id"]: ("outer, renamed", 2),
                    kept["$id"]: ("kept", 1),
                }
                # the dropped id is never issued again
                again = fresh.create("posts", {"name": "after"})
                assert again["$id"] not in {outer["$id"], kept["$id"], dropped["$id"]}
            finally:
                fresh.close()
        finally:
            handle.close()
            await engine.dispose()

    run(main)


def test_rolled_back_ids_are_never_issued_again(backend: Backend) -> None:
    """On SQLite the session holds the write lock once it wrote: the id block is reserved
    inside its transaction (a second connection would wait on it), and the rollback raises
    the stored counter above the ids shown."""

    async def main() -> None:
        engine = backend.engine()
        maker = async_sessionmaker(engine, expire_on_commit=False)
        handle = pq.enable(maker)
        try:
            async with maker() as s:
                s.add(Item(id=1, name="x"))
                await s.flush()
                shown = [sqid(await pq.store(s).create("posts", {"n": i})) for i in range(3)]
                await s.rollback()
            async with maker() as s:
                later = sqid(await pq.store(s).create("posts", {"n": 3}))
                await s.commit()
            assert later not in shown
            assert backend.wal() == {"posts": [1]}
        finally:
            handle.close()
            await engine.dispose()
        fresh = pq.ParqueDB(backend.check)
        try:
            assert sqid(fresh.create("posts", {"n": 4})) not in {*shown, later}
        finally:
            fresh.close()

    run(main)


@pytest.mark.parametrize("mode", ["background", "inline"])
def test_flush_runs_off_the_loop(backend: Backend, mode: str) -> None:
    archive = backend.tmp / "archive"
    sql_threads: list[int] = []

    async def main() -> None:
        loop_thread = threading.get_ident()
        engine = backend.engine()
        maker = async_sessionmaker(engine, expire_on_commit=False)
        policy = pq.FlushPolicy(min_events=1, max_events=4, max_interval=0.05, mode=mode)
        handle = pq.enable(maker, archive=archive, policy=policy)
        try:

            @event.listens_for(handle.engine, "before_cursor_execute")
            def record(*_args: Any) -> None:
                sql_threads.append(threading.get_ident())

            ticks = 0

            async def ticker() -> None:  # the app's own work on the loop, while flushes run
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.001)

            app = asyncio.create_task(ticker())
            made = []
            for batch in range(3):
                async with maker() as s:
                    st = pq.store(s)
                    for i in range(4):  # max_events: this commit triggers a flush
                        made.append((await st.create("posts", {"batch": batch, "i": i}))["$id"])
                    s.add(Item(id=batch, name=f"b{batch}"))
                    await s.commit()
                for _ in range(500):
                    if handle.stats()["unflushed_events"] == 0:
                        break
                    await asyncio.sleep(0.01)
                assert handle.stats()["unflushed_events"] == 0
            app.cancel()
            flush_threads = set(sql_threads)  # before duckdb() below, which reads the manifest here
            stats = handle.stats()
            assert stats["last_flush_error"] is None  # no MissingGreenlet, no error at all
            assert ticks > 0 and len(made) == 12 and backend.items() == {0: "b0", 1: "b1", 2: "b2"}
            archived = handle.duckdb().sql("SELECT count(*), count(DISTINCT id), max(version) FROM events").fetchall()
            assert archived == [(12, 12, 1)]
            with backend.check.connect() as conn:  # one events file per commit's flush
                files = conn.execute(
                    select(ArchiveFile.first_seq, ArchiveFile.last_seq)
                    .where(ArchiveFile.kind == "events")
                    .order_by(ArchiveFile.first_seq)
                ).all()
            assert [tuple(f) for f in files] == [(1, 4), (5, 8), (9, 12)]
            if mode == "background":
                assert flush_threads and loop_thread not in flush_threads
            event.remove(handle.engine, "before_cursor_execute", record)
        finally:
            handle.close()
            await engine.dispose()

    run(main)
    assert sql_threads  # the flush ran its SQL on the store's sync engine


def test_scoped_session_handle_and_reenable(backend: Backend) -> None:
    async def main() -> None:
        engine = backend.engine()
        maker = async_sessionmaker(engine, expire_on_commit=False)
        scoped = async_scoped_session(maker, scopefunc=asyncio.current_task)
        handle = pq.enable(scoped, archive=backend.tmp / "archive")
        try:
            # async makers flush in the background by default: an inline flush would hold up the loop
            running = setup.flushing(handle.runtime)
            assert running is not None and running.scheduler.policy == pq.FlushPolicy(mode="background")
            assert pq.enable(maker) is handle and pq.handle(maker) is handle and pq.handle(scoped) is handle
            st = pq.store(scoped)
            assert isinstance(st, AsyncStore) and st.session is scoped()
            assert pq.handle(scoped()) is handle
            created = await st.create("posts", {"via": "scoped"})
            await scoped.commit()
            await scoped.remove()
            assert backend.wal() == {"posts": [1]}
            assert handle.get("posts", sqid(created))["via"] == "scoped"  # type: ignore[index]
        finally:
            handle.close()
            await engine.dispose()

    run(main)


def test_close_removes_every_listener_and_restores_the_session_class(backend: Backend) -> None:
    class AppSession(Session):
        pass

    async def main() -> None:
        engine = backend.engine()
        plain = async_sessionmaker(engine)
        custom = async_sessionmaker(engine, sync_session_class=AppSession)
        handle = pq.enable(plain)
        assert pq.enable(custom) is handle
        own_plain, own_custom = plain.kw["sync_session_class"], custom.kw["sync_session_class"]
        # each maker got a subclass of its own: no Session class another maker uses has listeners
        assert own_plain is not Session and issubclass(own_plain, Session)
        assert own_custom is not AppSession and issubclass(own_custom, AppSession)
        for name, fn in install.LISTENERS:
            assert not event.contains(Session, name, fn) and not event.contains(AppSession, name, fn)
            assert event.contains(own_plain, name, fn) and event.contains(own_custom, name, fn)
        assert len(engine.sync_engine.dispatch.commit) == 1
        derived = handle.engine
        try:
            async with custom() as s:
                assert isinstance(s.sync_session, AppSession)
                await pq.store(s).create("posts", {"n": 1})
                await s.commit()
        finally:
            pq.disable(custom)
            for name, fn in install.LISTENERS:
                assert not event.contains(own_custom, name, fn)
            assert custom.kw["sync_session_class"] is AppSession
            handle.close()
        assert_clean(plain, engine, own_plain, "unset")
        assert_clean(custom, engine, own_custom, AppSession)
        assert not any(d.engine is derived for d in db_module._derived.values())  # disposed
        async with plain() as s:
            with pytest.raises(pq.ConfigurationError):
                pq.store(s)
        # enabled again after close: works, and closes clean again
        again = pq.enable(plain)
        try:
            async with plain() as s:
                await pq.store(s).create("posts", {"n": 2})
                await s.commit()
            assert backend.wal() == {"posts": [1, 1]}
        finally:
            again.close()
        assert "sync_session_class" not in plain.kw
        await engine.dispose()

    run(main)


def test_sync_engine_given(backend: Backend) -> None:
    async def main() -> None:
        engine = backend.engine()
        maker = async_sessionmaker(engine, expire_on_commit=False)
        handle = pq.enable(maker, sync_engine=backend.check)
        try:
            assert handle.engine is backend.check and db_module._derived == {}
            async with maker() as s:
                await pq.store(s).create("posts", {"n": 1})
                await s.commit()
        finally:
            handle.close()
            await engine.dispose()
        with backend.check.connect() as conn:  # the app's engine is not disposed by us
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert backend.wal() == {"posts": [1]}

    run(main)


def test_refusals_say_why(backend: Backend, tmp_path: Path) -> None:
    async def main() -> None:
        engine = backend.engine()
        maker = async_sessionmaker(engine)
        other = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
        try:
            with pytest.raises(pq.ConfigurationError, match="sync_engine= must open the sessions' database"):
                pq.enable(maker, sync_engine=other)
            with pytest.raises(pq.ConfigurationError, match="sync Engine"):
                pq.enable(maker, sync_engine=engine)  # type: ignore[arg-type]
            with pytest.raises(pq.ConfigurationError, match="takes the AsyncEngine"):
                pq.enable(maker, engine=backend.check)
            with pytest.raises(pq.ConfigurationError, match="async_sessionmakers"):
                pq.enable(sessionmaker(backend.check), sync_engine=backend.check)
            async with engine.connect() as conn:
                with pytest.raises(pq.ConfigurationError, match="AsyncConnection"):
                    pq.enable(async_sessionmaker(conn))
            with pytest.raises(pq.ConfigurationError, match="AsyncEngine"):
                pq.enable(async_sessionmaker())
            # a failed schema step gives the derived engine back (the autouse fixture checks)
            with pytest.raises(pq.ConfigurationError, match="migrate"):
                pq.enable(maker, migrate="yes")  # type: ignore[arg-type]
            with pytest.raises(pq.ConfigurationError, match="migrate"):
                pq.ParqueDB(engine, migrate="yes")  # type: ignore[arg-type]
            assert db_module._derived == {}
            async with maker() as s:
                with pytest.raises(pq.ConfigurationError, match="enable"):
                    pq.store(s)
            assert "sync_session_class" not in maker.kw and not install._bridges
        finally:
            other.dispose()
            await engine.dispose()

    run(main)


def test_in_memory_aiosqlite_is_refused() -> None:
    async def main() -> None:
        for url in ("sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"):
            engine = create_async_engine(url)
            try:
                with pytest.raises(pq.ConfigurationError, match=r"in-memory SQLite .* Use a file"):
                    pq.enable(async_sessionmaker(engine))
                with pytest.raises(pq.ConfigurationError, match="in-memory"):
                    pq.ParqueDB(engine)
                with pytest.raises(pq.ConfigurationError, match="in-memory"):
                    AsyncParqueDB(engine)
                with pytest.raises(pq.ConfigurationError, match="in-memory"):
                    pq.enable(async_sessionmaker(engine), sync_engine=create_engine("sqlite://"))
            finally:
                await engine.dispose()
        assert db_module._derived == {} and not install._bridges

    run(main)


def test_sync_urls() -> None:
    def sync(url: str) -> str:
        return db_module.sync_url(make_url(url)).render_as_string(hide_password=False)

    assert sync("sqlite+aiosqlite:///app.db?timeout=5") == "sqlite+pysqlite:///app.db?timeout=5"
    assert (
        sync("postgresql+asyncpg://u:p@h:5/db?ssl=require&prepared_statement_cache_size=0&timeout=3")
        == "postgresql+psycopg://u:p@h:5/db?connect_timeout=3&sslmode=require"
    )
    assert sync("postgresql+psycopg://u@h/db?application_name=x") == "postgresql+psycopg://u@h/db?application_name=x"
    assert sync("postgresql+psycopg_async://u@h/db") == "postgresql+psycopg://u@h/db"
    assert sync("mysql+aiomysql://root@h/db?charset=utf8mb4") == "mysql+pymysql://root@h/db?charset=utf8mb4"
    assert sync("mysql+asyncmy://root@h/db") == "mysql+pymysql://root@h/db"
    assert sync("mariadb+aiomysql://root@h/db") == "mariadb+pymysql://root@h/db"
    with pytest.raises(pq.ConfigurationError, match="sync_engine="):
        sync("oracle+oracledb_async://u@h/db")


def test_tracked_models_under_async_session(backend: Backend) -> None:
    """pq.Tracked rows become events under an AsyncSession too: the flush and bulk-statement
    listeners fire on the sync Session inside its greenlet, on the maker's own class."""

    def changes(session: Session, obj: object) -> list[tuple[str, int, dict[str, Any]]]:
        return [(v.op, v.version, v.changes) for v in pq.history(session, obj)]

    async def main() -> None:
        engine = backend.engine()
        maker = async_sessionmaker(engine, expire_on_commit=False)
        handle = pq.enable(maker)
        try:
            async with maker() as s:
                ann = Buyer(id=1, name="ann")
                order = Purchase(id=7, qty=1, buyer=ann)
                s.add_all([ann, order])
                await s.commit()
                order.qty = 2
                await s.commit()
                with pytest.raises(RuntimeError):
                    async with s.begin_nested():
                        order.qty = 99
                        await s.flush()
                        raise RuntimeError("the savepoint's update is not recorded")
                await s.refresh(order)  # the savepoint's rollback expired it: load it on the loop
                assert order.qty == 2
                await s.execute(update(Purchase).where(Purchase.id == 7).values(qty=3))  # bulk statement
                await s.commit()
                s.add(Purchase(id=8, qty=5))
                await s.rollback()  # its CREATE is dropped with the row
                buyer_ref = f"async_buyers/{encode_id(1)}"
                assert await s.run_sync(changes, order) == [
                    ("UPDATE", 3, {"qty": (2, 3)}),
                    ("UPDATE", 2, {"qty": (1, 2)}),
                    ("LINK", 1, {"buyer": (None, buyer_ref)}),
                    ("CREATE", 1, {"id": (None, 7), "qty": (None, 1), "buyer_id": (None, 1)}),
                ]
                await s.delete(order)
                await s.commit()
                assert [(op, version) for op, version, _c in await s.run_sync(changes, order)][:2] == [
                    ("UNLINK", 4),
                    ("DELETE", 4),
                ]
            # one WAL row per namespace per commit; the savepoint and the rolled-back insert wrote none
            assert backend.wal() == {"async_buyers": [1], "async_purchases": [1, 1, 1, 1]}
            assert backend.rels() == {"async_purchases": [1, 1]}
            assert handle.find("async_purchases") == []
            assert handle.get("async_buyers", encode_id(1))["name"] == "ann"  # type: ignore[index]
        finally:
            handle.close()
            await engine.dispose()

    run(main)


# --------------------------------------------------------------------------- standalone


def test_parquedb_over_an_async_engine(backend: Backend) -> None:
    async def main() -> None:
        engine = backend.engine()
        db = pq.ParqueDB(engine, archive=backend.tmp / "archive", policy=pq.FlushPolicy(mode="manual"))
        maker = async_sessionmaker(engine, expire_on_commit=False)
        try:
            assert not db.engine.dialect.is_async
            assert db.engine.url.get_driver_name() == ("pysqlite" if backend.kind == "sqlite-file" else "psycopg")
            assert db.engine.url.database == engine.url.database
            post = db.create("posts", {"title": "sync api", "views": 1})
            db.update("posts", sqid(post), {"$inc": {"views": 1}}, expected_version=1)
            with db.transaction() as tx:
                tx.create("posts", {"title": "second", "views": 5})
            assert [p["views"] for p in db.find("posts", sort={"views": 1})] == [2, 5]
            assert backend.wal() == {"posts": [1, 1, 1]}
            # sessions of the same AsyncEngine share its derived engine, so one runtime
            handle = pq.enable(maker)
            try:
                assert handle.runtime is db.runtime and handle.engine is db.engine
                async with maker() as s:
                    got = await pq.store(s).get("posts", sqid(post))
                    assert got is not None and got["views"] == 2
            finally:
                handle.close()
            assert len(db_module._derived) == 1  # still held by db
            assert db.flush().events == 3
        finally:
            db.close()
            await engine.dispose()
        assert db_module._derived == {}

    run(main)


def test_parquedb_takes_an_async_url(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        assert db.engine.url.drivername == "sqlite+pysqlite"
        assert db.create("posts", {"n": 1})["version"] == 1
    finally:
        db.close()


def test_async_parqueDB_ops(backend: Backend) -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()
        engine = backend.engine()
        db = await AsyncParqueDB.open(engine, archive=backend.tmp / "archive", policy=pq.FlushPolicy(mode="manual"))
        sql_threads: set[int] = set()

        @event.listens_for(db.engine, "before_cursor_execute")
        def record(*_args: Any) -> None:
            sql_threads.add(threading.get_ident())

        try:
            ann = await db.create("users", {"name": "ann"})
            post = await db.create("posts", {"title": "t", "views": 0}, actor=ann["$id"])
            post = await db.update("posts", sqid(post), {"$inc": {"views": 3}}, expected_version=1)
            assert post["version"] == 2 and post["views"] == 3 and post["createdBy"] == ann["$id"]
            with pytest.raises(pq.VersionConflictError):
                await db.update("posts", sqid(post), {"$inc": {"views": 1}}, expected_version=1)
            await db.link(post["$id"], "author", ann["$id"])
            assert [u["$id"] for u in await db.related(post["$id"], "author")] == [ann["$id"]]
            assert [r["to"] for r in await db.links(post["$id"])] == [ann["$id"]]
            await db.unlink(post["$id"], "author", ann["$id"])
            assert await db.related(post["$id"], "author") == []
            assert await db.delete("posts", sqid(post)) is True
            assert await db.get("posts", sqid(post)) is None
            restored = await db.restore("posts", sqid(post))
            assert restored["version"] == 4 and restored["views"] == 3
            many = await db.create_many("tags", ({"n": i} for i in range(4)))  # below the bulk file's 5
            assert [t["n"] for t in await db.find("tags", sort={"n": -1}, limit=2)] == [3, 2]
            assert len({t["$id"] for t in many}) == 4
            ops = [e["op"] for e in await db.history(post["$id"])]
            assert ops == ["CREATE", "UPDATE", "LINK", "UNLINK", "DELETE", "RESTORE"]

            async with db.transaction() as tx:
                a = await tx.create("posts", {"title": "a"})
                await tx.update("posts", sqid(a), {"$set": {"title": "a2"}})
                assert (await tx.get("posts", sqid(a)))["title"] == "a2"  # type: ignore[index]
            with pytest.raises(RuntimeError):
                async with db.transaction() as tx:
                    b = await tx.create("posts", {"title": "b"})
                    raise RuntimeError("nothing of this block is written")
            assert await db.get("posts", sqid(b)) is None
            assert (await db.get("posts", sqid(a)))["version"] == 2  # type: ignore[index]

            # concurrent callers: distinct ids, every one committed
            made = await asyncio.gather(*(db.create("bulk", {"i": i}) for i in range(20)))
            assert len({m["$id"] for m in made}) == 20 and len(await db.find("bulk")) == 20

            wal_events = sum(n for counts in backend.wal().values() for n in counts)
            result = await db.flush()
            assert result.events == wal_events == 1 + 4 + 4 + 2 + 20 and result.rel_events == 2
            assert db.stats()["unflushed_events"] == 0
            duck = await db.duckdb()
            assert duck.sql("SELECT count(*) FROM entities WHERE ns = 'bulk'").fetchall() == [(20,)]
            assert sql_threads and loop_thread not in sql_threads  # the loop never ran SQL
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
            await db.aclose()
            await engine.dispose()

    run(main)


def test_async_parqueDB_in_memory_sqlite_runs_one_call_at_a_time() -> None:
    """`sqlite://` is one connection: concurrent calls (and an open transaction's) take turns."""

    async def main() -> None:
        async with AsyncParqueDB("sqlite://") as db:
            assert db.sync.runtime.memory

            async def in_tx() -> list[str]:
                async with db.transaction() as tx:
                    return [(await tx.create("tx", {"i": i}))["$id"] for i in range(5)]

            tx_task = asyncio.create_task(in_tx())
            singles = await asyncio.gather(*(db.create("solo", {"i": i}) for i in range(30)))
            made = await tx_task
            assert len(set(made)) == 5 and len({m["$id"] for m in singles}) == 30
            assert len(await db.find("tx")) == 5 and len(await db.find("solo")) == 30

    run(main)


def test_async_parqueDB_wraps_a_handle_and_closes_it(tmp_path: Path) -> None:
    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
        maker = async_sessionmaker(engine)
        async with AsyncParqueDB(pq.enable(maker)) as db:
            created = await db.create("posts", {"n": 1})
            async with maker() as s:
                assert (await pq.store(s).get("posts", sqid(created))) == created
        assert not install._bridges and "sync_session_class" not in maker.kw
        inner = pq.ParqueDB()
        try:
            with pytest.raises(pq.ConfigurationError, match="as it is"):
                AsyncParqueDB(inner, shared=True)
        finally:
            inner.close()
        await engine.dispose()

    run(main)


def test_async_parquedb_takes_durability(tmp_path: Path) -> None:
    async def main() -> None:
        db = await AsyncParqueDB.open(f"sqlite:///{tmp_path / 'd.db'}", durability="full")
        try:
            made = await db.create("posts", {"n": 1})
            assert (await db.get("posts", made["$id"].split("/")[1]))["n"] == 1  # type: ignore[index]
            with db.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        finally:
            await db.aclose()

    asyncio.run(main())
    with pytest.raises(pq.ConfigurationError):
        AsyncParqueDB(f"sqlite:///{tmp_path / 'e.db'}", durability="fast")  # type: ignore[arg-type]
