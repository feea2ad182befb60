"""Durability, stated truthfully (docs/durability.md).

- the URL form gets what `durability=` says, on every connection the store uses (its
  engine's and the side pool's it takes id blocks from);
- an engine the user made keeps its settings, and the logger "parquedb_orm" says once per
  engine what they imply; a `durability=` they do not give is refused;
- `sqlite_settings()` gives a user's engine our settings, on new and pooled connections;
- PostgreSQL and MariaDB: the server's settings are read and said, never changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import make_engine
from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

import parquedb_orm as pq
from parquedb_orm.engine.setup import sqlite_settings
from parquedb_orm.errors import ConfigurationError
from parquedb_orm.sql import durability

SYNC = {"normal": 1, "full": 2}


def pragmas(engine: Engine) -> tuple[str, int]:
    with engine.connect() as conn:
        return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()), int(
            conn.exec_driver_sql("PRAGMA synchronous").scalar() or 0
        )


def lines(caplog: pytest.LogCaptureFixture, engine: Engine) -> list[logging.LogRecord]:
    """The records of logger "parquedb_orm" about this engine."""
    url = engine.url.render_as_string(hide_password=True)
    return [r for r in caplog.records if r.name == "parquedb_orm" and f"engine {url}:" in r.getMessage()]


def own_pragmas(url: str, *statements: str) -> Engine:
    """A user's engine with their own connect listener."""
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def apply(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        for statement in statements:
            cur.execute(statement)
        cur.close()

    return engine


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="parquedb_orm")
    yield caplog


# --------------------------------------------------------------------------- the URL form


@pytest.mark.parametrize("given", [None, "normal", "full"])
def test_the_url_form_gets_what_durability_says(tmp_path: Path, given: str | None, info_logs: Any) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 'a.db'}", durability=given)
    try:
        db.create("posts", {"n": 1})  # takes an id block on the side pool
        side = db.runtime.ids.engine
        assert side is not db.engine
        want = ("wal", SYNC[given or "normal"])
        assert pragmas(db.engine) == want
        assert pragmas(side) == want
        with side.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        # our own settings, read back as set: nothing above DEBUG
        said = lines(info_logs, db.engine)
        assert [r.levelno for r in said] == [logging.DEBUG]
        assert ("synchronous=FULL" if given == "full" else "synchronous=NORMAL") in said[0].getMessage()
    finally:
        db.close()


