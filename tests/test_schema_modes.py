"""`enable(..., migrate=...)` / `ParqueDB(..., migrate=...)`: who owns the schema step.

Never two version tables for one schema: when the host app's Alembic records our
revisions, the library only verifies; "check" never writes; False does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import make_engine, reset_schema
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import sessionmaker

import parquedb_orm as pq
from parquedb_orm import migrate
from parquedb_orm.sql.models import metadata


@pytest.fixture(params=["sqlite-file", "postgresql", "mysql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(request.param, tmp_path)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    yield engine
    reset_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def host_records(engine: Engine, revision: str) -> None:
    """What `alembic upgrade heads` leaves in an app whose Alembic runs our revisions."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES (:r), ('app0001')"), {"r": revision})


def test_check_never_writes_and_names_the_command(engine: Engine) -> None:
    with pytest.raises(pq.ConfigurationError, match="parquedb upgrade"):
        pq.enable(sessionmaker(engine), migrate="check")
    assert not tables(engine) & (set(metadata.tables) | {migrate.VERSION_TABLE})
    migrate.upgrade(engine)
    handle = pq.enable(sessionmaker(engine), migrate="check")
    handle.close()


def test_false_does_nothing(engine: Engine) -> None:
    db = pq.ParqueDB(engine, migrate=False)
    db.close()
    assert not tables(engine) & (set(metadata.tables) | {migrate.VERSION_TABLE})


def test_auto_creates_when_nobody_owns_it(engine: Engine) -> None:
    handle = pq.enable(sessionmaker(engine))
    handle.close()
    assert migrate.schema_status(engine).owner == "parquedb"


def test_auto_only_verifies_when_the_hosts_alembic_owns_it(engine: Engine) -> None:
    host_records(engine, migrate.heads()[0])
    maker = sessionmaker(engine)
    handle = pq.enable(maker)  # "auto": the host records our head, so nothing is written
    try:
        with maker() as s:
            pq.store(s).create("posts", {"n": 1})
            s.commit()
    finally:
        handle.close()
    assert migrate.VERSION_TABLE not in tables(engine)  # never a second version table
    assert migrate.schema_status(engine).owner == "host"


def test_host_owned_and_behind_says_run_your_alembic(engine: Engine) -> None:
    host_records(engine, "pq0003")
    for mode in ("auto", "check"):
        with pytest.raises(pq.ConfigurationError, match="alembic upgrade heads"):
            pq.enable(sessionmaker(engine), migrate=mode)  # type: ignore[arg-type]
    assert migrate.VERSION_TABLE not in tables(engine)


def test_both_version_tables_is_refused(engine: Engine) -> None:
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES (:r)"), {"r": migrate.heads()[0]})
    with pytest.raises(pq.ConfigurationError, match="keep one"):
        pq.ParqueDB(engine)
