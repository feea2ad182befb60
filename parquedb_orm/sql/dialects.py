"""Every dialect-specific SQL decision, kept in one place.

Code elsewhere asks for a capability (`capabilities(conn).retire_by_table_swap`), not for a
dialect name, so a test can switch a capability off on SQLite and run the other path.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from sqlalchemy import Connection, Engine, Table, event, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from parquedb_orm.errors import ConfigurationError
from parquedb_orm.sql.models import Counter

T = TypeVar("T")


@dataclass(frozen=True)
class Capabilities:
    #: one write lock for the whole database (SQLite): a transaction that holds it blocks
    #: every other connection's writes, its own process's included
    single_writer: bool
    #: deletes are billed a written row each: retire flushed WAL rows by rebuilding the
    #: table around the few rows kept (DROP costs no written row) instead of DELETE
    retire_by_table_swap: bool
    #: shared mode numbers a commit without a lock: read the floor, insert at floor + 1
    #: unless that key is taken (a unique-key conflict waits for the other transaction,
    #: then says so), and retry. Needs reads that see the latest commits (READ COMMITTED)
    optimistic_numbering: bool = False
    #: InnoDB: plain SELECTs read a snapshot taken at the transaction's first read (the
    #: floor needs a locking read), and an INSERT ... SELECT takes gap locks that deadlock
    #: concurrent inserters: committers of a namespace always take its row lock first
    snapshot_reads: bool = False


_CAPABILITIES = {
    "sqlite": Capabilities(single_writer=True, retire_by_table_swap=True),
    "postgresql": Capabilities(single_writer=False, retire_by_table_swap=False, optimistic_numbering=True),
    "mysql": Capabilities(single_writer=False, retire_by_table_swap=False, snapshot_reads=True),
}
_overrides: weakref.WeakKeyDictionary[Any, Capabilities] = weakref.WeakKeyDictionary()


def capabilities(bind: Connection | Engine) -> Capabilities:
    # kept on the dialect object: asked several times per commit
    dialect = bind.dialect
    found: Capabilities | None = dialect.__dict__.get("_parquedb_caps")
    if found is None:
        found = _overrides.get(dialect) or _CAPABILITIES[family(bind)]
        dialect.__dict__["_parquedb_caps"] = found
    return found


def override_capabilities(engine: Engine, **changes: bool) -> None:
    """Tests: run another path on this engine (e.g. `retire_by_table_swap=False` on SQLite)."""
    _overrides[engine.dialect] = replace(capabilities(engine), **changes)
    engine.dialect.__dict__["_parquedb_caps"] = _overrides[engine.dialect]


def holds_write_lock(conn: Connection) -> bool:
    """Does this connection's transaction hold a database-wide write lock that a second
    connection of ours would wait on?"""
    return capabilities(conn).single_writer and in_write_transaction(conn)


def lock_flush(conn: Connection) -> None:
    """One flusher at a time per database (SQLite: the write lock; others: a lock row/key)."""
    fam = family(conn)
    if fam == "sqlite":
        conn.execute(SQLITE_WRITE_LOCK)
    elif fam == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key("flush")})
    else:
        lock_namespaces(conn, ["_flush"])


def family(bind: Connection | Engine) -> str:
    """'sqlite', 'postgresql' or 'mysql' (MariaDB included)."""
    name = bind.dialect.name
    if name in ("mysql", "mariadb"):
        return "mysql"
    if name not in ("sqlite", "postgresql"):
        raise ConfigurationError(f"unsupported database {name!r}: use SQLite, PostgreSQL or MySQL/MariaDB")
    return name


def is_memory_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")


#: what a returned commit survives (docs/durability.md). On SQLite: "normal" is WAL +
#: synchronous=NORMAL (a crash of the process, not always a power loss or OS crash),
#: "full" is WAL + synchronous=FULL (also a power loss)
Durability = Literal["normal", "full"]
DURABILITIES: tuple[Durability, ...] = ("normal", "full")
#: the URL form's default: SQLite's own advice for WAL, and what the store always used
DEFAULT_DURABILITY: Durability = "normal"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_SYNCHRONOUS: dict[Durability, str] = {"normal": "NORMAL", "full": "FULL"}
#: key in a pool connection record's `info`: the durability its connection was set to
_RECORD_KEY = "parquedb_durability"


def check_durability(value: object, what: str = "durability") -> Durability | None:
    """`value` as a durability option (None: not given), or a ConfigurationError."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in DURABILITIES:
        raise ConfigurationError(f'{what} must be "normal" or "full" (docs/durability.md), got {value!r}')
    return value


