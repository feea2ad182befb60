"""Applications with their own Alembic (docs/migrations.md), and our env.py on the SQLite
engines applications set up.

- A throwaway host app in tmp_path (its alembic.ini with the doc's `version_locations`, the
  doc's `env.py`, a models module with one declarative model) runs exactly the shell
  commands of the doc's block marked `<!-- host-app-commands -->`, with the real alembic
  CLI; only the database URL is given, through `$DATABASE_URL` which the commands
  reference. On SQLite (file), PostgreSQL and MariaDB; the servers in a database of this
  module's own (`pqhost<worker>`), emptied before and after.
- `migrate.upgrade/current/downgrade` on a default SQLite engine, one set up with
  SQLAlchemy's pysqlite savepoint recipe and an AUTOCOMMIT one; a failing revision's DDL
  rolls back on each.
- `migrate.schema_status`: read-only, and what it reports.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import alembic
import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from backends import MY_ADMIN, PG_ADMIN, server_url
from sqlalchemy import event

from parquedb_orm import migrate
from parquedb_orm.sql.migrations import _our_revisions
from parquedb_orm.sql.models import metadata

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "migrations.md"
HEAD = migrate.heads()[0]
HOST_DB = "pqhost" + os.environ.get("PYTEST_XDIST_WORKER", "")
PACKAGE_NOTATION = "parquedb_orm:migrations/versions"

MODELS = """
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
"""
#: The message of a revision made without naming its head (refused).
UNNAMED = "pq-test-unnamed-head"
#: What the app changes before each later revision: one more column.
NEW_COLUMN = "    note{n}: Mapped[str | None] = mapped_column(String(200), nullable=True)\n"


# --------------------------------------------------------------------------- the doc


def doc_block(marker: str) -> tuple[str, str]:
    """(language, text) of the fenced block right after `<!-- marker -->` in docs/migrations.md."""
    found = re.search(rf"<!-- {re.escape(marker)} -->\s*```(\w+)\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert found, f"docs/migrations.md has no fenced block after <!-- {marker} -->"
    return found.group(1), found.group(2)


def doc_commands() -> list[str]:
    lang, text = doc_block("host-app-commands")
    assert lang == "sh"
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert commands and all("$DATABASE_URL" in c for c in commands), "every command must name $DATABASE_URL"
    return commands


def test_doc_commands_name_every_revision_head() -> None:
    """The documented revisions never leave the head (and so the folder) to Alembic's choice."""
    revisions = [shlex.split(c) for c in doc_commands() if " revision " in c]
    assert len(revisions) >= 2
    first, *later = revisions
    assert first[first.index("--head") + 1] == "base" and "--branch-label" in first and "--version-path" in first
    label = first[first.index("--branch-label") + 1]
    for argv in later:
        assert argv[argv.index("--head") + 1] == f"{label}@head"


# --------------------------------------------------------------------------- the host app


def our_versions() -> Path:
    return Path(migrate.version_locations()[0])


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.py")}


def build_app(root: Path) -> None:
    (root / "alembic" / "versions").mkdir(parents=True)
    (root / "myapp").mkdir()
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "models.py").write_text(MODELS)
    template = Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako"
    (root / "alembic" / "script.py.mako").write_text(template.read_text())
    lang, env_py = doc_block("host-app-env")
    assert lang == "python"
    (root / "alembic" / "env.py").write_text(env_py)
    lang, ini = doc_block("host-app-ini")
    assert lang == "ini" and PACKAGE_NOTATION in ini
    if not (resources.files("parquedb_orm") / "migrations" / "versions").is_dir():
        ini = ini.replace(PACKAGE_NOTATION, str(our_versions()))  # an editable install: no folder in the package
    (root / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/alembic\nprepend_sys_path = .\n" + ini + "\n"
    )


