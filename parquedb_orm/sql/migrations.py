"""Schema migrations, the programmatic API: locate our revisions, run them, read where a database stands.

Public through `parquedb_orm.migrate` (docs/migrations.md); the library's schema step
(`engine.setup.ensure_schema`) uses it from here.

Our revisions live in `migrations/versions` (in the wheel: `parquedb_orm/migrations`), carry
the branch label `parquedb` and are tracked in their own version table,
`parquedb_alembic_version`, so they never collide with an application's `alembic_version`.
An application with its own Alembic may instead add `version_locations()` to its
`version_locations` and run `alembic upgrade heads`; see docs/migrations.md.
`schema_status(url)` tells, without writing, which of the two records our revisions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from parquedb_orm.sql.legacy import legacy_metadata
from parquedb_orm.sql.models import metadata

__all__ = [
    "BRANCH",
    "VERSION_TABLE",
    "SchemaStatus",
    "current",
    "downgrade",
    "heads",
    "migrations_dir",
    "schema_status",
    "stamp",
    "upgrade",
    "version_locations",
]

#: Our own Alembic version table: the app's `alembic_version` is never touched.
VERSION_TABLE = "parquedb_alembic_version"
#: Branch label of our first revision (`alembic upgrade parquedb@head` also works).
BRANCH = "parquedb"

UrlOrEngine = str | sa.URL | Engine | Connection


# --------------------------------------------------------------------------- locating


def migrations_dir() -> Path:
    """The folder holding env.py and versions/: inside the wheel, or `<repo>/migrations`."""
    package = Path(__file__).resolve().parent.parent  # parquedb_orm/ (this module is parquedb_orm/sql/)
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"parquedb_orm migrations not found next to {package} (broken install?)")


def version_locations() -> list[str]:
    """Paths to append to an application's Alembic `version_locations`."""
    return [str(migrations_dir() / "versions")]


# --------------------------------------------------------------------------- commands


@contextmanager
def _connection(target: UrlOrEngine) -> Iterator[Connection]:
    if isinstance(target, Connection):
        yield target
        return
    engine = target if isinstance(target, Engine) else sa.create_engine(target)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        if engine is not target:
            engine.dispose()  # ours: do not leak pooled connections (SQLite file locks)


def _config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = conn  # env.py runs on it instead of building an engine
    return cfg


def upgrade(url_or_engine: UrlOrEngine, revision: str = "heads") -> None:
    """Apply our revisions up to `revision` (default: the newest)."""
    with _connection(url_or_engine) as conn:
        command.upgrade(_config(conn), revision)


def downgrade(url_or_engine: UrlOrEngine, revision: str) -> None:
    """Revert our revisions down to `revision` (`"pq0001"`, `"base"`, `"-1"`...)."""
    with _connection(url_or_engine) as conn:
        command.downgrade(_config(conn), revision)


def stamp(url_or_engine: UrlOrEngine, revision: str = "heads") -> None:
    """Record `revision` as applied without running it (a schema made another way)."""
    with _connection(url_or_engine) as conn:
        command.stamp(_config(conn), revision)
        if conn.in_transaction() and not isinstance(url_or_engine, Connection):
            conn.commit()


def current(url_or_engine: UrlOrEngine) -> tuple[str, ...]:
    """The revisions recorded in `parquedb_alembic_version` (empty: never migrated)."""
    with _connection(url_or_engine) as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        heads = tuple(ctx.get_current_heads())
        if conn.in_transaction() and not isinstance(url_or_engine, Connection):
            conn.rollback()
        return heads


