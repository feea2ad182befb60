"""`ParqueDB`: the store on its own, each call one transaction (or several in `transaction()`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from parquedb_orm.archive.flush import FlushResult
from parquedb_orm.archive.policy import FlushPolicy
from parquedb_orm.core.events import State
from parquedb_orm.core.unit import UnitOfWork
from parquedb_orm.engine.group import GroupCommitter
from parquedb_orm.engine.runtime import Runtime
from parquedb_orm.engine.setup import MigrateMode, flushing, prepare, release_runtime
from parquedb_orm.engine.store import Store
from parquedb_orm.errors import ConfigurationError, MeterUnavailableError, VersionConflictError
from parquedb_orm.sql import dialects

T = TypeVar("T")
_RETRIES = 16
_EMPTY_UNIT = UnitOfWork()


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


def _engine_meter(engine: Engine) -> Any:
    """The row meter is a development tool outside this package (tools/meter)."""
    try:
        from parquedb_meter import EngineMeter  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise MeterUnavailableError(
            "meter=True needs the row meter, a development tool: from a source checkout, "
            "`pip install ./tools/meter`"
        ) from None
    return EngineMeter(engine, max_records=0).install()


class ParqueDB:
    """An event-sourced entity and relationship store on a SQL database.

    `url_or_engine`: a SQLAlchemy URL (`sqlite:///app.db`, `postgresql+psycopg://...`,
    `mysql+pymysql://...`) or an Engine. `shared=True` when several processes write the
    same database. `migrate`: "auto" (default) creates or upgrades the store's schema,
    "check" only verifies it, False skips the step (docs/migrations.md).

    `pq.enable(Session)` returns one of these too: the handle of the store its sessions
    write to (same runtime, caches and flushing).
    """

    def __init__(
        self,
        url_or_engine: str | Engine = "sqlite://",
        *,
        archive: str | os.PathLike[str] | None = None,
        policy: FlushPolicy | None = None,
        shared: bool = False,
        archive_options: dict[str, Any] | None = None,
        group_commit: bool = True,
        meter: bool = False,
        migrate: MigrateMode = "auto",
    ) -> None:
        self._on_close: Callable[[Runtime], None] | None = None
        self._closed = False
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
            self._owns_engine = False
        elif isinstance(url_or_engine, str):
            self.engine = dialects.create_engine_for(url_or_engine)
            self._owns_engine = True
        else:
            raise ConfigurationError(
                f"ParqueDB() takes a database URL or an Engine, got {type(url_or_engine).__name__}"
            )
        try:
            self.runtime: Runtime = prepare(
                self.engine,
                archive=archive,
                policy=policy,
                shared=shared,
                migrate=migrate,
                archive_options=archive_options,
            )
        except BaseException:
            if self._owns_engine:
                self.engine.dispose()
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
        return self

    def close(self) -> None:
        """Stop timers and background flushing, waiting for a flush in progress; committed
        events stay safe in the WAL. A handle from `enable()` also disables its
        sessionmakers. Closing twice is a no-op."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close(self.runtime)
        release_runtime(self.runtime)
        if self._meter is not None:
            self._meter.uninstall()
            self._meter = None
        if self._owns_engine:
            self.engine.dispose()

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
        uow: UnitOfWork | None = UnitOfWork()
        lazy = _LazyConnection(self.engine)
        self._group.begin()
        try:
            yield Store(self.runtime, lambda: uow, lazy)  # type: ignore[arg-type, return-value]
        except BaseException:
            uow = None
            raise
        finally:
            lazy.close()
            self._group.commit(uow)

    def _write(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            with self.transaction() as tx:
                return fn(tx, *args, **kwargs)
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

        for _attempt in range(_RETRIES):
            try:
                self._group.exclusive(build)
                return result[0]
            except VersionConflictError:
                continue  # only another process (shared mode) can get here
        raise VersionConflictError("gave up after repeated concurrent changes by other processes")

    def _read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        lazy = _LazyConnection(self.engine)
        try:
            return fn(Store(self.runtime, _NO_UNIT, lazy), *args, **kwargs)
        finally:
            lazy.close()

    # ------------------------------------------------------------------ entities
    def create(self, ns: str, data: dict[str, Any], *, actor: str | None = None) -> State:
        return self._write(Store.create, ns, data, actor=actor)  # type: ignore[no-any-return]

    def create_many(self, ns: str, items: Iterable[dict[str, Any]], *, actor: str | None = None) -> list[State]:
        return self._write(Store.create_many, ns, list(items), actor=actor)  # type: ignore[no-any-return]

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
        result = running.flusher.flush()
        running.flusher.compact_due(running.scheduler.policy.compact_after, result.namespaces)
        return result

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
            "archive": rt.archive.uri if rt.archive else None,
            "flushes": sched.flushes if sched else 0,
            "last_flush": sched.last_result.as_dict() if sched and sched.last_result else None,
            "last_flush_error": repr(sched.last_error) if sched and sched.last_error else None,
            "sql": self._meter.meter.snapshot() if self._meter is not None else None,
        }
