"""The entry points: `enable` installs every listener of the ORM layer on a sessionmaker
(`disable` removes the same ones, from the same list) and `handle` finds the store."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from parquedb_orm.archive.iceberg import Iceberg
from parquedb_orm.archive.policy import FlushPolicy
from parquedb_orm.db import ParqueDB, acquire_sync_engine, check_sync_engine
from parquedb_orm.engine.runtime import Runtime
from parquedb_orm.engine.setup import MigrateMode, prepare, release_runtime
from parquedb_orm.errors import ConfigurationError
from parquedb_orm.orm import aio, capture
from parquedb_orm.orm import session as sess
from parquedb_orm.orm.session import _BIND_KEY, _BRIDGE_KEY, _Bridge
from parquedb_orm.sql.dialects import Durability

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_scoped_session, async_sessionmaker

    AsyncTarget = async_sessionmaker[Any] | async_scoped_session[Any]

Target = sessionmaker[Any] | scoped_session[Any]

#: every session listener of the ORM layer: installed and removed by the same loops
LISTENERS = (*sess.LISTENERS, *capture.LISTENERS)

_bridges: dict[int, _Bridge] = {}
_bridges_lock = threading.Lock()


def _maker(target: object, what: str) -> sessionmaker[Any] | async_sessionmaker[Any]:
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        return target
    found = aio.async_maker(target)
    if found is not None:
        return found
    raise ConfigurationError(
        f"{what} takes a sessionmaker, scoped_session, async_sessionmaker or async_scoped_session, "
        f"got {type(target).__name__}"
    )


def _engine_of(maker: sessionmaker[Any]) -> Engine:
    """The one Engine sessions of `maker` use: its bind, the single engine of its `binds`,
    or what a session's own get_bind() answers (Flask-SQLAlchemy, routing sessions)."""
    bind = maker.kw.get("bind")
    if isinstance(bind, Engine):
        return bind
    binds = maker.kw.get("binds") or {}
    engines = {id(b): b for b in binds.values() if isinstance(b, Engine)}
    if len(engines) == 1:
        return next(iter(engines.values()))
    if len(engines) > 1:
        raise ConfigurationError(
            "enable(): the sessionmaker's binds= name several engines; pass engine=<the one for the store's tables>"
        )
    try:
        probe = maker()
        try:
            found = probe.get_bind()
        finally:
            probe.close()
    except Exception as exc:
        raise ConfigurationError(
            f"enable(): could not find the sessionmaker's engine ({type(exc).__name__}: {exc}); pass engine=... "
            "(with Flask-SQLAlchemy: call enable() inside an app context, or pass engine=db.engine)"
        ) from None
    if not isinstance(found, Engine):
        raise ConfigurationError("enable(): the sessions' get_bind() gave no Engine; pass engine=...")
    return found


def enable(
    target: Target | AsyncTarget,
    *,
    archive: str | os.PathLike[str] | None = None,
    policy: FlushPolicy | None = None,
    shared: bool = False,
    engine: Engine | AsyncEngine | None = None,
    archive_options: dict[str, Any] | None = None,
    migrate: MigrateMode = "auto",
    sync_engine: Engine | None = None,
    durability: Durability | None = None,
    cache_entries: int | None = None,
    iceberg: Iceberg | None = None,
) -> ParqueDB:
    """Let sessions of `target` (a sessionmaker or scoped_session, or an async_sessionmaker
    or async_scoped_session) carry store operations (`store(session)`), committed with
    theirs. Returns the store's handle (`flush()`, `stats()`, `duckdb()`, `close()`, and
    every `ParqueDB` operation outside sessions).

    `engine` defaults to the sessionmaker's bind (or its single `binds` engine, or what its
    sessions' get_bind() answers). `shared=True` when several processes write the same
    database. `migrate`: "auto" creates or upgrades the store's schema unless the host
    app's Alembic records it, "check" only verifies it is current, False skips the step
    (docs/migrations.md). `durability` ("normal" or "full", docs/durability.md): what the
    engine's settings must give; they are read back and never changed (a ConfigurationError
    says how to get it), and the logger "parquedb_orm" says once per engine what they give.
    `cache_entries`: the bound of the entity cache, in entities (docs/scaling.md).
    `iceberg`: `pq.Iceberg(...)` publishes the archive as Iceberg tables (docs/iceberg.md).

    Async makers (docs/async.md): the store runs on a sync engine of the sessions'
    database, derived from the AsyncEngine's URL unless `sync_engine` is given, and
    flushes in the background unless `policy` says otherwise.
    """
    maker = _maker(target, "enable()")
    if not isinstance(maker, sessionmaker):
        return _enable_async(
            maker,
            archive=archive,
            policy=policy,
            shared=shared,
            engine=engine,
            archive_options=archive_options,
            migrate=migrate,
            sync_engine=sync_engine,
            durability=durability,
            cache_entries=cache_entries,
            iceberg=iceberg,
        )
    if sync_engine is not None:
        raise ConfigurationError("enable(sync_engine=...) is for async_sessionmakers; use engine= here")
    if engine is not None and not isinstance(engine, Engine):
        raise ConfigurationError(f"enable(engine=...) takes an Engine, got {type(engine).__name__}")
    if isinstance(maker.kw.get("bind"), Connection):
        raise ConfigurationError(
            "enable(): the sessionmaker is bound to a Connection (an outside transaction the sessions join): "
            "the store cannot commit its events with it; bind the sessionmaker to the Engine"
        )
    bind = engine or _engine_of(maker)
    rt = prepare(
        bind,
        archive=archive,
        policy=policy,
        shared=shared,
        archive_options=archive_options,
        migrate=migrate,
        durability=durability,
        cache_entries=cache_entries,
        iceberg=iceberg,
    )
    bridge = bridge_for(rt)
    attach(maker, bridge, listen_on=maker)
    return bridge.handle