def heads() -> tuple[str, ...]:
    """The newest revision(s) this version of the library ships."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return tuple(ScriptDirectory.from_config(cfg).get_heads())


# --------------------------------------------------------------------------- status (read-only)

#: Tables of the legacy layout that the store's layout no longer has.
LEGACY_TABLES = frozenset(legacy_metadata.tables) - frozenset(metadata.tables)


@cache
def _script() -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    return ScriptDirectory.from_config(cfg)


@cache
def _our_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _script().walk_revisions())


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database stands with our schema, as `schema_status()` found it.

    Our revisions are recorded either in our own `parquedb_alembic_version` (the library
    or `parquedb upgrade` ran them) or, when the application's Alembic runs them as a
    branch of its history, in its `alembic_version`: `owner` says which.
    """

    #: False: a SQLite file that does not exist (nothing was read, nothing was created).
    exists: bool
    #: Which tables of the store's layout (`models.metadata`) exist.
    tables: frozenset[str]
    #: Which tables of the legacy layout (`event_batches`, `relationships`) exist.
    legacy_tables: frozenset[str]
    #: Revisions recorded in `parquedb_alembic_version` (sorted; empty: none, or no such table).
    parquedb_revisions: tuple[str, ...]
    #: Our revisions (ids of our revision scripts) recorded in the host's version table.
    host_revisions: tuple[str, ...]
    #: The host's other recorded revisions (its own branches), for diagnostics.
    host_other_revisions: tuple[str, ...]
    #: The newest revision(s) this version of the library ships.
    heads: tuple[str, ...]
    #: The host's version table that was read.
    host_version_table: str = "alembic_version"

    @property
    def owner(self) -> Literal["parquedb", "host", "both"] | None:
        """Who runs our revisions: "parquedb" (our version table), "host" (the app's
        Alembic), "both" (both record them: a misconfiguration), None (neither)."""
        if self.parquedb_revisions and self.host_revisions:
            return "both"
        if self.parquedb_revisions:
            return "parquedb"
        if self.host_revisions:
            return "host"
        return None

    @property
    def revisions(self) -> tuple[str, ...]:
        """Our revisions as recorded by the owner (both tables' when owner is "both")."""
        return tuple(sorted({*self.parquedb_revisions, *self.host_revisions}))

    @property
    def at_head(self) -> bool:
        """Recorded by exactly one owner, at our newest revision(s)."""
        return self.owner in ("parquedb", "host") and set(self.revisions) == set(self.heads)

    @property
    def missing_tables(self) -> frozenset[str]:
        """Tables of the store's layout that do not exist."""
        return frozenset(metadata.tables) - self.tables

    @property
    def legacy(self) -> bool:
        """The database still has tables of the legacy layout (it is at pq0001..pq0003, or was never migrated)."""
        return bool(self.legacy_tables)


def _missing_sqlite_file(target: UrlOrEngine) -> bool:
    """A SQLite file URL whose file does not exist (connecting would create it)."""
    if isinstance(target, Connection):
        return False
    url = target.url if isinstance(target, Engine) else sa.make_url(target)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return False
    database = str(url.database)
    if database.startswith("file:"):  # a URI filename (?uri=true): file:path?mode=...
        if "mode=memory" in database:
            return False
        database = database[len("file:") :].split("?", 1)[0]
    return database not in ("", ":memory:") and not Path(database).exists()


def _read_versions(conn: Connection, table: str) -> tuple[str, ...]:
    rows: Sequence[Any] = conn.execute(sa.select(sa.column("version_num")).select_from(sa.table(table))).scalars().all()
    return tuple(sorted({str(v) for v in rows}))


def schema_status(url_or_engine: UrlOrEngine, host_version_table: str = "alembic_version") -> SchemaStatus:
    """Read where the database stands with our schema; writes nothing.

    Looks at which of our tables exist and which of our revisions are recorded in
    `parquedb_alembic_version` and in the host application's `host_version_table`.
    A SQLite file that does not exist is reported as `exists=False` without creating
    it. A Connection is left as it was (a transaction this call began is rolled back).
    """
    ours = tuple(sorted(_script().get_heads()))
    if _missing_sqlite_file(url_or_engine):
        return SchemaStatus(False, frozenset(), frozenset(), (), (), (), ours, host_version_table)
    began = not (isinstance(url_or_engine, Connection) and url_or_engine.in_transaction())
    with _connection(url_or_engine) as conn:
        try:
            names = set(sa.inspect(conn).get_table_names())
            recorded = _read_versions(conn, VERSION_TABLE) if VERSION_TABLE in names else ()
            host = _read_versions(conn, host_version_table) if host_version_table in names else ()
        finally:
            if began and conn.in_transaction():
                conn.rollback()
    known = _our_revisions()
    return SchemaStatus(
        exists=True,
        tables=frozenset(names & set(metadata.tables)),
        legacy_tables=frozenset(names & LEGACY_TABLES),
        parquedb_revisions=recorded,
        host_revisions=tuple(v for v in host if v in known),
        host_other_revisions=tuple(v for v in host if v not in known),
        heads=ours,
        host_version_table=host_version_table,
    )