class SqliteSettings:
    """Our pragmas on every connection of one engine: at connect, and at checkout for a
    connection that has not got the current ones (pooled before they were applied, or
    under another durability). One object per engine, kept by its side engine too (its
    pool copies the listeners), so a change of `durability` reaches both."""

    def __init__(self, durability: Durability) -> None:
        self.durability: Durability = durability

    def connect(self, dbapi_conn: Any, record: Any) -> None:
        self._apply(dbapi_conn, record)

    def checkout(self, dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if record.info.get(_RECORD_KEY) != self.durability:
            self._apply(dbapi_conn, record)

    def _apply(self, dbapi_conn: Any, record: Any) -> None:
        durability = self.durability
        cur = dbapi_conn.cursor()
        try:
            # the timeout first: switching a file to WAL may wait for another connection
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            # WAL: readers never block the writer, and a commit writes its pages once
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={_SYNCHRONOUS[durability]}")
        finally:
            cur.close()
        if record is not None:
            record.info[_RECORD_KEY] = durability


_sqlite_settings: weakref.WeakKeyDictionary[Engine, SqliteSettings] = weakref.WeakKeyDictionary()
#: engines made by create_engine_for: their settings are ours, not the user's
_created: weakref.WeakSet[Engine] = weakref.WeakSet()


def apply_sqlite_settings(engine: Engine, durability: Durability) -> None:
    """Our pragmas (WAL journal, `durability`'s synchronous, a 30 s busy timeout) on every
    connection of this SQLite file engine: new ones when they connect, pooled ones at their
    next checkout. Applying again with another durability changes it for both."""
    found = _sqlite_settings.get(engine)
    if found is not None:
        found.durability = durability
        return
    settings = _sqlite_settings[engine] = SqliteSettings(durability)
    event.listen(engine, "connect", settings.connect)
    event.listen(engine, "checkout", settings.checkout)


def applied_durability(engine: Engine) -> Durability | None:
    """The durability our pragmas give this engine's connections, if we set them."""
    found = _sqlite_settings.get(engine)
    return found.durability if found is not None else None


def created_here(engine: Engine) -> bool:
    """Was `engine` made by create_engine_for (the URL form), not by the user?"""
    return engine in _created


def create_engine_for(url: str, durability: Durability | None = None, **kwargs: Any) -> Engine:
    """The store's own engine for a URL. A SQLite file gets our pragmas with `durability`
    (default "normal"); an in-memory one refuses a durability, having none."""
    from sqlalchemy import create_engine

    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError(f"invalid database URL {url!r}: {exc}") from None
    sqlite_file = False
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            if durability is not None:
                raise ConfigurationError(
                    f"durability={durability!r}: an in-memory SQLite database ends with its process, no commit "
                    "survives a crash; use a file (sqlite:///app.db) or leave durability out"
                )
            # one shared in-memory database for every thread, not one per connection
            kwargs.setdefault("poolclass", StaticPool)
            kwargs.setdefault("connect_args", {"check_same_thread": False})
        else:
            sqlite_file = True
            kwargs.setdefault("connect_args", {"timeout": 30})
            kwargs.setdefault("pool_size", 32)  # many writer threads may wait on the write lock
    engine = create_engine(parsed, **kwargs)
    if sqlite_file:
        apply_sqlite_settings(engine, durability or DEFAULT_DURABILITY)
    _created.add(engine)
    return engine


def side_engine(engine: Engine) -> Engine:
    """An engine with a pool of its own on the same database, for the store's short
    autonomous transactions (id blocks) taken while a caller holds a connection: drawing
    them from the app's pool could wait forever once its sessions hold every connection.
    Same creator and connect listeners (pragmas, search_path; the user's own on an engine
    of theirs); an in-memory SQLite database exists only in its one connection, so it
    keeps that."""
    if is_memory_sqlite(engine):
        return engine
    from sqlalchemy import create_engine

    side = create_engine(engine.url, pool=engine.pool.recreate())
    settings = _sqlite_settings.get(engine)
    if settings is not None:  # the copied listeners are this object's: it answers for both
        _sqlite_settings[side] = settings
    if engine in _created:
        _created.add(side)
    return side


def sqlite_file_pragmas(dbapi_conn: Any, record: Any) -> None:
    """Our pragmas with durability "normal", as a `connect` listener of any engine (the
    benchmarks give every system's SQLite file the store's settings with it)."""
    SqliteSettings(DEFAULT_DURABILITY).connect(dbapi_conn, record)


#: a write statement that touches no row: it only takes SQLite's write lock
SQLITE_WRITE_LOCK = text("UPDATE counters SET value = value WHERE 0")


def lock_namespaces(conn: Connection, namespaces: list[str], side: Engine | None = None) -> None:
    """Serialise committers of the same namespaces until the transaction ends, so that
    sequence numbers follow commit order. Costs no written row on any backend:

    - SQLite: one no-op write takes the database write lock (0 rows read or written);
    - PostgreSQL: transaction-scoped advisory locks, in sorted order;
    - MySQL/MariaDB: row locks on the namespaces' `id:<ns>` counter rows (which exist once
      the namespace has an entity; created with value 0 otherwise), in sorted order.
    """
    fam = family(conn)
    names = sorted(set(namespaces))
    if fam == "sqlite":
        conn.execute(SQLITE_WRITE_LOCK)
    elif fam == "postgresql":
        for ns in names:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(ns)})
    else:
        keys = [f"id:{ns}" for ns in names]
        stmt = select(Counter.name).where(Counter.name.in_(keys)).order_by(Counter.name).with_for_update()
        if side is not None:
            # rows missing are created first, in a short transaction of its own, and found
            # with a plain read: a locking read of a missing row gap-locks, and two first
            # commits of a namespace (or this transaction and that short one) then deadlock
            seen = set(conn.execute(select(Counter.name).where(Counter.name.in_(keys))).scalars())
            missing = [{"name": k, "value": 0} for k in keys if k not in seen]
            if missing:
                in_own_transaction(side, lambda own: insert_ignore(own, Counter.__table__, missing))  # type: ignore[arg-type]
            conn.execute(stmt)
            return
        found = set(conn.execute(stmt).scalars())
        missing_rows = [{"name": k, "value": 0} for k in keys if k not in found]
        if missing_rows:
            insert_ignore(conn, Counter.__table__, missing_rows)  # type: ignore[arg-type]
            conn.execute(stmt)


