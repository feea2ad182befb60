"""`ParqueDB`: the store on its own, each call one transaction (or several in `transaction()`)."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from parquedb_orm.archive.flush import FlushResult
from parquedb_orm.archive.iceberg import Iceberg
from parquedb_orm.archive.policy import FlushPolicy
from parquedb_orm.core.events import State
from parquedb_orm.core.unit import UnitOfWork
from parquedb_orm.engine.group import GroupCommitter
from parquedb_orm.engine.runtime import Runtime
from parquedb_orm.engine.setup import MigrateMode, flushing, prepare, release_runtime
from parquedb_orm.engine.store import Store, entity_items
from parquedb_orm.errors import (
    ArchiveFileMissingError,
    ConfigurationError,
    MeterUnavailableError,
    VersionConflictError,
)
from parquedb_orm.sql import dialects

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")
_EMPTY_UNIT = UnitOfWork()

# Retrying a write that lost a race to another process (shared mode). Immediate retries
# let the same processes collide again in lockstep, and a fixed count of them can run out
# within milliseconds when several processes update one row. So: capped exponential
# backoff with full jitter (a delay drawn uniformly from [0, min(cap, base * 2**attempt)]),
# which spreads the contenders out, and a total deadline instead of a count, which bounds
# how long a call may wait however fast the attempts fail.
_RETRY_BASE = 0.001  # seconds: the first retry waits up to 1 ms
_RETRY_CAP = 0.064  # seconds: no single wait longer than this
_RETRY_DEADLINE = 5.0  # seconds: give up (VersionConflictError) once waiting would pass this
#: a read that found a listed file deleted by a compaction that committed meanwhile is
#: run again (each compaction leaves a manifest that lists only existing files)
_READ_ATTEMPTS = 3


def _retry_delay(attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
    """The wait after failed retry number `attempt` (0-based): full jitter under the cap."""
    return uniform(0.0, min(_RETRY_CAP, _RETRY_BASE * 2 ** min(attempt, 32)))


def _retry_conflicts(
    op: Callable[[], T],
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    uniform: Callable[[float, float], float] = random.uniform,
    deadline: float = _RETRY_DEADLINE,
) -> T:
    """`op()` until it does not raise VersionConflictError: the first try at once, then after
    each conflict a jittered, growing wait (`_retry_delay`); once the next wait would end
    past `deadline` seconds from the start, VersionConflictError ("gave up"), the last
    conflict as its cause. `sleep`, `clock` and `uniform` are injectable for tests."""
    start = clock()
    attempt = 0
    while True:
        try:
            return op()
        except VersionConflictError as exc:
            delay = _retry_delay(attempt, uniform)
            waited = clock() - start
            if waited + delay > deadline:
                raise VersionConflictError(
                    f"gave up after {attempt + 1} attempts in {waited:.2f} s of concurrent changes by other processes"
                ) from exc
        sleep(delay)
        attempt += 1


def _NO_UNIT() -> UnitOfWork:
    return _EMPTY_UNIT


class _LazyConnection:
    """A connection opened only if a read misses the caches."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: Connection | None = None

    def __call__(self) -> Connection:
        if self.conn is None:
            self.conn = self.engine.connect()
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _Transaction:
    """One `transaction()`: its Store, then exactly one `end()`."""

    def __init__(self, db: ParqueDB) -> None:
        self.uow = UnitOfWork()
        self._lazy = _LazyConnection(db.engine)
        self._group = db._group
        self._group.begin()
        uow = self.uow  # the getter holds the unit, not self: a cycle would leave every
        # operation's objects to the cyclic collector (~15 µs a commit, measured)
        self.store = Store(db.runtime, lambda: uow, self._lazy)

    def end(self, *, commit: bool) -> None:
        """Commit the unit (`commit=True`; returns once committed, as durable as the engine's
        settings make it: docs/durability.md) or drop it."""
        try:
            self._lazy.close()
        except BaseException:
            self._group.commit(None)  # every begin() is matched by one commit()
            raise
        self._group.commit(self.uow if commit else None)


