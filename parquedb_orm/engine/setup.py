"""Opening a database for the store: the schema step, the process runtime, its archive
and the flushing that subscribes to its commits.

One `Runtime` exists per engine in a process, shared by the `ParqueDB` handles and the
sessions of enabled sessionmakers; each holder takes a reference (`prepare`/`runtime_for`)
and gives it back (`release_runtime`); the last one out stops its flushing and waits for a
flush that is running.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import DBAPIError

from parquedb_orm.archive.files import Archive
from parquedb_orm.archive.flush import Flusher
from parquedb_orm.archive.iceberg import Iceberg, open_publisher
from parquedb_orm.archive.policy import FlushPolicy, Scheduler
from parquedb_orm.engine.runtime import Runtime
from parquedb_orm.errors import ConfigurationError
from parquedb_orm.sql import dialects
from parquedb_orm.sql.dialects import Durability
from parquedb_orm.sql.durability import check as check_settings

MigrateMode = Literal["auto", "check", False]
MIGRATE_MODES: tuple[MigrateMode, ...] = ("auto", "check", False)
#: the version table of an application's own Alembic (way B of docs/migrations.md)
HOST_VERSION_TABLE = "alembic_version"


@dataclass(frozen=True)
class Flushing:
    """A runtime's archive writer and the policy that runs it after commits."""

    flusher: Flusher
    scheduler: Scheduler


_runtimes: dict[int, Runtime] = {}
_users: dict[int, int] = {}
_flushing: dict[int, Flushing] = {}
_runtimes_lock = threading.Lock()


def flushing(rt: Runtime) -> Flushing | None:
    """The runtime's flushing, if it has an archive."""
    with _runtimes_lock:
        return _flushing.get(id(rt))


def runtime_for(engine: Engine, **options: Any) -> Runtime:
    """The one Runtime of this engine in this process (created on first use); the caller
    holds a reference until `release_runtime`."""
    with _runtimes_lock:
        rt = _runtimes.get(id(engine))
        if rt is None or rt.engine is not engine:
            rt = _runtimes[id(engine)] = Runtime(engine, **options)
            _users[id(engine)] = 0
        _users[id(engine)] += 1
        return rt


def release_runtime(rt: Runtime) -> None:
    """Give back a reference; the last one stops the runtime's flushing (waiting for a
    flush in progress: no thread is left behind)."""
    with _runtimes_lock:
        key = id(rt.engine)
        if _runtimes.get(key) is not rt:
            return
        _users[key] -= 1
        if _users[key] > 0:
            return
        del _runtimes[key], _users[key]
        done = _flushing.pop(id(rt), None)
    if done is not None:
        done.scheduler.close()
    rt.close()


def ensure_schema(engine: Engine, mode: MigrateMode = "auto") -> None:
    """The schema step, by `mode` (docs/migrations.md):

    - "auto": bring the database to our newest revision with the packaged migrations,
      recorded in `parquedb_alembic_version`; but if the host app's own Alembic records
      our revisions (its `alembic_version`), only verify, as "check" does;
    - "check": verify the schema is at our newest revision; never write;
    - False: nothing.

    A legacy database that never ran them is refused with the command to run: its data
    must be moved on purpose."""
    from parquedb_orm.sql import migrations as migrate

    if mode is False:
        return
    status = migrate.schema_status(engine, HOST_VERSION_TABLE)
    url = engine.url.render_as_string(hide_password=True)
    need = sorted(status.heads)
    if status.owner == "both":
        raise ConfigurationError(
            f"both {HOST_VERSION_TABLE} (your Alembic) and {migrate.VERSION_TABLE} record parquedb's schema: keep "
            f"one. If your Alembic runs parquedb's revisions, drop {migrate.VERSION_TABLE} and pass "
            'migrate="check" to enable(); otherwise take them out of yours. See docs/migrations.md, '
            "'Applications with their own Alembic'"
        )
    if status.owner == "host":
        if not status.at_head:
            raise ConfigurationError(
                f"parquedb's schema is at {list(status.host_revisions)}, this version needs {need}: your Alembic "
                "owns it, run `alembic upgrade heads` in your application"
            )
        return
    if mode == "check":
        if not status.at_head:
            what = f"at {list(status.parquedb_revisions)}" if status.parquedb_revisions else "not created"
            raise ConfigurationError(
                f"parquedb's schema is {what}, this version needs {need}: run `parquedb upgrade {url}` "
                "(or `alembic upgrade heads`, if your Alembic runs parquedb's revisions)"
            )
        return
    if status.owner == "parquedb":
        if not status.at_head:
            migrate.upgrade(engine)
        return
    if status.legacy:
        raise ConfigurationError(
            f"this database has the legacy parquedb layout ({', '.join(sorted(status.legacy_tables))}) but no "
            f"migration record: run `alembic -x url={url} stamp pq0001` then `parquedb upgrade {url}` "
            "(docs/migrations.md)"
        )
    if status.tables and status.missing_tables:
        raise ConfigurationError(
            f"this database has some of parquedb's tables ({', '.join(sorted(status.tables))}) but no migration "
            f"record: stamp the revision it is at, then run `parquedb upgrade {url}`"
        )
    if status.tables:  # made by metadata.create_all: the newest layout, record it as such
        migrate.stamp(engine, "heads")
        return
    migrate.upgrade(engine)