#: driver error codes of a transaction the server rolled back to break a deadlock or a
#: lock wait: the whole transaction may run again. MySQL/MariaDB: 1213 deadlock, 1205 lock
#: wait timeout; PostgreSQL: SQLSTATE 40P01 deadlock, 40001 serialization failure
_MYSQL_RETRYABLE = frozenset({1205, 1213})
_PG_RETRYABLE = frozenset({"40P01", "40001"})


def rolled_back_to_retry(exc: BaseException) -> bool:
    """Did the server abort this transaction to resolve contention (so running it again is
    the remedy), rather than refuse it?"""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _PG_RETRYABLE or getattr(orig, "pgcode", None) in _PG_RETRYABLE:
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    code = args[0] if args else None
    return isinstance(code, int) and code in _MYSQL_RETRYABLE


def in_own_transaction(engine: Engine, fn: Callable[[Connection], T], attempts: int = 5) -> T:
    """`fn` in a short transaction of its own, run again when it loses a race: a duplicate
    key, or a deadlock (InnoDB gap-locks a missing row that an UPDATE or a locking read
    looked for). Being its own transaction, it is safe to repeat."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            with begin(engine) as conn:
                return fn(conn)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _lock_key(ns: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock."""
    digest = hashlib.blake2b(f"parquedb:{ns}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def insert_ignore(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows, skipping those whose primary key exists already."""
    fam = family(conn)
    if fam == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(table).on_conflict_do_nothing(), rows)
    elif fam == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        conn.execute(sqlite_insert(table).on_conflict_do_nothing(), rows)
    else:
        conn.execute(insert(table).prefix_with("IGNORE"), rows)


