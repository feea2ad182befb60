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
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction, scoped_session, sessionmaker

from parquedb_orm.core.unit import Mark, UnitOfWork
from parquedb_orm.db import ParqueDB
from parquedb_orm.engine.runtime import Runtime
from parquedb_orm.engine.store import Store
from parquedb_orm.errors import ConfigurationError, TransactionError
from parquedb_orm.orm import aio
from parquedb_orm.sql import counters, dialects

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session

log = logging.getLogger("parquedb_orm")

_TXN_KEY = "parquedb_orm.txn"
_BRIDGE_KEY = "parquedb_orm.bridge"
#: the Engine the maker's sessions run on, when it is not the runtime's own (an AsyncEngine's
#: sync_engine: the runtime then works on a sync engine of the same database)
_BIND_KEY = "parquedb_orm.bind"
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
        #: (maker, uninstall) of every maker attached to this bridge
        self.makers: list[tuple[Any, Callable[[], None]]] = []
        #: engines whose connections' COMMIT writes units: the runtime's, and the sync side of
        #: any AsyncEngine whose sessions write to this runtime
        self.binds: list[Engine] = []
        self.add_bind(runtime.engine)

    def add_bind(self, engine: Engine) -> None:
        if not any(b is engine for b in self.binds):
            self.binds.append(engine)
            event.listen(engine, "commit", self._on_commit)

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

    def detach(self, maker: Any) -> None:
        """Remove what `orm.install.attach` put on `maker`."""
        for pair in [p for p in self.makers if p[0] is maker]:
            self.makers.remove(pair)
            pair[1]()

    def close(self) -> None:
        for maker, _undo in list(self.makers):
            self.detach(maker)
        for engine in self.binds:
            if event.contains(engine, "commit", self._on_commit):
                event.remove(engine, "commit", self._on_commit)
        self.binds.clear()


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


LISTENERS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("after_transaction_create", _after_transaction_create),
    ("after_commit", _after_commit),
    ("after_transaction_end", _after_transaction_end),
)


# --------------------------------------------------------------------------- units


def bridge_of(session: Session) -> _Bridge:
    bridge = session.info.get(_BRIDGE_KEY)
    if not isinstance(bridge, _Bridge):
        raise ConfigurationError(
            "this session's sessionmaker was not set up with parquedb_orm.enable(sessionmaker, ...)"
        )
    return bridge


def bind_of(session: Session, bridge: _Bridge) -> Engine:
    """The engine of `session`'s connection to the store's database."""
    bind = session.info.get(_BIND_KEY)
    return bind if isinstance(bind, Engine) else bridge.rt.engine


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
    conn = session.connection(bind_arguments={"bind": bind_of(session, bridge)})  # autobegins
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


# --------------------------------------------------------------------------- store


def _session(target: object, what: str) -> Session:
    if isinstance(target, scoped_session):
        target = target()  # this thread's (or scope's) session
    if isinstance(target, Session):
        return target
    found = aio.async_session(target)
    if found is not None:
        return found.sync_session
    raise ConfigurationError(
        f"{what} takes a Session, scoped_session, AsyncSession or async_scoped_session, got {type(target).__name__}"
    )


@overload
def store(session: Session | scoped_session[Any]) -> Store: ...


@overload
def store(session: AsyncSession | async_scoped_session[Any]) -> aio.AsyncStore: ...


def store(
    session: Session | scoped_session[Any] | AsyncSession | async_scoped_session[Any],
) -> Store | aio.AsyncStore:
    """The store operations, inside `session`'s transaction. For an AsyncSession (or an
    async_scoped_session) they are awaitable: `await pq.store(session).create(...)`."""
    found = aio.async_session(session)
    if found is not None:
        bridge_of(found.sync_session)  # refused now, as for a sync session, not at the first await
        return aio.AsyncStore(found, _store_of)
    return _store_of(_session(session, "store()"))


def _store_of(sess: Session) -> Store:
    bridge = bridge_of(sess)
    return Store(
        bridge.rt,
        lambda: _read_unit(sess),
        lambda: sess.connection(bind_arguments={"bind": bind_of(sess, bridge)}),
        lambda: _write_unit(sess, bridge),
    )