def _engine_meter(engine: Engine) -> Any:
    """The row meter is a development tool outside this package (tools/meter)."""
    try:
        from parquedb_meter import EngineMeter  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise MeterUnavailableError(
            "meter=True needs the row meter, a development tool: from a source checkout, `pip install ./tools/meter`"
        ) from None
    return EngineMeter(engine, max_records=0).install()


# --------------------------------------------------------------------------- async engines
#
# The store's runtime works on a sync engine: its flush thread, timers and own transactions
# run outside any event loop. An AsyncEngine's database is reached by a second, sync engine
# on the same database, derived from its URL (docs/async.md).

#: (backend, async driver) -> the sync driver of the same database
_SYNC_DRIVERS: dict[tuple[str, str], str] = {
    ("sqlite", "aiosqlite"): "pysqlite",
    ("postgresql", "asyncpg"): "psycopg",
    ("postgresql", "psycopg"): "psycopg",
    ("postgresql", "psycopg_async"): "psycopg",
    ("mysql", "aiomysql"): "pymysql",
    ("mysql", "asyncmy"): "pymysql",
    ("mariadb", "aiomysql"): "pymysql",
    ("mariadb", "asyncmy"): "pymysql",
}
#: drivers that are async whatever engine they are given to (psycopg is both)
_ASYNC_DRIVERS = frozenset({"aiosqlite", "asyncpg", "psycopg_async", "aiomysql", "asyncmy"})
#: options of SQLAlchemy's asyncpg dialect that libpq (psycopg) does not know
_ASYNCPG_ONLY = frozenset({"prepared_statement_cache_size", "prepared_statement_name_func", "command_timeout"})


def sync_side(obj: object) -> Engine | None:
    """The Engine an AsyncEngine's sessions and connections run on (its `sync_engine`),
    or `obj` itself if it is already such an Engine; None for anything else. Checked
    without importing sqlalchemy.ext.asyncio (it needs greenlet)."""
    ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if ext is not None and isinstance(obj, ext.AsyncEngine):
        return obj.sync_engine  # type: ignore[no-any-return]
    if isinstance(obj, Engine) and obj.dialect.is_async:
        return obj
    return None


def _memory_sqlite(url: URL) -> bool:
    if url.get_backend_name() != "sqlite":
        return False
    db = url.database or ""
    return db in ("", ":memory:") or db.startswith("file::memory:") or url.query.get("mode") == "memory"