def test_the_async_url_form_gets_it_too(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", durability="full")
    try:
        db.create("posts", {"n": 1})
        assert pragmas(db.engine) == ("wal", 2)
        assert pragmas(db.runtime.ids.engine) == ("wal", 2)
    finally:
        db.close()


def test_an_in_memory_url_takes_no_durability() -> None:
    with pytest.raises(ConfigurationError, match="in-memory"):
        pq.ParqueDB("sqlite://", durability="normal")
    db = pq.ParqueDB("sqlite://")  # without one it is what it always was
    db.close()


# --------------------------------------------------------------------------- the user's engine


def test_a_users_engine_keeps_its_settings(tmp_path: Path) -> None:
    engine = own_pragmas(f"sqlite:///{tmp_path / 'u.db'}", "PRAGMA journal_mode=DELETE", "PRAGMA synchronous=FULL")
    Session = sessionmaker(engine)
    handle = pq.enable(Session)
    db = pq.ParqueDB(engine)
    try:
        with Session() as s:
            pq.store(s).create("posts", {"n": 1})
            s.commit()
        db.create("posts", {"n": 2})
        assert pragmas(engine) == ("delete", 2)
        assert pragmas(db.runtime.ids.engine) == ("delete", 2)  # the side pool copies the user's listener
    finally:
        db.close()
        handle.close()
        engine.dispose()


def test_a_plain_engine_keeps_sqlites_defaults(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    before = pragmas(engine)
    db = pq.ParqueDB(engine)
    try:
        db.create("posts", {"n": 1})
        assert pragmas(engine) == before
        assert pragmas(db.runtime.ids.engine) == before
    finally:
        db.close()
        engine.dispose()


def test_one_line_per_engine_says_what_its_settings_imply(tmp_path: Path, info_logs: Any) -> None:
    slow = own_pragmas(f"sqlite:///{tmp_path / 's.db'}", "PRAGMA journal_mode=DELETE", "PRAGMA synchronous=FULL")
    fast = own_pragmas(f"sqlite:///{tmp_path / 'f.db'}", "PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")
    try:
        for _ in range(2):
            pq.ParqueDB(slow).close()
        handle = pq.enable(sessionmaker(slow))
        handle.close()
        pq.ParqueDB(fast).close()
        pq.ParqueDB(fast).close()

        [line] = lines(info_logs, slow)
        assert line.levelno == logging.WARNING  # less durable than WAL+FULL, and slower
        text = line.getMessage()
        assert "journal_mode=delete, synchronous=FULL" in text
        assert "a power loss soon after a commit may roll it back" in text
        assert "slower: a rollback journal syncs several times per commit" in text
        assert "pq.sqlite_settings(engine)" in text

        [line] = lines(info_logs, fast)
        assert line.levelno == logging.INFO
        assert line.getMessage().endswith(
            "journal_mode=wal, synchronous=NORMAL: each commit survives a crash of the process; "
            "the last commits may be lost on power loss or OS crash"
        )
    finally:
        slow.dispose()
        fast.dispose()


@pytest.mark.parametrize(
    ("journal", "sync", "level", "means"),
    [
        ("WAL", "FULL", "full", "each commit durable on power loss"),
        ("TRUNCATE", "FULL", "full", "each commit durable on power loss; slower: a rollback journal"),
        ("DELETE", "EXTRA", "full", "each commit durable on power loss; slower: a rollback journal"),
        ("DELETE", "NORMAL", "normal", "the last commits may be lost on power loss or OS crash"),
        ("WAL", "OFF", None, "an OS crash or power loss can corrupt the database"),
        ("MEMORY", "FULL", None, "a crash in the middle of a write can corrupt the database"),
    ],
)
def test_what_each_sqlite_setting_gives(tmp_path: Path, journal: str, sync: str, level: str | None, means: str) -> None:
    statements = (f"PRAGMA journal_mode={journal}", f"PRAGMA synchronous={sync}")
    engine = own_pragmas(f"sqlite:///{tmp_path / 'x.db'}", *statements)
    try:
        reading = durability.read(engine)
        assert reading.settings == f"journal_mode={journal.lower()}, synchronous={sync}"
        assert reading.level == level
        assert means in reading.means
    finally:
        engine.dispose()


def test_an_in_memory_engine_of_the_users(info_logs: Any) -> None:
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    try:
        with pytest.raises(ConfigurationError, match="in-memory"):
            pq.ParqueDB(engine, durability="normal")
        pq.ParqueDB(engine).close()
        [line] = lines(info_logs, engine)
        assert line.levelno == logging.INFO and "no commit outlives the process" in line.getMessage()
    finally:
        engine.dispose()


def test_a_durability_the_users_engine_does_not_give_is_refused(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")  # SQLite's defaults: delete journal, FULL
    try:
        with pytest.raises(ConfigurationError, match=r'pq\.sqlite_settings\(engine, durability="full"\)'):
            pq.ParqueDB(engine, durability="full")
        with pytest.raises(ConfigurationError, match='durability="full" asked'):
            pq.enable(sessionmaker(engine), durability="full")
        assert inspect(engine).get_table_names() == []  # refused before the schema step
        pq.ParqueDB(engine, durability="normal").close()  # it gives that much (slowly)
        sqlite_settings(engine, durability="full")
        db = pq.ParqueDB(engine, durability="full")
        try:
            db.create("posts", {"n": 1})
            assert pragmas(engine) == ("wal", 2)
        finally:
            db.close()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the helper


def test_the_helper_sets_new_and_pooled_connections(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'h.db'}")
    try:
        with engine.connect() as conn:
            pooled = conn.connection.driver_connection
        held = engine.connect()  # checked out while the helper is applied
        assert held.connection.driver_connection is pooled
        assert pragmas(engine)[1] == 2  # a second connection, SQLite's default FULL

        assert sqlite_settings(engine) is engine
        with engine.connect() as conn:  # a pooled connection, at its next checkout
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        fresh = engine.connect()  # a new one, with `held` still out
        assert fresh.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert fresh.connection.driver_connection is not pooled
        held.close()
        fresh.close()
        with engine.connect() as a, engine.connect() as b:
            assert {a.connection.driver_connection, b.connection.driver_connection} >= {pooled}
            for conn in (a, b):
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1

        sqlite_settings(engine, durability="full")  # again, with another durability
        with engine.connect() as a, engine.connect() as b:
            for conn in (a, b):
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    finally:
        engine.dispose()


def test_the_helper_reaches_an_open_stores_side_pool(tmp_path: Path) -> None:
    engine = sqlite_settings(create_engine(f"sqlite:///{tmp_path / 'o.db'}"))
    db = pq.ParqueDB(engine)
    try:
        db.create("posts", {"n": 1})
        assert pragmas(db.runtime.ids.engine) == ("wal", 1)
        sqlite_settings(engine, durability="full")
        assert pragmas(db.runtime.ids.engine) == ("wal", 2)
        assert pragmas(engine) == ("wal", 2)
    finally:
        db.close()
        engine.dispose()
    late = create_engine(f"sqlite:///{tmp_path / 'late.db'}")
    db = pq.ParqueDB(late)  # its side pool exists before the helper runs
    try:
        sqlite_settings(late, durability="full")
        db.create("posts", {"n": 1})
        assert pragmas(db.runtime.ids.engine) == ("wal", 2)
    finally:
        db.close()
        late.dispose()


def test_the_helper_on_an_async_engines_sync_side(tmp_path: Path) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> list[tuple[int, str]]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
        seen = []
        try:
            async with engine.connect() as conn:  # pooled before the helper
                await conn.exec_driver_sql("SELECT 1")
            sqlite_settings(engine.sync_engine, durability="full")
            async with engine.connect() as a, engine.connect() as b:
                for conn in (a, b):
                    sync = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
                    journal = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                    seen.append((int(sync or 0), str(journal)))
        finally:
            await engine.dispose()
        return seen

    assert asyncio.run(run()) == [(2, "wal"), (2, "wal")]


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("bad", ["fast", "FULL", "", 1, True, ("full",)])
def test_bad_durability_values_are_typed_errors(tmp_path: Path, bad: Any) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    with pytest.raises(ConfigurationError, match='durability must be "normal" or "full"'):
        pq.ParqueDB(url, durability=bad)
    engine = create_engine(url)
    try:
        with pytest.raises(ConfigurationError, match='durability must be "normal" or "full"'):
            pq.ParqueDB(engine, durability=bad)
        with pytest.raises(ConfigurationError, match='durability must be "normal" or "full"'):
            pq.enable(sessionmaker(engine), durability=bad)
        with pytest.raises(ConfigurationError, match='durability must be "normal" or "full"'):
            sqlite_settings(engine, durability=bad)
    finally:
        engine.dispose()
    assert not (tmp_path / "b.db").exists()  # refused before anything connected


def test_the_helper_refuses_what_it_cannot_set() -> None:
    with pytest.raises(ConfigurationError, match="takes an Engine"):
        sqlite_settings("sqlite:///x.db")  # type: ignore[arg-type]
    memory = create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="in-memory"):
        sqlite_settings(memory)
    memory.dispose()
    server = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connected
    with pytest.raises(ConfigurationError, match="never changes them"):
        sqlite_settings(server)
    server.dispose()


# --------------------------------------------------------------------------- servers


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_servers_settings_are_said_not_changed(kind: str, tmp_path: Path, info_logs: Any) -> None:
    engine = make_engine(kind, tmp_path)
    try:
        before = durability.read(engine)
        db = pq.ParqueDB(engine)
        db.close()
        handle = pq.enable(sessionmaker(engine))
        handle.close()
        [line] = lines(info_logs, engine)
        text = line.getMessage()
        knob = "synchronous_commit=" if kind == "postgresql" else "innodb_flush_log_at_trx_commit="
        assert knob in text and "the store never changes them" in text
        assert line.levelno == (logging.INFO if before.level is not None else logging.WARNING)
        assert durability.read(engine) == before
        if before.level is not None:
            pq.ParqueDB(engine, durability=before.level).close()  # what the server gives is accepted
        with pytest.raises(ConfigurationError, match="never changes them"):
            sqlite_settings(engine)
    finally:
        engine.dispose()


def test_postgresql_commits_that_a_crash_can_take_back(tmp_path: Path, info_logs: Any) -> None:
    """synchronous_commit=off for the user's sessions (their choice, per connection): below
    "normal", said as a WARNING, and a durability= is refused with the setting to change."""
    base = make_engine("postgresql", tmp_path)
    engine = create_engine(base.url, pool_pre_ping=True)
    base.dispose()

    @event.listens_for(engine, "connect")
    def off(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("SET synchronous_commit TO off")
        cur.close()
        dbapi_connection.commit()

    try:
        with pytest.raises(ConfigurationError, match="Set synchronous_commit=on and fsync=on on the server"):
            pq.ParqueDB(engine, durability="normal")
        pq.ParqueDB(engine).close()
        [line] = lines(info_logs, engine)
        assert line.levelno == logging.WARNING
        assert "synchronous_commit=off" in line.getMessage()
        assert "the last commits may be lost on a crash of the server" in line.getMessage()
    finally:
        engine.dispose()


def test_compaction_commits_durably_whatever_the_setting(tmp_path: Path) -> None:
    """A compaction deletes the files it merged right after its commit: that commit runs
    with synchronous=FULL (a power loss cannot bring back a manifest listing deleted files),
    and the connection gets its own setting back."""
    from sqlalchemy import event

    db = pq.ParqueDB(
        f"sqlite:///{tmp_path / 'c.db'}", archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual")
    )
    try:
        for i in range(3):
            db.create("posts", {"n": i})
            db.flush()
        seen: list[str] = []

        def record(_conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
            if statement.startswith("PRAGMA synchronous") or "archive_manifest" in statement:
                seen.append(statement.split(" WHERE")[0].split("(")[0].strip())

        event.listen(db.engine, "before_cursor_execute", record)
        try:
            assert db.compact() == 2  # the events files and the entities files of posts, each merged into one
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
        first_full = seen.index("PRAGMA synchronous=FULL")
        assert any(s.startswith("DELETE FROM archive_manifest") for s in seen[first_full:])
        assert seen[-1] == "PRAGMA synchronous=1"  # back to NORMAL after the commit
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert len(db.find("posts")) == 3
    finally:
        db.close()
