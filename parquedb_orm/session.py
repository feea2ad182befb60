"""The session extension: run store operations inside the application's own transactions.

`enable(Session)` installs four session-event listeners on a sessionmaker (and
`disable(Session)` removes the same four): events buffer in a unit of work kept in
`session.info`; `before_commit` writes them as WAL rows on the session's connection, so
they commit atomically with the application's rows; `after_commit` publishes them to the
process caches; a rollback discards them, leaving no trace in SQL or caches.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from .errors import ConfigurationError
from .policy import FlushPolicy
from .runtime import Runtime
from .store import Store
from .unit import UnitOfWork

_UOW_KEY = "parquedb_orm.uow"
_RT_KEY = "parquedb_orm.runtime"
_runtimes: dict[int, Runtime] = {}
_runtimes_lock = threading.Lock()


def runtime_for(engine: Engine, **options: Any) -> Runtime:
    """The one Runtime of this engine in this process (created on first use)."""
    with _runtimes_lock:
        rt = _runtimes.get(id(engine))
        if rt is None or rt.engine is not engine:
            rt = _runtimes[id(engine)] = Runtime(engine, **options)
        return rt


def forget_runtime(engine: Engine) -> None:
    with _runtimes_lock:
        rt = _runtimes.pop(id(engine), None)
    if rt is not None and rt.scheduler is not None:
        rt.scheduler.close()


def _uow(session: Session, create: bool = True) -> UnitOfWork | None:
    uow = session.info.get(_UOW_KEY)
    if uow is None and create:
        uow = session.info[_UOW_KEY] = UnitOfWork()
    return uow


def _runtime(session: Session) -> Runtime:
    rt = session.info.get(_RT_KEY)
    if rt is None:
        raise ConfigurationError(
            "this session's sessionmaker was not set up with parquedb_orm.enable(sessionmaker, ...)"
        )
    return rt  # type: ignore[no-any-return]


def _before_commit(session: Session) -> None:
    uow = _uow(session, create=False)
    if uow is None or uow.empty:
        return
    rt = _runtime(session)
    rt.prepare_commit(session.connection(), uow)


def _after_commit(session: Session) -> None:
    uow = session.info.pop(_UOW_KEY, None)
    if uow is not None and not uow.empty:
        _runtime(session).finish_commit(uow)


def _after_rollback(session: Session) -> None:
    uow = session.info.pop(_UOW_KEY, None)
    if uow is not None:
        _runtime(session).abort(uow)


def _after_soft_rollback(session: Session, previous_transaction: Any) -> None:
    if not session.in_transaction():
        _after_rollback(session)


_LISTENERS = (
    ("before_commit", _before_commit),
    ("after_commit", _after_commit),
    ("after_rollback", _after_rollback),
    ("after_soft_rollback", _after_soft_rollback),
)


def enable(
    maker: sessionmaker[Any],
    *,
    archive: str | os.PathLike[str] | None = None,
    policy: FlushPolicy | None = None,
    shared: bool = False,
    engine: Engine | None = None,
    archive_options: dict[str, Any] | None = None,
) -> Runtime:
    """Let sessions of `maker` carry store operations (`store(session)`), committed with theirs.

    `engine` defaults to the sessionmaker's bind. `shared=True` when several processes
    write the same database (cached reads then check the database's high-water marks).
    """
    if not isinstance(maker, sessionmaker):
        raise ConfigurationError(f"enable() takes a sessionmaker, got {type(maker).__name__}")
    bind = engine or maker.kw.get("bind")
    if not isinstance(bind, Engine):
        raise ConfigurationError("enable(): the sessionmaker has no Engine bind; pass engine=...")
    from .setup import prepare

    rt = prepare(bind, archive=archive, policy=policy, shared=shared, archive_options=archive_options)
    info = dict(maker.kw.get("info") or {})
    already = _RT_KEY in info
    info[_RT_KEY] = rt
    maker.configure(info=info)
    # the maker's own info says whether the listeners are in (event.contains() can be fooled
    # by a recycled id() of a garbage-collected maker class)
    if not already:
        for name, fn in _LISTENERS:
            event.listen(maker, name, fn)
    return rt


def disable(maker: sessionmaker[Any]) -> None:
    """Remove exactly what `enable` installed."""
    info = dict(maker.kw.get("info") or {})
    if info.pop(_RT_KEY, None) is not None:
        for name, fn in _LISTENERS:
            event.remove(maker, name, fn)
    maker.configure(info=info)


def store(session: Session) -> Store:
    """The store operations, inside `session`'s transaction."""
    if not isinstance(session, Session):
        raise ConfigurationError(f"store() takes a Session, got {type(session).__name__}")
    rt = _runtime(session)

    def current_uow() -> UnitOfWork:
        uow = _uow(session)
        assert uow is not None
        return uow

    return Store(rt, current_uow, session.connection)
