"""The session extension: store operations inside the application's own transactions.

`enable(Session)` installs the listeners of `_LISTENERS` on a sessionmaker (`disable`
removes the same ones) and one `commit` listener on the store's engine:

- the events of a session collect in one unit of work, owned by its outermost
  `SessionTransaction`; each savepoint takes a mark of it. A released savepoint keeps what
  it added (it merges into its parent); a rolled-back one returns the unit to its mark.
- The unit is written as WAL rows in the engine's `commit` event: on the session's own
  connection, right before the DBAPI COMMIT, so after every `before_commit` listener and
  the commit's own final flush. Events made anywhere up to then commit with the app's rows.
- `after_commit` of the outermost transaction publishes the unit to the process caches.
- Every other end of the outermost transaction (rollback, close, reset, a failed flush or
  commit, invalidation) discards it: `after_transaction_end` sees them all.

SQLAlchemy fires, for `session.commit()`: innermost savepoints first (`before_commit`,
RELEASE, `after_commit`, `after_transaction_end`), then the outermost `before_commit`,
the final flush, the connection's `commit` event, COMMIT, `after_commit`,
`after_transaction_end` (orm/session.py, `SessionTransaction._prepare_impl`/`commit`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction, scoped_session, sessionmaker

from parquedb_orm.archive.policy import FlushPolicy
from parquedb_orm.core.unit import Mark, UnitOfWork
from parquedb_orm.db import ParqueDB
from parquedb_orm.engine.runtime import Runtime
from parquedb_orm.engine.setup import MigrateMode, prepare, release_runtime
from parquedb_orm.engine.store import Store
from parquedb_orm.errors import ConfigurationError, TransactionError
from parquedb_orm.sql import counters, dialects

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("parquedb_orm")

_TXN_KEY = "parquedb_orm.txn"
_BRIDGE_KEY = "parquedb_orm.bridge"
_NO_UNIT = UnitOfWork()  # what reads see in a session with no store writes yet: never written to

Target = sessionmaker[Any] | scoped_session[Any]


@dataclass(eq=False)
class _Txn:
    """The store's side of one outermost SessionTransaction."""

    root: SessionTransaction
    unit: UnitOfWork
    conn: Connection
    bridge: _Bridge
    #: savepoints open inside it -> what the unit held when each began (None: nothing)
    marks: dict[SessionTransaction, Mark | None] = field(default_factory=dict)
    released: set[SessionTransaction] = field(default_factory=set)
    written: bool = False
    published: bool = False


class _Bridge:
    """One runtime's link to the sessions that write to it: the units waiting for their
    connection's COMMIT, found by connection in the engine's `commit` event."""

    def __init__(self, runtime: Runtime, handle: ParqueDB) -> None:
        self.rt = runtime
        self.handle = handle
        # weak both ways: a session dropped without close() must not pin its connection here
        self.pending: weakref.WeakKeyDictionary[Connection, weakref.ref[_Txn]] = weakref.WeakKeyDictionary()
        self.makers: list[sessionmaker[Any]] = []
        event.listen(runtime.engine, "commit", self._on_commit)

    def _on_commit(self, conn: Connection) -> None:
        ref = self.pending.pop(conn, None)
        txn = ref() if ref is not None else None
        if txn is None:
            return
        txn.written = True
        if txn.unit.empty:
            return
        # an engine in driver-autocommit mode has no transaction to join: open one, so the
        # store's statements are atomic among themselves (COMMIT follows right after)
        dialects.ensure_transaction(conn)
        self.rt.committer.prepare(conn, txn.unit)

    def close(self) -> None:
        for maker in list(self.makers):
            disable(maker)
        if event.contains(self.rt.engine, "commit", self._on_commit):
            event.remove(self.rt.engine, "commit", self._on_commit)


_bridges: dict[int, _Bridge] = {}
_bridges_lock = threading.Lock()


# --------------------------------------------------------------------------- listeners


def _after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    if not transaction.nested:
        return
    txn: _Txn | None = session.info.get(_TXN_KEY)
    if txn is not None and txn.root is session.get_transaction():
        txn.marks[transaction] = txn.unit.mark()