def sync_url(url: URL) -> URL:
    """The URL of the same database through the sync driver the store runs on
    (sqlite+aiosqlite -> sqlite, postgresql+asyncpg -> postgresql+psycopg,
    mysql+aiomysql / asyncmy -> mysql+pymysql); URL options carried over."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    target = _SYNC_DRIVERS.get((backend, driver))
    if target is None:
        raise ConfigurationError(
            f"no sync driver known for {backend}+{driver}: pass sync_engine=<a sync Engine of the same database>"
        )
    query = dict(url.query)
    if driver == "asyncpg":  # the same options under libpq's names
        for key in _ASYNCPG_ONLY:
            query.pop(key, None)
        if "ssl" in query:
            query["sslmode"] = query.pop("ssl")
        if "timeout" in query:
            query["connect_timeout"] = query.pop("timeout")
    return url.set(drivername=f"{backend}+{target}", query=query)


def _refuse_memory(url: URL) -> None:
    if _memory_sqlite(url):
        raise ConfigurationError(
            "an in-memory SQLite database (sqlite+aiosqlite://) exists only inside its one async connection: the "
            "store's sync engine cannot open it. Use a file (sqlite+aiosqlite:///app.db), or the sync engine "
            "(sqlite://) with a sync sessionmaker"
        )


def derive_sync_engine(bind: Engine) -> Engine:
    """A new sync engine on the database of `bind` (an Engine with an async driver).

    Connect arguments given in code to create_async_engine() are not visible here: only
    the URL's options carry over. On SQLite it changes no persistent setting (a journal
    mode the app set stays; WAL is a property of the file) and waits up to 30 s for the
    write lock; pass `sync_engine=` for anything else."""
    url = bind.url
    _refuse_memory(url)
    target = sync_url(url)
    kwargs: dict[str, Any] = {}
    if target.get_backend_name() == "sqlite":
        if "timeout" not in target.query:
            kwargs["connect_args"] = {"timeout": 30}
        kwargs["pool_size"] = 32  # the flush thread and worker threads may wait on the write lock
    return create_engine(target, **kwargs)


def _database_of(engine: Engine) -> str | None:
    db = engine.url.database
    if db and engine.dialect.name == "sqlite":
        return os.path.realpath(db)
    return db


def check_sync_engine(bind: Engine, given: object) -> Engine:
    """`given` as the sync engine of `bind`'s database: a sync Engine on the same kind of
    database and the same database name."""
    _refuse_memory(bind.url)
    if not isinstance(given, Engine) or given.dialect.is_async:
        raise ConfigurationError(f"sync_engine= takes a sync Engine (not an async one), got {type(given).__name__}")
    if dialects.family(given) != dialects.family(bind) or _database_of(given) != _database_of(bind):
        raise ConfigurationError(
            f"sync_engine= must open the sessions' database: {given.url.render_as_string(hide_password=True)} is "
            f"not {bind.url.render_as_string(hide_password=True)}"
        )
    return given


@dataclass
class _Derived:
    source: Engine
    engine: Engine
    users: int = 0


#: id(the async side's sync_engine) -> its derived sync engine, shared by every holder so
#: that one async engine gets one runtime (one set of caches) in the process
_derived: dict[int, _Derived] = {}
_derived_lock = threading.Lock()


def acquire_sync_engine(bind: Engine) -> Engine:
    """The derived sync engine of `bind` (an AsyncEngine's `sync_engine`), created on first
    use; the caller holds a reference until `release_sync_engine`."""
    with _derived_lock:
        found = _derived.get(id(bind))
        if found is None or found.source is not bind:
            found = _derived[id(bind)] = _Derived(bind, derive_sync_engine(bind))
        found.users += 1
        return found.engine


def release_sync_engine(engine: Engine) -> None:
    """Give back a reference; the last one disposes the derived engine."""
    with _derived_lock:
        key = next((k for k, d in _derived.items() if d.engine is engine), None)
        if key is None:
            return
        found = _derived[key]
        found.users -= 1
        if found.users > 0:
            return
        del _derived[key]
    engine.dispose()


def _engine_for_url(url: str, durability: dialects.Durability | None = None) -> Engine:
    """Our own engine for a URL, with our settings for `durability` on a SQLite file; an
    async driver's URL means the same database through its sync driver (this engine is
    never used on an event loop)."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError(f"invalid database URL {url!r}: {exc}") from None
    if parsed.get_driver_name() in _ASYNC_DRIVERS:
        return dialects.create_engine_for(sync_url(parsed).render_as_string(hide_password=False), durability)
    return dialects.create_engine_for(url, durability)


