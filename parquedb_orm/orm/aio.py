"""asyncio: `AsyncSession` makers, `AsyncStore` (`pq.store(async_session)`) and
`AsyncParqueDB`.

What runs where (docs/async.md):

- An AsyncSession wraps a sync Session, and SQLAlchemy fires the session's events on it
  inside its greenlet. `enable(async_sessionmaker)` gives the maker a Session subclass of
  its own (`own_session_class`) and the session listeners go on that class; the engine's
  `commit` listener goes on the AsyncEngine's `sync_engine`. So the units are written on
  the session's own connection, right before its COMMIT, exactly as for sync sessions.
- `AsyncStore` runs each `Store` call in the session's greenlet (`run_sync`): it reads and
  writes on the session's connection and commits or rolls back with it.
- The runtime (flush thread and timers, id blocks, the store's own transactions) works on a
  sync engine of the same database (`db.acquire_sync_engine`), never through the loop.
- `AsyncParqueDB` runs each sync `ParqueDB` call in a worker thread (`asyncio.to_thread`).

Nothing here imports sqlalchemy.ext.asyncio at run time (it needs greenlet): instances are
recognised through `sys.modules`, where they must be if one exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from parquedb_orm.archive.flush import FlushResult
from parquedb_orm.archive.policy import FlushPolicy
from parquedb_orm.core.events import State
from parquedb_orm.db import ParqueDB, _Transaction, sync_side
from parquedb_orm.engine.setup import MigrateMode
from parquedb_orm.engine.store import Store, entity_items
from parquedb_orm.errors import ConfigurationError
from parquedb_orm.sql.dialects import Durability

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

P = ParamSpec("P")
T = TypeVar("T")
_MISSING = object()


def _ext() -> ModuleType | None:
    return sys.modules.get("sqlalchemy.ext.asyncio")


def async_maker(target: object) -> async_sessionmaker[Any] | None:
    """The async_sessionmaker of an async_sessionmaker or async_scoped_session; None for
    anything else."""
    ext = _ext()
    if ext is None:
        return None
    if isinstance(target, ext.async_scoped_session):
        target = target.session_factory
    return target if isinstance(target, ext.async_sessionmaker) else None


def async_session(target: object) -> AsyncSession | None:
    """The AsyncSession of an AsyncSession or async_scoped_session (this scope's); None for
    anything else."""
    ext = _ext()
    if ext is None:
        return None
    if isinstance(target, ext.async_scoped_session):
        target = target()
    return target if isinstance(target, ext.AsyncSession) else None


def sessions_engine(maker: async_sessionmaker[Any], engine: object = None) -> Engine:
    """The Engine the maker's sessions' connections come from: the `sync_engine` of its
    AsyncEngine (`engine`, else its bind, its one `binds` engine, or what its sessions'
    get_bind() answers)."""
    if engine is not None:
        side = sync_side(engine)
        if side is None:
            raise ConfigurationError(
                "enable(engine=...) of an async_sessionmaker takes the AsyncEngine its sessions use for the store's "
                f"tables, got {type(engine).__name__} (the store's own sync engine goes in sync_engine=)"
            )
        return side
    ext = _ext()
    bind = maker.kw.get("bind")
    if ext is not None and isinstance(bind, ext.AsyncConnection):
        raise ConfigurationError(
            "enable(): the async_sessionmaker is bound to an AsyncConnection (an outside transaction the sessions "
            "join): the store cannot commit its events with it; bind the async_sessionmaker to the AsyncEngine"
        )
    side = sync_side(bind)
    if side is not None:
        return side
    binds = maker.kw.get("binds") or {}
    engines = {id(e): e for e in (sync_side(b) for b in binds.values()) if e is not None}
    if len(engines) == 1:
        return next(iter(engines.values()))
    if len(engines) > 1:
        raise ConfigurationError(
            "enable(): the async_sessionmaker's binds= name several AsyncEngines; pass engine=<the one for the "
            "store's tables>"
        )
    try:
        probe = maker().sync_session
        try:
            found = probe.get_bind()
        finally:
            probe.close()  # never connected: no I/O
    except Exception as exc:
        raise ConfigurationError(
            f"enable(): could not find the async_sessionmaker's AsyncEngine ({type(exc).__name__}: {exc}); "
            "pass engine=<the AsyncEngine>"
        ) from None
    side = sync_side(found)
    if side is None:
        raise ConfigurationError("enable(): the AsyncSessions' get_bind() gave no AsyncEngine; pass engine=...")
    return side


def own_session_class(maker: async_sessionmaker[Any]) -> tuple[type[Session], Callable[[], None]]:
    """Give `maker` a Session subclass of its own as `sync_session_class`, for the session
    listeners to go on (no Session class another maker uses gets them); the callable
    restores the maker's own setting."""
    original = maker.kw.get("sync_session_class", _MISSING)
    base = original if original not in (_MISSING, None) else maker.class_.sync_session_class
    if not (isinstance(base, type) and issubclass(base, Session)):
        raise ConfigurationError(
            "enable(): the async_sessionmaker's sync_session_class must be a Session subclass (the store listens "
            f"on it), got {base!r}"
        )
    own = type(base.__name__, (base,), {"__module__": base.__module__, "__qualname__": base.__qualname__})
    maker.configure(sync_session_class=own)

    def restore() -> None:
        if maker.kw.get("sync_session_class") is not own:
            return  # the app configured another class since: leave it
        if original is _MISSING:
            del maker.kw["sync_session_class"]
        else:
            maker.configure(sync_session_class=original)

    return own, restore


# --------------------------------------------------------------------------- sessions


class _AsyncOperations:
    """The store operations as coroutines; subclasses say where the sync `Store` call runs."""

    async def _run(self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        raise NotImplementedError

    async def create(self, ns: str, data: dict[str, Any], *, actor: str | None = None) -> State:
        return await self._run(Store.create, ns, data, actor=actor)

    async def create_many(self, ns: str, items: Iterable[dict[str, Any]], *, actor: str | None = None) -> list[State]:
        return await self._run(Store.create_many, ns, entity_items(items), actor=actor)

    async def get(
        self, ns: str, entity_id: str, *, include_deleted: bool = False, as_of: datetime | int | None = None
    ) -> State | None:
        return await self._run(Store.get, ns, entity_id, include_deleted=include_deleted, as_of=as_of)

    async def update(
        self,
        ns: str,
        entity_id: str,
        update: dict[str, Any],
        *,
        expected_version: int | None = None,
        actor: str | None = None,
    ) -> State:
        return await self._run(Store.update, ns, entity_id, update, expected_version=expected_version, actor=actor)

    async def delete(
        self,
        ns: str,
        entity_id: str,
        *,
        hard: bool = False,
        expected_version: int | None = None,
        actor: str | None = None,
    ) -> bool:
        return await self._run(Store.delete, ns, entity_id, hard=hard, expected_version=expected_version, actor=actor)

    async def restore(
        self, ns: str, entity_id: str, *, expected_version: int | None = None, actor: str | None = None
    ) -> State:
        return await self._run(Store.restore, ns, entity_id, expected_version=expected_version, actor=actor)

    async def find(
        self,
        ns: str,
        filter: dict[str, Any] | None = None,
        *,
        sort: dict[str, int] | None = None,
        limit: int | None = None,
        skip: int = 0,
        include_deleted: bool = False,
    ) -> list[State]:
        return await self._run(
            Store.find, ns, filter, sort=sort, limit=limit, skip=skip, include_deleted=include_deleted
        )

    async def link(
        self,
        from_ref: str,
        predicate: str,
        to_ref: str,
        *,
        reverse: str | None = None,
        data: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> None:
        await self._run(Store.link, from_ref, predicate, to_ref, reverse=reverse, data=data, actor=actor)

    async def unlink(self, from_ref: str, predicate: str, to_ref: str, *, actor: str | None = None) -> None:
        await self._run(Store.unlink, from_ref, predicate, to_ref, actor=actor)

    async def links(
        self, ref: str, predicate: str | None = None, *, direction: str = "outbound"
    ) -> list[dict[str, Any]]:
        return await self._run(Store.links, ref, predicate, direction=direction)

    async def related(
        self, ref: str, predicate: str | None = None, *, direction: str = "outbound", include_deleted: bool = False
    ) -> list[State]:
        return await self._run(Store.related, ref, predicate, direction=direction, include_deleted=include_deleted)

    async def history(self, ref: str) -> list[dict[str, Any]]:
        return await self._run(Store.history, ref)


class AsyncStore(_AsyncOperations):
    """`pq.store(async_session)`: the store operations, awaitable, inside the session's
    transaction. Each runs the sync `Store` operation in the session's greenlet
    (`AsyncSession.run_sync`), on the session's connection: its events commit with the
    session's `await session.commit()`, and roll back with it or with a savepoint."""

    def __init__(self, session: AsyncSession, make: Callable[[Session], Store]) -> None:
        self.session = session
        self._make = make

    async def _run(self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        make = self._make

        def call(sync_session: Session) -> T:
            return fn(make(sync_session), *args, **kwargs)

        return await self.session.run_sync(call)


# --------------------------------------------------------------------------- standalone


async def _in_thread(serial: threading.Lock | None, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn` in a worker thread; holding `serial` there, if given (not on the loop)."""
    if serial is None:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def locked() -> T:
        with serial:
            return fn(*args, **kwargs)

    return await asyncio.to_thread(locked)


class AsyncTransaction(_AsyncOperations):
    """`async with db.transaction() as tx`: the operations of one commit, awaitable; each
    runs in a worker thread, one at a time (a unit of work is not shared by threads)."""

    def __init__(self, store: Store, serial: threading.Lock | None = None) -> None:
        self._store = store
        self._serial = serial
        self._lock = asyncio.Lock()

    async def _run(self, fn: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._lock:
            return await _in_thread(self._serial, fn, self._store, *args, **kwargs)


class AsyncParqueDB:
    """`ParqueDB` for asyncio code: the same operations, awaitable. Each runs the sync call
    in a worker thread (`asyncio.to_thread`), on a sync engine of the same database, so the
    event loop never waits on SQL or Parquet.

    `url_or_engine`: an AsyncEngine (the store derives a sync engine of the same database
    and disposes it at close), a URL (an async driver's URL names the same database through
    its sync driver), a sync Engine, or a `ParqueDB` to wrap (`pq.enable(...)`'s handle;
    `aclose()` then closes it). The constructor prepares the schema in the calling thread:
    inside a running loop prefer `await AsyncParqueDB.open(...)`.
    """

    def __init__(
        self,
        url_or_engine: str | Engine | AsyncEngine | ParqueDB = "sqlite://",
        *,
        archive: str | os.PathLike[str] | None = None,
        policy: FlushPolicy | None = None,
        shared: bool = False,
        archive_options: dict[str, Any] | None = None,
        group_commit: bool = True,
        meter: bool = False,
        migrate: MigrateMode = "auto",
        durability: Durability | None = None,
    ) -> None:
        if isinstance(url_or_engine, ParqueDB):
            given = (archive, policy, shared, archive_options, group_commit, meter, migrate, durability)
            if given != (None, None, False, None, True, False, "auto", None):
                raise ConfigurationError("AsyncParqueDB(<a ParqueDB>) wraps it as it is: pass no other options")
            self.sync = url_or_engine
        else:
            self.sync = ParqueDB(
                url_or_engine,
                archive=archive,
                policy=policy,
                shared=shared,
                archive_options=archive_options,
                group_commit=group_commit,
                meter=meter,
                migrate=migrate,
                durability=durability,
            )
        # an in-memory SQLite database is one connection: its calls must not overlap
        self._serial = threading.Lock() if self.sync.runtime.memory else None

    async def _thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await _in_thread(self._serial, fn, *args, **kwargs)

    @classmethod
    async def open(
        cls,
        url_or_engine: str | Engine | AsyncEngine = "sqlite://",
        *,
        archive: str | os.PathLike[str] | None = None,
        policy: FlushPolicy | None = None,
        shared: bool = False,
        archive_options: dict[str, Any] | None = None,
        group_commit: bool = True,
        meter: bool = False,
        migrate: MigrateMode = "auto",
        durability: Durability | None = None,
    ) -> AsyncParqueDB:
        """The constructor, with its schema step in a worker thread."""
        return await asyncio.to_thread(
            cls,
            url_or_engine,
            archive=archive,
            policy=policy,
            shared=shared,
            archive_options=archive_options,
            group_commit=group_commit,
            meter=meter,
            migrate=migrate,
            durability=durability,
        )

    @property
    def engine(self) -> Engine:
        """The sync engine the store runs on."""
        return self.sync.engine

    async def aclose(self) -> None:
        """`ParqueDB.close()` in a worker thread (it waits for a flush in progress)."""
        await self._thread(self.sync.close)

    def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> AsyncParqueDB:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncTransaction]:
        """Several operations in one commit: `async with db.transaction() as tx: await
        tx.create(...)`. Nothing is written if the block raises; the commit runs in a
        worker thread (a task cancelled while it runs gets CancelledError, and the commit
        still completes there: a thread cannot be interrupted)."""
        tx: _Transaction = self.sync._begin()  # no I/O: a unit of work and a lazy connection
        try:
            yield AsyncTransaction(tx.store, self._serial)
        except BaseException:
            await self._thread(tx.end, commit=False)
            raise
        await self._thread(tx.end, commit=True)

    # ------------------------------------------------------------------ entities
    async def create(self, ns: str, data: dict[str, Any], *, actor: str | None = None) -> State:
        return await self._thread(self.sync.create, ns, data, actor=actor)

    async def create_many(self, ns: str, items: Iterable[dict[str, Any]], *, actor: str | None = None) -> list[State]:
        return await self._thread(self.sync.create_many, ns, entity_items(items), actor=actor)

    async def get(
        self, ns: str, entity_id: str, *, include_deleted: bool = False, as_of: datetime | int | None = None
    ) -> State | None:
        return await self._thread(self.sync.get, ns, entity_id, include_deleted=include_deleted, as_of=as_of)

    async def update(
        self,
        ns: str,
        entity_id: str,
        update: dict[str, Any],
        *,
        expected_version: int | None = None,
        actor: str | None = None,
    ) -> State:
        return await self._thread(
            self.sync.update, ns, entity_id, update, expected_version=expected_version, actor=actor
        )

    async def delete(
        self,
        ns: str,
        entity_id: str,
        *,
        hard: bool = False,
        expected_version: int | None = None,
        actor: str | None = None,
    ) -> bool:
        return await self._thread(
            self.sync.delete, ns, entity_id, hard=hard, expected_version=expected_version, actor=actor
        )

    async def restore(
        self, ns: str, entity_id: str, *, expected_version: int | None = None, actor: str | None = None
    ) -> State:
        return await self._thread(self.sync.restore, ns, entity_id, expected_version=expected_version, actor=actor)

    async def find(
        self,
        ns: str,
        filter: dict[str, Any] | None = None,
        *,
        sort: dict[str, int] | None = None,
        limit: int | None = None,
        skip: int = 0,
        include_deleted: bool = False,
    ) -> list[State]:
        return await self._thread(
            self.sync.find, ns, filter, sort=sort, limit=limit, skip=skip, include_deleted=include_deleted
        )

    # ------------------------------------------------------------------ relationships
    async def link(
        self,
        from_ref: str,
        predicate: str,
        to_ref: str,
        *,
        reverse: str | None = None,
        data: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> None:
        await self._thread(self.sync.link, from_ref, predicate, to_ref, reverse=reverse, data=data, actor=actor)

    async def unlink(self, from_ref: str, predicate: str, to_ref: str, *, actor: str | None = None) -> None:
        await self._thread(self.sync.unlink, from_ref, predicate, to_ref, actor=actor)

    async def related(
        self, ref: str, predicate: str | None = None, *, direction: str = "outbound", include_deleted: bool = False
    ) -> list[State]:
        return await self._thread(
            self.sync.related, ref, predicate, direction=direction, include_deleted=include_deleted
        )

    async def links(
        self, ref: str, predicate: str | None = None, *, direction: str = "outbound"
    ) -> list[dict[str, Any]]:
        return await self._thread(self.sync.links, ref, predicate, direction=direction)

    async def history(self, ref: str) -> list[dict[str, Any]]:
        return await self._thread(self.sync.history, ref)

    # ------------------------------------------------------------------ archive
    async def flush(self) -> FlushResult:
        """Move every committed WAL event to the Parquet archive now; returns what it did."""
        return await self._thread(self.sync.flush)

    async def compact(self, threshold: int = 1) -> int:
        return await self._thread(self.sync.compact, threshold)

    async def duckdb(self) -> Any:
        """A DuckDB connection with views `events`, `rels` and `entities` (its queries are
        sync: run them in a thread too if they are long)."""
        return await self._thread(self.sync.duckdb)

    def stats(self) -> dict[str, Any]:
        """In-memory counters only: no I/O."""
        return self.sync.stats()