def _enable_async(
    maker: async_sessionmaker[Any],
    *,
    archive: str | os.PathLike[str] | None,
    policy: FlushPolicy | None,
    shared: bool,
    engine: object,
    archive_options: dict[str, Any] | None,
    migrate: MigrateMode,
    sync_engine: Engine | None,
    durability: Durability | None,
    cache_entries: int | None = None,
    iceberg: Iceberg | None = None,
) -> ParqueDB:
    """`enable()` of an async maker: the runtime on a sync engine of the sessions' database;
    the session listeners on a Session subclass of the maker's own, the `commit` listener
    on the AsyncEngine's `sync_engine` (orm/aio.py says why)."""
    bind = aio.sessions_engine(maker, engine)
    if sync_engine is None:
        runtime_engine = acquire_sync_engine(bind)
        release: Callable[[], None] | None = ParqueDB._releaser(runtime_engine)
    else:
        runtime_engine, release = check_sync_engine(bind, sync_engine), None
    try:
        # a flush inline in a commit would hold up the event loop for its Parquet writes
        rt = prepare(
            runtime_engine,
            archive=archive,
            policy=policy or FlushPolicy(mode="background"),
            shared=shared,
            archive_options=archive_options,
            migrate=migrate,
            durability=durability,
            cache_entries=cache_entries,
            iceberg=iceberg,
        )
    except BaseException:
        if release is not None:
            release()
        raise
    bridge = bridge_for(rt)
    if release is not None:
        bridge.handle._hold(runtime_engine, release)
    found: ParqueDB = bridge.handle
    old: object = (maker.kw.get("info") or {}).get(_BRIDGE_KEY)
    if old is bridge:
        return found  # enabled already: its class and listeners are in place
    if isinstance(old, _Bridge):
        old.detach(maker)  # restores the maker's own Session class before we subclass it
    own, restore = aio.own_session_class(maker)
    attach(maker, bridge, listen_on=own, bind=bind)
    bridge.makers.append((maker, restore))  # after attach's uninstall: listeners off, then the class
    return found


def bridge_for(rt: Runtime) -> _Bridge:
    """The one bridge of a prepared runtime (holding the reference `prepare` took)."""
    with _bridges_lock:
        found = _bridges.get(id(rt))
        if found is not None and found.rt is rt:
            release_runtime(rt)  # the bridge's handle already holds the runtime
            return found
        bridge = _bridges[id(rt)] = _Bridge(rt, ParqueDB._attached(rt, _forget_bridge))
        return bridge


def attach(maker: Any, bridge: _Bridge, *, listen_on: Any, bind: Engine | None = None) -> None:
    """Point `maker`'s sessions at `bridge` (through their info) and put every listener on
    `listen_on` (the maker itself, or the sync Session class an async maker builds on).
    `bind`: the engine the sessions' connections come from, if not the runtime's."""
    info = dict(maker.kw.get("info") or {})
    old = info.get(_BRIDGE_KEY)
    if isinstance(old, _Bridge) and old is not bridge:
        old.detach(maker)
        info = dict(maker.kw.get("info") or {})
    info[_BRIDGE_KEY] = bridge
    if bind is not None:
        bridge.add_bind(bind)
        info[_BIND_KEY] = bind
    maker.configure(info=info)
    # the maker's own info says whether the listeners are in (event.contains() can be fooled
    # by a recycled id() of a garbage-collected maker class)
    if old is not bridge:
        for name, fn in LISTENERS:
            event.listen(listen_on, name, fn)

        def uninstall() -> None:
            for name, fn in LISTENERS:
                if event.contains(listen_on, name, fn):
                    event.remove(listen_on, name, fn)
            kept = dict(maker.kw.get("info") or {})
            kept.pop(_BRIDGE_KEY, None)
            kept.pop(_BIND_KEY, None)
            maker.configure(info=kept)

        bridge.makers.append((maker, uninstall))


def _forget_bridge(rt: Runtime) -> None:
    with _bridges_lock:
        bridge = _bridges.pop(id(rt), None)
    if bridge is not None and bridge.rt is rt:
        bridge.close()


def disable(target: Target | AsyncTarget) -> None:
    """Remove exactly what `enable` installed on this sessionmaker."""
    maker = _maker(target, "disable()")
    bridge = (maker.kw.get("info") or {}).get(_BRIDGE_KEY)
    if isinstance(bridge, _Bridge):
        bridge.detach(maker)


def handle(target: Session | AsyncSession | Target | AsyncTarget) -> ParqueDB:
    """The store handle of an enabled sessionmaker, scoped_session or one of their sessions
    (or of their async counterparts)."""
    if isinstance(target, Session):
        return sess.bridge_of(target).handle
    # an async_scoped_session names its maker here, not this scope's session
    found = aio.async_session(target) if aio.async_maker(target) is None else None
    if found is not None:
        return sess.bridge_of(found.sync_session).handle
    maker = _maker(target, "handle()")
    bridge = (maker.kw.get("info") or {}).get(_BRIDGE_KEY)
    if isinstance(bridge, _Bridge):
        return bridge.handle
    raise ConfigurationError("this sessionmaker was not set up with parquedb_orm.enable(...)")