def _ensure_schema_retrying(engine: Engine, mode: MigrateMode, attempts: int = 6) -> None:
    """Several processes opening a fresh database at once race to create the schema; the
    losers fail on "already exists" or a lock. Retry (they then find it done); a database
    error that persists is reported as a ConfigurationError naming it."""
    for attempt in range(attempts):
        try:
            ensure_schema(engine, mode)
            return
        except DBAPIError as exc:
            if attempt == attempts - 1:
                raise ConfigurationError(
                    f"could not prepare parquedb's schema on {engine.url.render_as_string(hide_password=True)}: "
                    f"{type(exc.orig).__name__}: {exc.orig}"
                ) from exc
            time.sleep(0.05 * (2**attempt) * (1 + random.random()))


def _unreachable(exc: sa_exc.DBAPIError) -> bool:
    """A failure to connect (not a failed statement on a working connection)."""
    return bool(exc.connection_invalidated) or (
        isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
        and (getattr(exc, "statement", None) in (None, ""))
    )


def prepare(
    engine: Engine,
    *,
    archive: str | os.PathLike[str] | Archive | None = None,
    policy: FlushPolicy | None = None,
    shared: bool = False,
    migrate: MigrateMode = "auto",
    archive_options: dict[str, Any] | None = None,
    durability: Durability | None = None,
    cache_entries: int | None = None,
    iceberg: Iceberg | None = None,
) -> Runtime:
    """The runtime of `engine` in this process, with its archive and flush policy set up;
    the caller holds a reference to it (`release_runtime`).

    `cache_entries`: the bound of the process's entity cache, in entities (default
    DEFAULT_CACHE_ENTRIES; docs/scaling.md).

    `durability`: what the engine's settings must give (docs/durability.md); they are read
    back, never changed, and a ConfigurationError says how to get it if they give less.
    Once per engine the logger "parquedb_orm" says what they give.

    `iceberg`: publish the archive as Iceberg tables (archive/iceberg.py, docs/iceberg.md),
    reconciled here once, then after every flush and compaction."""
    if iceberg is not None and not isinstance(iceberg, Iceberg):
        raise ConfigurationError(f"iceberg must be a parquedb_orm.Iceberg, got {type(iceberg).__name__}")
    if iceberg is not None and archive is None:
        raise ConfigurationError("iceberg=pq.Iceberg(...) publishes the archive: pass archive= too")
    if policy is not None and not isinstance(policy, FlushPolicy):
        raise ConfigurationError(f"policy must be a parquedb_orm.FlushPolicy, got {type(policy).__name__}")
    if migrate not in MIGRATE_MODES or (isinstance(migrate, int) and migrate is not False):
        raise ConfigurationError(f'migrate must be "auto", "check" or False, got {migrate!r}')
    wanted = dialects.check_durability(durability)
    if cache_entries is not None and (
        isinstance(cache_entries, bool) or not isinstance(cache_entries, int) or cache_entries < 1
    ):
        raise ConfigurationError(f"cache_entries must be a positive int (entities), got {cache_entries!r}")
    # before the schema step: a refused engine is left as it was
    try:
        check_settings(engine, wanted)
        _ensure_schema_retrying(engine, migrate)
    except sa_exc.DBAPIError as exc:
        if not _unreachable(exc):
            raise
        # the database cannot be opened at all (a missing folder, a server down, bad
        # credentials): the driver's own words, under a type the caller can catch
        where = engine.url.render_as_string(hide_password=True)
        raise ConfigurationError(
            f"cannot open the database {where}: {str(exc.orig).strip() or type(exc.orig).__name__}. "
            "Check the URL, that the server is running and reachable, and the credentials"
        ) from exc
    rt = runtime_for(engine, shared=shared)
    rt.shared = rt.shared or shared
    if cache_entries is not None:
        rt.known.cache.max_entries = cache_entries
    if archive is not None and rt.archive is None:
        try:
            rt.archive = archive if isinstance(archive, Archive) else Archive.open(archive, **(archive_options or {}))
        except BaseException:
            release_runtime(rt)
            raise
        if not rt.shared:
            # the manifest once, at open (a row per file, bounded by compaction): no read of
            # a single owner ever seeks it again (shared mode reads it where it must be fresh)
            with engine.connect() as conn:
                rt.archived.preload(conn)
        flusher = Flusher(rt, rt.archive)
        try:
            # what a crash left in the folders (a listed file not yet published, an unlisted
            # one) is dealt with before the app or a glob reader looks
            flusher.sweep()
        except BaseException:
            release_runtime(rt)
            raise
        if iceberg is not None:
            try:
                publisher = open_publisher(iceberg, engine, rt.archive)
                publisher.publish()  # what a crash after a manifest commit left unpublished
            except BaseException:
                release_runtime(rt)
                raise
            # a single owner's copy of the manifest is exact: no re-read of it per flush
            flusher.after_commit = lambda: publisher.publish(rt.archived.all_files())
        scheduler = Scheduler(rt.committer, flusher, policy or FlushPolicy(), serial=rt.memory)
        with _runtimes_lock:
            _flushing[id(rt)] = Flushing(flusher, scheduler)
        scheduler.start()
    return rt