def run_doc_command(
    command: str, root: Path, url: str, *, fail_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    """One documented command, as a shell runs it, `alembic` being this interpreter's.

    `fail_at`: a checkpoint of our revisions at which to fail (then the command must fail).
    """
    script = 'alembic() { "$PQ_TEST_PYTHON" -m alembic "$@"; }\n' + command
    env = {**os.environ, "DATABASE_URL": url, "PQ_TEST_PYTHON": sys.executable}
    env.pop(migrate.FAIL_AT_ENV, None)
    if fail_at is not None:
        env[migrate.FAIL_AT_ENV] = fail_at
    done = subprocess.run(
        ["/bin/sh", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    output = f"{command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
    if fail_at is not None:
        assert done.returncode != 0 and "InjectedFailure" in done.stderr, output
    else:
        assert done.returncode == 0, output
    assert "Multiple heads" not in done.stdout + done.stderr
    return done


def _drop_all(url: str) -> None:
    eng = sa.create_engine(url)
    try:
        md = sa.MetaData()
        md.reflect(eng)
        md.drop_all(eng)
    finally:
        eng.dispose()


def host_db_url(kind: str) -> str:
    """A database of this module's own on the server (reachability as tests/backends.py sees it)."""
    server_url(kind)  # skips locally, fails under CI, when the server is unreachable
    admin = PG_ADMIN if kind == "postgresql" else MY_ADMIN
    eng = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with eng.connect() as conn:
            if kind == "postgresql":
                if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname=:n"), {"n": HOST_DB}).first():
                    conn.execute(sa.text(f'CREATE DATABASE "{HOST_DB}"'))
            else:
                conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{HOST_DB}`"))
    finally:
        eng.dispose()
    return sa.make_url(admin).set(database=HOST_DB).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def host_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    url = host_db_url(request.param)
    _drop_all(url)
    yield url
    _drop_all(url)


def test_host_app_follows_the_doc(host_url: str, tmp_path: Path) -> None:
    root = tmp_path / "app"
    build_app(root)
    package_before = listing(our_versions())
    messages = [shlex.split(c)[shlex.split(c).index("-m") + 1] for c in doc_commands() if " -m " in c]
    eng = sa.create_engine(host_url)
    try:
        # The doc's env.py: a revision that fails half way is rolled back, DDL included
        # (except on MariaDB, where DDL commits at once), and the next upgrade completes it.
        run_doc_command(doc_commands()[0], root, host_url, fail_at="pq0002:mid")
        with eng.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            versions = set(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
        assert versions == {"pq0001"} and {"event_batches", "relationships"} <= tables
        if eng.dialect.name != "mysql":
            assert not tables & {"counters", "entity_snapshots", "archive_manifest"}
    finally:
        eng.dispose()
    try:
        revisions = 0
        for command in doc_commands():
            if " revision " in command:
                if revisions:  # a later revision: the app changed its models first
                    with (root / "myapp" / "models.py").open("a") as f:
                        f.write(NEW_COLUMN.format(n=revisions))
                revisions += 1
            run_doc_command(command, root, host_url)
            assert listing(our_versions()) == package_before, f"{command!r} wrote into our package"
        # What the doc warns about: a revision that does not name its head is refused.
        plain = subprocess.run(
            [sys.executable, "-m", "alembic", "-x", f"url={host_url}", "revision", "--autogenerate", "-m", UNNAMED],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert plain.returncode != 0 and "Multiple heads" in plain.stdout + plain.stderr
    finally:  # never leave an app's revision in our folder, whatever failed
        for name in listing(our_versions()) - package_before:
            path = our_versions() / name
            if any(m in path.read_text() for m in [*messages, UNNAMED]):
                path.unlink()

    # The app's revisions are in the app's folder: one branch of its own, beside ours.
    cfg = Config(str(root / "alembic.ini"))
    script = ScriptDirectory.from_config(cfg)
    app_head = script.get_revision("app@head")
    assert app_head is not None and set(script.get_heads()) == {HEAD, app_head.revision}
    app_revs = [s for s in script.walk_revisions() if s.revision not in _our_revisions()]
    assert len(app_revs) == revisions
    assert {Path(s.path).resolve().parent for s in app_revs} == {(root / "alembic" / "versions").resolve()}
    assert listing(root / "alembic" / "versions") == {Path(s.path).name for s in app_revs}
    assert f"note{revisions - 1}" in Path(app_head.path).read_text()

    # One version table, the app's, holding both heads; the app's table and ours exist.
    eng = sa.create_engine(host_url)
    try:
        with eng.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            columns = {c["name"] for c in sa.inspect(conn).get_columns("orders")}
            versions = set(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
        assert set(metadata.tables) | {"orders", "alembic_version"} <= tables
        assert migrate.VERSION_TABLE not in tables
        assert columns == {"id", "item", *(f"note{n}" for n in range(1, revisions))}
        assert versions == {HEAD, app_head.revision}
        status = migrate.schema_status(eng)
    finally:
        eng.dispose()
    assert status.owner == "host" and status.at_head
    assert status.host_revisions == (HEAD,) and status.host_other_revisions == (app_head.revision,)
    assert status.tables == frozenset(metadata.tables) and not status.legacy


# --------------------------------------------------------------------------- our env.py on SQLite engines


def _savepoint_recipe(url: str) -> sa.Engine:
    """https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl"""
    eng = sa.create_engine(url)

    @event.listens_for(eng, "connect")
    def _connect(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(eng, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return eng


SQLITE_ENGINES: dict[str, Callable[[str], sa.Engine]] = {
    "default": sa.create_engine,
    "savepoint-recipe": _savepoint_recipe,
    "autocommit": lambda url: sa.create_engine(url, isolation_level="AUTOCOMMIT"),
}


def _tables(eng: sa.Engine) -> set[str]:
    with eng.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def _connection_state(conn: sa.Connection) -> tuple[object, int, bool]:
    return conn.connection.driver_connection.isolation_level, len(conn.dispatch.begin), conn.in_transaction()  # type: ignore[union-attr]


@pytest.mark.parametrize("setup", sorted(SQLITE_ENGINES))
def test_our_env_on_sqlite_engines(setup: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = SQLITE_ENGINES[setup](f"sqlite:///{tmp_path / 'store.db'}")
    with eng.connect() as conn:
        state = _connection_state(conn)

    # pq0002 fails after creating its three tables: they are gone, pq0001 stays applied.
    monkeypatch.setenv(migrate.FAIL_AT_ENV, "pq0002:mid")
    with pytest.raises(migrate.InjectedFailure):
        migrate.upgrade(eng)
    assert migrate.current(eng) == ("pq0001",)
    tables = _tables(eng)
    assert {"event_batches", "relationships", "events_wal", "rels_wal"} <= tables
    assert not tables & {"counters", "entity_snapshots", "archive_manifest"}

    monkeypatch.delenv(migrate.FAIL_AT_ENV)
    migrate.upgrade(eng)
    assert migrate.current(eng) == (HEAD,)
    assert set(metadata.tables) <= _tables(eng)

    # pq0004's downgrade fails after re-creating event_batches: it is gone again.
    monkeypatch.setenv(migrate.FAIL_AT_ENV, "pq0004-down:mid")
    with pytest.raises(migrate.InjectedFailure):
        migrate.downgrade(eng, "pq0001")
    assert migrate.current(eng) == ("pq0004",)  # pq0005 went down (its own transaction), pq0004 did not
    assert "event_batches" not in _tables(eng)

    monkeypatch.delenv(migrate.FAIL_AT_ENV)
    migrate.downgrade(eng, "base")
    assert migrate.current(eng) == ()
    assert _tables(eng) & migrate.OWNED_TABLES == {migrate.VERSION_TABLE}

    # On a caller's Connection too; it is left as it was, and so is the engine.
    with eng.connect() as conn:
        assert _connection_state(conn) == state
        migrate.upgrade(conn)
        assert _connection_state(conn) == state
        assert migrate.current(conn) == (HEAD,)
    with eng.begin() as conn:  # the engine's own transactions still work (savepoints in the recipe)
        conn.exec_driver_sql("CREATE TABLE app_t (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO app_t VALUES (1)")
        if setup == "savepoint-recipe":
            with conn.begin_nested() as sp:
                conn.exec_driver_sql("INSERT INTO app_t VALUES (2)")
                sp.rollback()
    with eng.connect() as conn:
        assert _connection_state(conn) == state
        assert conn.exec_driver_sql("SELECT x FROM app_t").scalars().all() == [1]
    eng.dispose()


# --------------------------------------------------------------------------- schema_status


def test_schema_status_missing_file_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    for target in (f"sqlite:///{db}", sa.make_url(f"sqlite:///{db}"), f"sqlite:///file:{db}?mode=ro&uri=true"):
        status = migrate.schema_status(target)
        assert not status.exists and status.owner is None and not status.at_head
        assert status.missing_tables == frozenset(metadata.tables)
    eng = sa.create_engine(f"sqlite:///{db}")
    assert not migrate.schema_status(eng).exists
    eng.dispose()
    assert not db.exists()


def test_schema_status_reports_where_the_database_stands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    eng = sa.create_engine(url)
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE app_t (x INTEGER)")
    fresh = migrate.schema_status(url)
    assert fresh.exists and fresh.owner is None and not fresh.at_head and fresh.tables == frozenset()

    migrate.upgrade(eng, "pq0001")
    legacy = migrate.schema_status(eng)
    assert legacy.owner == "parquedb" and legacy.parquedb_revisions == ("pq0001",) and not legacy.at_head
    assert legacy.legacy and legacy.legacy_tables == {"event_batches", "relationships"}
    assert legacy.tables == {"events_wal", "rels_wal"}

    migrate.upgrade(eng)
    ours = migrate.schema_status(eng)
    assert ours.owner == "parquedb" and ours.at_head and ours.revisions == (HEAD,) and ours.heads == (HEAD,)
    assert not ours.legacy and not ours.missing_tables and ours.host_revisions == ()

    # Our head recorded in the host's table as well: both own it, which is not "at head".
    with eng.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.exec_driver_sql(f"INSERT INTO alembic_version VALUES ('{HEAD}'), ('app0001')")
    both = migrate.schema_status(eng)
    assert both.owner == "both" and not both.at_head
    assert both.host_revisions == (HEAD,) and both.host_other_revisions == ("app0001",)
    assert migrate.schema_status(eng, host_version_table="other_version").owner == "parquedb"

    with eng.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {migrate.VERSION_TABLE}")
    host = migrate.schema_status(eng)
    assert host.owner == "host" and host.at_head and host.parquedb_revisions == ()

    # Read-only, on a caller's Connection: no write, no transaction left open (or closed).
    with eng.connect() as conn:
        changes = conn.connection.driver_connection.total_changes  # type: ignore[union-attr]
        assert migrate.schema_status(conn) == host
        assert not conn.in_transaction()
        assert conn.connection.driver_connection.total_changes == changes  # type: ignore[union-attr]
        with conn.begin():
            assert migrate.schema_status(conn) == host
            assert conn.in_transaction()
    eng.dispose()