class ParqueDB:
    """An event-sourced entity and relationship store on a SQL database.

    `url_or_engine`: a SQLAlchemy URL (`sqlite:///app.db`, `postgresql+psycopg://...`,
    `mysql+pymysql://...`), an Engine or an AsyncEngine (the store then runs on a sync
    engine of the same database, derived from its URL and disposed at close(); see
    docs/async.md). `shared=True` when several processes write the
    same database. `migrate`: "auto" (default) creates or upgrades the store's schema,
    "check" only verifies it, False skips the step (docs/migrations.md).

    `durability` (docs/durability.md): on a SQLite file opened from its URL, "normal" (the
    default: WAL + synchronous=NORMAL, a commit survives a crash of the process, the last
    commits may be lost on power loss or an OS crash) or "full" (WAL + synchronous=FULL:
    each commit survives power loss). An Engine of yours, and a server, keep their
    settings: they are read back, said once in the log ("parquedb_orm"), and a durability
    they do not give raises ConfigurationError (`pq.sqlite_settings(engine)` applies ours).

    `cache_entries`: the bound of this process's entity cache, in entities (default 20,000;
    a miss reads the entity's one Parquet piece; docs/scaling.md).

    `iceberg`: `pq.Iceberg(...)` publishes the archive as Apache Iceberg tables after each
    flush (extra `parquedb-orm[iceberg]`, docs/iceberg.md).

    `pq.enable(Session)` returns one of these too: the handle of the store its sessions
    write to (same runtime, caches and flushing).
    """

    def __init__(
        self,
        url_or_engine: str | Engine | AsyncEngine = "sqlite://",
        *,
        archive: str | os.PathLike[str] | None = None,
        policy: FlushPolicy | None = None,
        shared: bool = False,
        archive_options: dict[str, Any] | None = None,
        group_commit: bool = True,
        meter: bool = False,
        migrate: MigrateMode = "auto",
        durability: dialects.Durability | None = None,
        cache_entries: int | None = None,
        iceberg: Iceberg | None = None,
    ) -> None:
        wanted = dialects.check_durability(durability)
        self._on_close: Callable[[Runtime], None] | None = None
        self._closed = False
        #: engines this handle holds a reference to, and how to give each back at close()
        self._held: list[tuple[Engine, Callable[[], None]]] = []
        async_side = sync_side(url_or_engine)
        if async_side is not None:
            self.engine = acquire_sync_engine(async_side)
            self._owns_engine = False
            self._hold(self.engine, self._releaser(self.engine))
        elif isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
            self._owns_engine = False
        elif isinstance(url_or_engine, str):
            try:
                self.engine = _engine_for_url(url_or_engine, wanted)
            except ArgumentError as exc:  # not a URL, or a dialect / driver not installed
                raise ConfigurationError(f"cannot use {url_or_engine!r} as a database URL: {exc}") from exc
            self._owns_engine = True
        else:
            raise ConfigurationError(
                f"ParqueDB() takes a database URL, an Engine or an AsyncEngine, got {type(url_or_engine).__name__}"
            )
        try:
            self.runtime: Runtime = prepare(
                self.engine,
                archive=archive,
                policy=policy,
                shared=shared,
                migrate=migrate,
                archive_options=archive_options,
                durability=wanted,
                cache_entries=cache_entries,
                iceberg=iceberg,
            )
        except BaseException:
            if self._owns_engine:
                self.engine.dispose()
            self._release_held()
            raise
        self._group = GroupCommitter(self.runtime, enabled=group_commit)
        self._meter: Any = None
        if meter:
            # statements and rows of every SQL statement this engine runs, for stats();
            # faithful rows read/written when the counting SQLite library is loaded
            self._meter = _engine_meter(self.engine)

    @classmethod
    def _attached(cls, runtime: Runtime, on_close: Callable[[Runtime], None]) -> ParqueDB:
        """A handle on a runtime someone already prepared (`enable()`'s); it holds the
        caller's reference to it, and `on_close` runs first when it closes."""
        self = cls.__new__(cls)
        self._on_close = on_close
        self._closed = False
        self.engine = runtime.engine
        self._owns_engine = False
        self.runtime = runtime
        self._group = GroupCommitter(runtime)
        self._meter = None
        self._held = []
        return self

    @staticmethod
    def _releaser(engine: Engine) -> Callable[[], None]:
        return lambda: release_sync_engine(engine)

    def _hold(self, engine: Engine, release: Callable[[], None]) -> None:
        """Run `release` when this handle closes, after its runtime is released: a derived
        engine's reference. A handle holds one reference per engine: a second is given back."""
        if any(e is engine for e, _r in self._held):
            release()
        else:
            self._held.append((engine, release))

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for _engine, release in held:
            release()

    def close(self) -> None:
        """Stop timers and background flushing, waiting for a flush in progress; committed
        events stay in the WAL tables, for the next flush. A handle from `enable()` also
        disables its sessionmakers. Closing twice is a no-op."""
        if self._closed:
            return
        self._closed = True
        self._group.release()
        if self._on_close is not None:
            self._on_close(self.runtime)
        release_runtime(self.runtime)
        if self._meter is not None:
            self._meter.uninstall()
            self._meter = None
        if self._owns_engine:
            self.engine.dispose()
        self._release_held()

    def __enter__(self) -> ParqueDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """Several operations in one commit: `with db.transaction() as tx: tx.create(...)`.

        Nothing is written if the block raises. Concurrent transactions of this process
        are group-committed: they may share one SQL transaction and WAL row."""
        tx = self._begin()
        try:
            yield tx.store
        except BaseException:
            tx.end(commit=False)
            raise
        tx.end(commit=True)

    def _begin(self) -> _Transaction:
        """The parts of `transaction()`, for callers that cannot use a `with` block in one
        thread (orm/aio.py runs each step in a worker thread)."""
        return _Transaction(self)

    def _write(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            # transaction()'s steps without its generator (the single-op path: every µs counts)
            tx = _Transaction(self)
            try:
                out = fn(tx.store, *args, **kwargs)
            except BaseException:
                tx.end(commit=False)
                raise
            tx.end(commit=True)
            return out
        except VersionConflictError:
            if kwargs.get("expected_version") is not None:
                raise
        # another writer committed the entity first; a call without expected_version is
        # recomputed on the newer state, this time with the commit path to itself
        result: list[Any] = []

        def build() -> UnitOfWork:
            result.clear()
            uow = UnitOfWork()
            lazy = _LazyConnection(self.engine)
            try:
                result.append(fn(Store(self.runtime, lambda: uow, lazy), *args, **kwargs))
            finally:
                lazy.close()
            return uow

        def attempt() -> Any:
            self._group.exclusive(build)  # a conflict here: only another process (shared mode)
            return result[0]

        return _retry_conflicts(attempt)  # waits outside the group's lock

    def _read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        for attempt in range(_READ_ATTEMPTS):
            lazy = _LazyConnection(self.engine)
            try:
                return fn(Store(self.runtime, _NO_UNIT, lazy), *args, **kwargs)
            except ArchiveFileMissingError:
                # a compaction committed while this read held the old file list, then
                # deleted its sources: read again against the manifest it left
                if attempt == _READ_ATTEMPTS - 1:
                    raise
                if self.runtime.known.shared:
                    self.runtime.known.restart_all()
            finally:
                lazy.close()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ entities
    def create(self, ns: str, data: dict[str, Any], *, actor: str | None = None) -> State:
        return self._write(Store.create, ns, data, actor=actor)  # type: ignore[no-any-return]

    def create_many(self, ns: str, items: Iterable[dict[str, Any]], *, actor: str | None = None) -> list[State]:
        return self._write(Store.create_many, ns, entity_items(items), actor=actor)  # type: ignore[no-any-return]

    def get(
        self, ns: str, entity_id: str, *, include_deleted: bool = False, as_of: datetime | int | None = None
    ) -> State | None:
        return self._read(Store.get, ns, entity_id, include_deleted=include_deleted, as_of=as_of)  # type: ignore[no-any-return]

    def update(
        self,
        ns: str,
        entity_id: str,
        update: dict[str, Any],
        *,
        expected_version: int | None = None,
        actor: str | None = None,
    ) -> State:
        return self._write(Store.update, ns, entity_id, update, expected_version=expected_version, actor=actor)  # type: ignore[no-any-return]

    def delete(
        self,
        ns: str,
        entity_id: str,
        *,
        hard: bool = False,
        expected_version: int | None = None,
        actor: str | None = None,
    ) -> bool:
        return self._write(Store.delete, ns, entity_id, hard=hard, expected_version=expected_version, actor=actor)  # type: ignore[no-any-return]

    def restore(
        self, ns: str, entity_id: str, *, expected_version: int | None = None, actor: str | None = None
    ) -> State:
        return self._write(Store.restore, ns, entity_id, expected_version=expected_version, actor=actor)  # type: ignore[no-any-return]

    def find(
        self,
        ns: str,
        filter: dict[str, Any] | None = None,
        *,
        sort: dict[str, int] | None = None,
        limit: int | None = None,
        skip: int = 0,
        include_deleted: bool = False,
    ) -> list[State]:
        return self._read(Store.find, ns, filter, sort=sort, limit=limit, skip=skip, include_deleted=include_deleted)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ relationships
    def link(
        self,
        from_ref: str,
        predicate: str,
        to_ref: str,
        *,
        reverse: str | None = None,
        data: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> None:
        self._write(Store.link, from_ref, predicate, to_ref, reverse=reverse, data=data, actor=actor)

    def unlink(self, from_ref: str, predicate: str, to_ref: str, *, actor: str | None = None) -> None:
        self._write(Store.unlink, from_ref, predicate, to_ref, actor=actor)

    def related(
        self, ref: str, predicate: str | None = None, *, direction: str = "outbound", include_deleted: bool = False
    ) -> list[State]:
        return self._read(Store.related, ref, predicate, direction=direction, include_deleted=include_deleted)  # type: ignore[no-any-return]

    def links(self, ref: str, predicate: str | None = None, *, direction: str = "outbound") -> list[dict[str, Any]]:
        return self._read(Store.links, ref, predicate, direction=direction)  # type: ignore[no-any-return]

    def history(self, ref: str) -> list[dict[str, Any]]:
        return self._read(Store.history, ref)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ archive
    def flush(self) -> FlushResult:
        """Move every committed WAL event to the Parquet archive now; returns what it did."""
        running = flushing(self.runtime)
        if running is None:
            raise ConfigurationError("no archive configured: pass archive='./folder' (or a URI) to ParqueDB()")
        return running.scheduler.flush_now()  # counted in stats() like the policy's flushes

    def compact(self, threshold: int = 1) -> int:
        """Merge small archive files now (namespaces with more than `threshold` files of a kind)."""
        running = flushing(self.runtime)
        if running is None:
            raise ConfigurationError("no archive configured: pass archive='./folder' (or a URI) to ParqueDB()")
        return len(running.flusher.compact_due(threshold))

    def duckdb(self) -> Any:
        """A DuckDB connection with views `events`, `rels` and `entities` (current state)."""
        from parquedb_orm.archive.analytics import connect

        return connect(self.runtime)

    # ------------------------------------------------------------------ introspection
    def stats(self) -> dict[str, Any]:
        rt = self.runtime
        running = flushing(rt)
        sched = running.scheduler if running is not None else None
        return {
            "unflushed_events": rt.unflushed,
            "commits": rt.known.commits,
            "dialect": rt.family,
            "shared": rt.shared,
            "group_commits": self._group.stats.groups,
            "grouped_units": self._group.stats.units,
            "deadlock_retries": self._group.stats.deadlock_retries,
            "archive": rt.archive.uri if rt.archive else None,
            "flushes": sched.flushes if sched else 0,
            "last_flush": sched.last_result.as_dict() if sched and sched.last_result else None,
            "last_flush_error": repr(sched.last_error) if sched and sched.last_error else None,
            "sql": self._meter.meter.snapshot() if self._meter is not None else None,
        }