def sqlite_settings(engine: Engine, durability: Durability = dialects.DEFAULT_DURABILITY) -> Engine:
    """Give your own SQLite engine the settings the store uses on a URL it opens: WAL
    journal, synchronous=NORMAL (`durability="normal"`) or FULL (`"full"`), and a 30 s busy
    timeout (docs/durability.md). Every new connection gets them when it connects, one
    already pooled at its next checkout, and a store already open on the engine on its own
    connections too. Calling it again with another durability changes it. Returns `engine`.

    Raises ConfigurationError for another database (the store never changes a server's
    settings) and for an in-memory SQLite database (no commit outlives its process).
    For an AsyncEngine pass its `sync_engine`."""
    if not isinstance(engine, Engine):
        raise ConfigurationError(f"sqlite_settings() takes an Engine, got {type(engine).__name__}")
    wanted = dialects.check_durability(durability)
    if wanted is None:
        raise ConfigurationError('sqlite_settings(durability=...) takes "normal" or "full", got None')
    if engine.dialect.name != "sqlite":
        raise ConfigurationError(
            f"sqlite_settings() is for SQLite engines, got {engine.dialect.name}: the store reads a server's "
            "durability settings and never changes them (docs/durability.md)"
        )
    if dialects.is_memory_sqlite(engine):
        raise ConfigurationError("sqlite_settings(): an in-memory SQLite database has no durability to set")
    dialects.apply_sqlite_settings(engine, wanted)
    with _runtimes_lock:
        rt = _runtimes.get(id(engine))
    if rt is not None and rt.engine is engine and rt.ids.engine is not engine:
        # the side engine copied the pool's listeners when it was made: tell it too
        dialects.apply_sqlite_settings(rt.ids.engine, wanted)
    return engine