def insert_skipping_taken_keys(conn: Connection, table: Table) -> Any:
    """An INSERT that skips rows whose primary key exists (its rowcount says how many went in)."""
    fam = family(conn)
    if fam == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if fam == "sqlite":
        return insert(table).prefix_with("OR IGNORE")
    return insert(table).prefix_with("IGNORE")


def greatest(conn: Connection, column: Any, value: int) -> Any:
    """SQL max of a column and a number (SQLite's scalar max(), GREATEST elsewhere)."""
    from sqlalchemy import func, literal

    if family(conn) == "sqlite":
        return func.max(column, literal(value))
    return func.greatest(column, literal(value))


def ensure_transaction(conn: Connection) -> None:
    """Make the store's statements on `conn` one transaction, whatever the engine's setup.

    pysqlite in driver-autocommit mode (`isolation_level=None`: SQLAlchemy's
    `isolation_level="AUTOCOMMIT"`, or the pysqlite savepoint recipe) commits each
    statement on its own unless someone emits BEGIN. The recipe's own `begin` listener
    does; where nobody has, emit it here. pysqlite's default mode opens a transaction at
    the first write by itself and is left to do so."""
    if conn.dialect.name != "sqlite":
        return
    dbapi = _driver_connection(conn)
    if dbapi is None or getattr(dbapi, "in_transaction", True):
        return
    if getattr(dbapi, "isolation_level", "") is None:
        conn.exec_driver_sql("BEGIN")


@contextlib.contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """`engine.begin()` for the store's own transactions, atomic on every engine setup."""
    with engine.begin() as conn:
        ensure_transaction(conn)
        yield conn


@contextlib.contextmanager
def durable_begin(engine: Engine) -> Iterator[Connection]:
    """`begin(engine)` whose COMMIT is durable on power loss, whatever the connections'
    setting: SQLite syncs the WAL at this commit (synchronous=FULL around it, then back);
    PostgreSQL waits for the WAL flush (synchronous_commit=on, this transaction only).
    MySQL has no per-transaction switch: innodb_flush_log_at_trx_commit decides
    (docs/durability.md)."""
    fam = family(engine)
    with engine.connect() as conn:
        before = None
        if fam == "sqlite":  # set outside the transaction; it applies to the commit
            before = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            conn.exec_driver_sql("PRAGMA synchronous=FULL")
            conn.commit()  # ends SQLAlchemy's autobegun (empty) transaction
        try:
            with conn.begin():
                ensure_transaction(conn)
                if fam == "postgresql":
                    conn.exec_driver_sql("SET LOCAL synchronous_commit TO on")
                yield conn
        finally:
            if fam == "sqlite":
                conn.rollback()
                conn.exec_driver_sql(f"PRAGMA synchronous={int(before if before is not None else 2)}")
                conn.commit()


def take_write_lock(conn: Connection) -> None:
    """SQLite: make sure this transaction holds the database write lock before a commit
    numbers its events (so numbers follow commit order). A transaction that has written
    holds it already; one that has not begins with BEGIN IMMEDIATE, which is transaction
    control, not a billed statement. Other databases: nothing (see lock_namespaces)."""
    if not capabilities(conn).single_writer:
        return
    dbapi = _driver_connection(conn)
    if dbapi is not None and not getattr(dbapi, "in_transaction", True):
        if isinstance(dbapi, sqlite3.Connection):
            dbapi.execute("BEGIN IMMEDIATE")  # transaction control, as SQLAlchemy sends BEGIN itself
        else:  # aiosqlite's connection: its execute is a coroutine; go through SQLAlchemy
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif dbapi is None or getattr(dbapi, "isolation_level", "") is None:
        # driver-autocommit mode (the savepoint recipe): its BEGIN may be a deferred one
        # that holds no write lock yet; a no-op write takes it
        conn.execute(SQLITE_WRITE_LOCK)
    # else pysqlite opened the transaction right before a write: the lock is held


def in_write_transaction(conn: Connection) -> bool:
    """SQLite only: has this connection already taken the write lock?"""
    return bool(getattr(_driver_connection(conn), "in_transaction", False))


def _driver_connection(conn: Connection) -> Any:
    # the driver's own connection: aiosqlite's (which has `in_transaction`), not the
    # adapter SQLAlchemy wraps it in; for pysqlite the two are the same object
    return conn.connection.driver_connection