def _after_commit(session: Session) -> None:
    txn: _Txn | None = session.info.get(_TXN_KEY)
    if txn is None:
        return
    nested = session.get_nested_transaction()
    if nested is not None:  # a savepoint was released: its work stays, for the parent
        txn.released.add(nested)
        return
    if not txn.written:
        if txn.unit.empty:
            return
        raise TransactionError(
            "this session committed without committing its connection to the store's database "
            "(a session joined to an outside transaction?): its parquedb events were not written"
        )
    txn.published = True
    if not txn.unit.empty:
        txn.bridge.rt.committer.finish(txn.unit)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    txn: _Txn | None = session.info.get(_TXN_KEY)
    if txn is None:
        return
    if transaction.nested:
        if transaction in txn.marks:
            mark = txn.marks.pop(transaction)
            if transaction in txn.released:
                txn.released.discard(transaction)
            else:
                txn.unit.rollback_to(mark, _issued(txn))
        return
    if transaction is not txn.root:
        return  # a flush's subtransaction: its fate is its enclosing transaction's
    del session.info[_TXN_KEY]
    txn.bridge.pending.pop(txn.conn, None)
    if not txn.published:
        _discard(txn)


def _issued(txn: _Txn) -> dict[str, int]:
    ids = txn.bridge.rt.ids
    return {ns: ids.floor(ns) for ns in {ns for ns, _r in txn.unit.reserved}}


def _discard(txn: _Txn) -> None:
    """The outermost transaction ended without commit: drop its unit. Id blocks it
    reserved inside itself are gone with it, but ids of them may have been shown: raise
    the stored counters above them (a new transaction; the rolled-back one holds no lock)."""
    rt = txn.bridge.rt
    rt.committer.abort(txn.unit)
    floors = dict(txn.unit.id_floors)
    for ns, block in txn.unit.reserved:
        if rt.ids.floor(ns) >= block.start:  # some id of the block was handed out
            floors[ns] = max(floors.get(ns, 0), rt.ids.floor(ns))
    if not floors:
        return
    try:
        with dialects.begin(rt.ids.engine) as conn:
            for ns, floor in sorted(floors.items()):
                counters.raise_to(conn, counters.id_key(ns), floor)
    except Exception:  # this process never reissues them (its floor); other processes might
        log.warning("could not raise the id counters after a rollback: %s", floors, exc_info=True)


_LISTENERS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("after_transaction_create", _after_transaction_create),
    ("after_commit", _after_commit),
    ("after_transaction_end", _after_transaction_end),
)


# --------------------------------------------------------------------------- units


def _bridge(session: Session) -> _Bridge:
    bridge = session.info.get(_BRIDGE_KEY)
    if not isinstance(bridge, _Bridge):
        raise ConfigurationError(
            "this session's sessionmaker was not set up with parquedb_orm.enable(sessionmaker, ...)"
        )
    return bridge


def _read_unit(session: Session) -> UnitOfWork:
    txn: _Txn | None = session.info.get(_TXN_KEY)
    if txn is not None and txn.root is session.get_transaction():
        return txn.unit
    return _NO_UNIT


def _write_unit(session: Session, bridge: _Bridge) -> UnitOfWork:
    txn: _Txn | None = session.info.get(_TXN_KEY)
    if txn is not None and txn.root is session.get_transaction():
        if txn.written:
            raise TransactionError(
                "this transaction has already written its parquedb events (the call came from an "
                "after_commit listener or later): run store operations in a new transaction"
            )
        return txn.unit
    if isinstance(session.bind, Connection):
        raise ConfigurationError(
            "this session is bound to a Connection (joined to an outside transaction): the store cannot "
            "commit its events with that transaction; bind sessions to the Engine"
        )
    conn = session.connection(bind_arguments={"bind": bridge.rt.engine})  # autobegins
    root = session.get_transaction()
    assert root is not None
    txn = _Txn(root, UnitOfWork(), conn, bridge)
    nested = session.get_nested_transaction()
    while nested is not None:  # savepoints already open: rolling one back empties the unit
        if nested.nested:
            txn.marks[nested] = None
        nested = nested.parent
    session.info[_TXN_KEY] = txn
    bridge.pending[conn] = weakref.ref(txn)
    return txn.unit


# --------------------------------------------------------------------------- public


