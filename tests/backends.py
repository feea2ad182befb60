"""Database backends for the contract tests: SQLite (memory, file), PostgreSQL, MariaDB.

Server backends use dedicated databases (`pqtest`) so they never collide with other
suites using `test`. Locally an unreachable server skips; with PARQUEDB_REQUIRE_SERVERS=1
(set by .ci/run) or CI=true it fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from parquedb_orm.sql import dialects
from parquedb_orm.sql.legacy import legacy_metadata
from parquedb_orm.sql.models import metadata

PG_ADMIN = os.environ.get("PARQUEDB_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_ADMIN = os.environ.get("PARQUEDB_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
DB_NAME = "pqtest" + os.environ.get("PYTEST_XDIST_WORKER", "")


def servers_required() -> bool:
    return os.environ.get("PARQUEDB_REQUIRE_SERVERS") == "1" or os.environ.get("CI", "").lower() == "true"


def _unavailable(what: str, exc: Exception) -> None:
    msg = f"{what} unreachable: {exc}"
    if servers_required():
        pytest.fail(msg + " (servers are required under CI)")
    pytest.skip(msg)


def server_url(kind: str) -> str:
    """URL of a dedicated test database on the server, created if missing."""
    admin = PG_ADMIN if kind == "postgresql" else MY_ADMIN
    try:
        eng = create_engine(admin, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            if kind == "postgresql":
                exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname=:n"), {"n": DB_NAME}).first()
                if not exists:
                    conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
            else:
                conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{DB_NAME}`"))
        eng.dispose()
    except Exception as exc:
        _unavailable(kind, exc)
    return admin.rsplit("/", 1)[0] + "/" + DB_NAME


def reset_schema(engine: Engine) -> None:
    legacy_metadata.drop_all(engine)
    metadata.drop_all(engine)
    with engine.begin() as conn:
        for table in ("parquedb_alembic_version", "parquedb_migration_provenance"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


def make_engine(kind: str, tmp_path: Path) -> Engine:
    if kind == "sqlite-memory":
        return dialects.create_engine_for("sqlite://")
    if kind == "sqlite-file":
        return dialects.create_engine_for(f"sqlite:///{tmp_path / 'store.db'}")
    engine = create_engine(server_url(kind), pool_pre_ping=True)
    reset_schema(engine)
    return engine


@contextlib.contextmanager
def backend_engine(kind: str, tmp_path: Path, app_metadata: Any = None) -> Iterator[Engine]:
    """A test's engine on `kind`: the app's tables (if given) created fresh, and the server
    database left clean afterwards (SQLite files go with tmp_path)."""
    engine = make_engine(kind, tmp_path)
    if app_metadata is not None:
        app_metadata.drop_all(engine)
        app_metadata.create_all(engine)
    try:
        yield engine
    finally:
        if not kind.startswith("sqlite"):
            if app_metadata is not None:
                app_metadata.drop_all(engine)
            reset_schema(engine)
        engine.dispose()


def url_of(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite-file":
        return f"sqlite:///{tmp_path / 'store.db'}"
    if kind == "sqlite-memory":
        raise ValueError("an in-memory database has no URL another process can open")
    return server_url(kind)


def wal_left(engine: Engine) -> dict[str, list[tuple[str, int, bool]]]:
    """What a flush left in the WAL tables: table -> [(ns, first_seq, flushed)]. A flush keeps
    each namespace's newest row (a writer with stale numbers must still find it), flushed."""
    from sqlalchemy import select

    from parquedb_orm.sql.models import Counter, EventsWal, RelsWal

    out: dict[str, list[tuple[str, int, bool]]] = {}
    with engine.connect() as conn:
        marks = {name: value for name, value in conn.execute(select(Counter.name, Counter.value))}
        for model, prefix in ((EventsWal, "seq:"), (RelsWal, "rseq:")):
            rows = conn.execute(select(model.ns, model.first_seq, model.last_seq).order_by(model.ns, model.first_seq))
            out[model.__tablename__] = [(ns, f, last <= marks.get(prefix + ns, 0)) for ns, f, last in rows]
    return out


def assert_wal_flushed(engine: Engine) -> None:
    """Everything flushed: what is left is flushed, and it is each namespace's newest row or a
    young one a flush keeps because it may be another writer's next number (sql/wal.py
    RETAIN_SECONDS: a process that flushes rows it did not write keeps the young ones)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from parquedb_orm.sql import wal
    from parquedb_orm.sql.models import EventsWal, RelsWal

    # generous: the rows were written by the test a moment ago, on a machine that may be slow
    young = datetime.now(UTC) - timedelta(seconds=wal.RETAIN_SECONDS + 120)
    with engine.connect() as conn:
        stamps = {
            (model.__tablename__, ns, first): when if when.tzinfo else when.replace(tzinfo=UTC)
            for model in (EventsWal, RelsWal)
            for ns, first, when in conn.execute(select(model.ns, model.first_seq, model.created_at))
        }
    for table, rows in wal_left(engine).items():
        assert all(flushed for _ns, _f, flushed in rows), (table, rows)
        newest = {ns: first for ns, first, _fl in rows}  # ordered by first_seq
        old = [(ns, f) for ns, f, _fl in rows if f != newest[ns] and stamps[(table, ns, f)] < young]
        assert not old, (table, rows, old)


def backend_fixtures(backends: list[str]) -> tuple[Any, Any]:
    """The `kind` (parametrized over `backends`) and `engine` fixtures of a test module
    that runs on several backends: `kind, engine = backend_fixtures(BACKENDS)`."""

    @pytest.fixture(params=backends)
    def kind(request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def engine(kind: str, tmp_path: Path) -> Iterator[Engine]:
        with backend_engine(kind, tmp_path) as eng:
            yield eng

    return kind, engine