def _maker(target: object, what: str) -> sessionmaker[Any]:
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        return target
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")  # loaded wherever an async maker exists
    if asyncio_ext is not None and isinstance(
        target, (asyncio_ext.async_sessionmaker, asyncio_ext.async_scoped_session)
    ):
        raise ConfigurationError(f"{what}: AsyncSession support is not available yet; use a sync sessionmaker")
    raise ConfigurationError(f"{what} takes a sessionmaker or scoped_session, got {type(target).__name__}")


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
    target: Target,
    *,
    archive: str | os.PathLike[str] | None = None,
    policy: FlushPolicy | None = None,
    shared: bool = False,
    engine: Engine | None = None,
    archive_options: dict[str, Any] | None = None,
    migrate: MigrateMode = "auto",
) -> ParqueDB:
    """Let sessions of `target` (a sessionmaker or scoped_session) carry store operations
    (`store(session)`), committed with theirs. Returns the store's handle (`flush()`,
    `stats()`, `duckdb()`, `close()`, and every `ParqueDB` operation outside sessions).

    `engine` defaults to the sessionmaker's bind (or its single `binds` engine, or what its
    sessions' get_bind() answers). `shared=True` when several processes write the same
    database. `migrate`: "auto" creates or upgrades the store's schema unless the host
    app's Alembic records it, "check" only verifies it is current, False skips the step
    (docs/migrations.md).
    """
    maker = _maker(target, "enable()")
    if engine is not None and not isinstance(engine, Engine):
        raise ConfigurationError(f"enable(engine=...) takes an Engine, got {type(engine).__name__}")
    if isinstance(maker.kw.get("bind"), Connection):
        raise ConfigurationError(
            "enable(): the sessionmaker is bound to a Connection (an outside transaction the sessions join): "
            "the store cannot commit its events with it; bind the sessionmaker to the Engine"
        )
    bind = engine or _engine_of(maker)
    rt = prepare(
        bind, archive=archive, policy=policy, shared=shared, archive_options=archive_options, migrate=migrate
    )
    with _bridges_lock:
        found = _bridges.get(id(rt))
        if found is not None and found.rt is rt:
            bridge = found
            release_runtime(rt)  # the bridge's handle already holds the runtime
        else:
            bridge = _bridges[id(rt)] = _Bridge(rt, ParqueDB._attached(rt, _forget_bridge))
    info = dict(maker.kw.get("info") or {})
    old = info.get(_BRIDGE_KEY)
    if isinstance(old, _Bridge) and old is not bridge:
        disable(maker)
        info = dict(maker.kw.get("info") or {})
    info[_BRIDGE_KEY] = bridge
    maker.configure(info=info)
    # the maker's own info says whether the listeners are in (event.contains() can be fooled
    # by a recycled id() of a garbage-collected maker class)
    if old is not bridge:
        for name, fn in _LISTENERS:
            event.listen(maker, name, fn)
        bridge.makers.append(maker)
    return bridge.handle


def _forget_bridge(rt: Runtime) -> None:
    with _bridges_lock:
        bridge = _bridges.pop(id(rt), None)
    if bridge is not None and bridge.rt is rt:
        bridge.close()


def disable(target: Target) -> None:
    """Remove exactly what `enable` installed on this sessionmaker."""
    maker = _maker(target, "disable()")
    info = dict(maker.kw.get("info") or {})
    bridge = info.pop(_BRIDGE_KEY, None)
    if isinstance(bridge, _Bridge):
        for name, fn in _LISTENERS:
            event.remove(maker, name, fn)
        if maker in bridge.makers:
            bridge.makers.remove(maker)
    maker.configure(info=info)


def _session(target: object, what: str) -> Session:
    if isinstance(target, scoped_session):
        target = target()  # this thread's (or scope's) session
    if isinstance(target, Session):
        return target
    raise ConfigurationError(f"{what} takes a Session or scoped_session, got {type(target).__name__}")


def store(session: Session | scoped_session[Any]) -> Store:
    """The store operations, inside `session`'s transaction."""
    sess = _session(session, "store()")
    bridge = _bridge(sess)
    return Store(
        bridge.rt,
        lambda: _read_unit(sess),
        lambda: sess.connection(bind_arguments={"bind": bridge.rt.engine}),
        lambda: _write_unit(sess, bridge),
    )


def handle(target: Session | Target) -> ParqueDB:
    """The store handle of an enabled sessionmaker, scoped_session or one of their sessions."""
    if isinstance(target, Session):
        return _bridge(target).handle
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        bridge = (target.kw.get("info") or {}).get(_BRIDGE_KEY)
        if isinstance(bridge, _Bridge):
            return bridge.handle
        raise ConfigurationError("this sessionmaker was not set up with parquedb_orm.enable(...)")
    return handle(_maker(target, "handle()"))
