"""The systems of the tracked-model benchmark (`benchmarks/tracked.py`): one `Order` model,
five ways of keeping it.

Every ORM system builds its `Order` class from the same mixin (`OrderColumns`: the same
table, columns, types and keys) on its own `DeclarativeBase`, binds an engine made by the
same function (`sqlite_engine`: same connect arguments, same pragmas) and runs the same
workload code (`OrmSystem.seed`, `updates_one_commit`, `updates_per_commit`,
`bulk_update`) through a plain `sessionmaker`. The only differences are the history
machinery each system adds to the model or the sessionmaker:

- `parquedb`: `class Order(pq.Tracked, ...)`, `pq.enable(Session, archive=...)`;
- `continuum`: SQLAlchemy-Continuum, `make_versioned(user_cls=None)`, `__versioned__ = {}`;
- `history`: sqlalchemy-history (the maintained Continuum fork), the same two lines;
- `plain`: nothing (the floor: what the app's own rows cost);
- `raw`: the same statements as `plain`, sent with the `sqlite3` module itself (no
  SQLAlchemy at all; the speed ceiling).

Continuum and sqlalchemy-history instrument SQLAlchemy's `Mapper` and `Session` classes
process-wide, so a system's model is defined only when its adapter is built (`build()`),
and the benchmark builds one system per process.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import DateTime, Engine, Integer, Numeric, String, create_engine, event, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

# --------------------------------------------------------------------------
# The model and the values every system writes
# --------------------------------------------------------------------------

APP_TABLE = "orders"
STATUSES = ("new", "paid", "packed", "shipped")
T0 = dt.datetime(2024, 1, 1, 12, 0, 0)
BULK_STATUS = "archived"
BULK_AT = T0 + dt.timedelta(days=1)


class OrderColumns:
    """The one `Order` table of every ORM system (mixed into each system's own class)."""

    __tablename__ = APP_TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    customer: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    qty: Mapped[int] = mapped_column(Integer)
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime)


def _price(i: int) -> Decimal:
    return Decimal("9.99") + i % 10


def seed_row(i: int) -> dict[str, Any]:
    """Order `i` (1-based) as seeded."""
    qty = 1 + i % 5
    return {"id": i, "customer": f"customer-{i % 97:02d}", "status": STATUSES[0], "qty": qty,
            "total": qty * _price(i), "updated_at": T0}


def updated_fields(i: int, qty: int) -> dict[str, Any]:
    """The change every system makes to order `i` whose quantity is `qty`: 4 columns."""
    return {"status": STATUSES[1 + i % 3], "qty": qty + 1, "total": (qty + 1) * _price(i),
            "updated_at": T0 + dt.timedelta(minutes=i)}


SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA busy_timeout=30000")
"""Applied to every connection of every system (the settings parquedb-orm itself uses on a
SQLite file: WAL journal, synchronous=NORMAL, its durability="normal": docs/durability.md)."""


def _apply_pragmas(dbapi_conn: Any, _record: Any = None) -> None:
    cur = dbapi_conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cur.execute(pragma)
    cur.close()


def sqlite_engine(path: Path) -> Engine:
    """The engine of every ORM system: a SQLite file, the same pool and pragmas."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})
    event.listen(engine, "connect", _apply_pragmas)
    return engine


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


@dataclass
class Counts:
    """What one measured operation cost (rows: faithful meter, None without it)."""

    statements: int = 0
    rows_read: int | None = None
    rows_written: int | None = None
    app_rows_written: int | None = None  # written by statements on the app's table
    seconds: float = 0.0
    statements_by_kind: dict[str, int] = field(default_factory=dict)
    wal_rows_inserted: int = 0  # parquedb-orm: INSERTs into events_wal (portable count)

    @property
    def history_rows_written(self) -> int | None:
        if self.rows_written is None or self.app_rows_written is None:
            return None
        return self.rows_written - self.app_rows_written


_WRITE_TARGET = (("INSERT", "INTO"), ("REPLACE", "INTO"), ("UPDATE", ""), ("DELETE", "FROM"))


def _target_table(sql: str) -> str | None:
    """Table a write statement writes (None for reads and other statements)."""
    words = sql.replace("(", " ").replace('"', " ").split()
    if not words:
        return None
    verb = words[0].upper()
    for kind, after in _WRITE_TARGET:
        if verb == kind:
            rest = words[1:]
            while rest and rest[0].upper() in ("OR", "REPLACE", "IGNORE", "ROLLBACK", "ABORT", "FAIL"):
                rest = rest[1:]
            if after and rest and rest[0].upper() == after:
                rest = rest[1:]
            return rest[0].strip("`[]").lower() if rest else None
    return None


class _AllEngines:
    """A parquedb_meter `EngineMeter` on the `Engine` class: every engine a system makes
    (parquedb-orm's side engine for id blocks, its flush connections) is metered."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        from parquedb_meter import EngineMeter

        em = EngineMeter(SimpleNamespace(dialect=SimpleNamespace(name="sqlite")))  # type: ignore[arg-type]
        em.engine = Engine  # type: ignore[assignment]
        self.em = em

    @contextlib.contextmanager
    def measure(self, counts: Counts) -> Iterator[None]:
        import time

        self.em.meter.reset()
        self.em.install()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            counts.seconds = time.perf_counter() - t0
            self.em.uninstall()
            m = self.em.meter
            counts.statements = m.statements
            counts.rows_read, counts.rows_written = m.rows_read, m.rows_written
            counts.wal_rows_inserted = m.inserted_rows("events_wal")
            if m.rows_written is not None:
                counts.app_rows_written = sum(r.rows_written or 0 for r in m.records
                                              if _target_table(r.sql) == APP_TABLE)
            for r in m.records:
                counts.statements_by_kind[r.kind] = counts.statements_by_kind.get(r.kind, 0) + 1


# --------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------


class OrderSystem(ABC):
    """One system under test; `open()` / `close()` once per workload, on a fresh file."""

    name: ClassVar[str]
    label: ClassVar[str]
    #: history tables whose rows `history_rows()` counts; () = the system keeps no history
    history_tables: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.workdir: Path | None = None
        self.notes: list[str] = []

    @property
    def keeps_history(self) -> bool:
        return bool(self.history_tables)

    @abstractmethod
    def open(self, workdir: Path) -> None:
        """Create the schema in `workdir / "<name>.db"` (a new file) and connect."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def measure(self, counts: Counts) -> contextlib.AbstractContextManager[None]:
        """Meter the block: statements, rows read / written, seconds into `counts`."""

    # -- the workloads (each one commit or a loop of commits) ----------------------
    @abstractmethod
    def seed(self, n: int) -> None:
        """Insert orders 1..n in one commit."""

    @abstractmethod
    def updates_one_commit(self, n: int) -> None:
        """Load orders 1..n (one SELECT), change 4 columns of each, one commit."""

    @abstractmethod
    def updates_per_commit(self, n: int) -> None:
        """For each order 1..n: get it by primary key, change 4 columns, commit."""

    @abstractmethod
    def bulk_update(self, n: int) -> None:
        """One `UPDATE orders SET status, updated_at WHERE id <= n` statement, one commit."""

    # -- reading back ----------------------------------------------------------------
    def versions(self, order_id: int) -> int | None:
        """How many versions of the order the system's history holds (None: no history)."""
        return None

    def history_rows(self) -> tuple[int, int]:
        """(SQL rows in the history tables, versions / events they hold); unmetered."""
        return 0, 0

    @abstractmethod
    def pragmas(self) -> dict[str, Any]:
        """journal_mode and synchronous, read back with PRAGMA on a connection of the system."""

    def after_seed(self) -> None:
        """Unmetered step between seed and workload (parquedb-orm: flush the seed's events)."""
        return None

    def flush(self) -> bool:
        """Move history out of SQL if the system does that (True when it did)."""
        return False

    def db_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / f"{self.name}.db"


def _sync_name(value: Any) -> str:
    return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(value, str(value))


class OrmSystem(OrderSystem):
    """The SQLAlchemy ORM systems: one workload code, the model and sessionmaker differ."""

    Order: Any  # the mapped class (set by `define`)
    Base: Any

    def __init__(self) -> None:
        super().__init__()
        self.define()
        self.engine: Engine | None = None
        self.Session: sessionmaker[Any] | None = None
        self._meter = _AllEngines()

    @abstractmethod
    def define(self) -> None:
        """Define `self.Base` and `self.Order` (called once per process)."""

    def open(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.engine = sqlite_engine(self.db_path())
        self.Base.metadata.create_all(self.engine)
        self.Session = sessionmaker(self.engine)
        self.enable()

    def enable(self) -> None:
        """Attach the system's history machinery to `self.Session` (default: none)."""
        return None

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        self.engine = self.Session = None

    def measure(self, counts: Counts) -> contextlib.AbstractContextManager[None]:
        return self._meter.measure(counts)

    def maker(self) -> sessionmaker[Any]:
        assert self.Session is not None
        return self.Session

    # -- workloads ---------------------------------------------------------------
    def seed(self, n: int) -> None:
        Order = self.Order
        with self.maker()() as s:
            s.add_all([Order(**seed_row(i)) for i in range(1, n + 1)])
            s.commit()

    def updates_one_commit(self, n: int) -> None:
        Order = self.Order
        with self.maker()() as s:
            for o in s.scalars(select(Order).where(Order.id <= n).order_by(Order.id)):
                for k, v in updated_fields(o.id, o.qty).items():
                    setattr(o, k, v)
            s.commit()

    def updates_per_commit(self, n: int) -> None:
        Order, Session = self.Order, self.maker()
        for i in range(1, n + 1):
            with Session() as s:
                o = s.get(Order, i)
                assert o is not None
                for k, v in updated_fields(i, o.qty).items():
                    setattr(o, k, v)
                s.commit()

    def bulk_update(self, n: int) -> None:
        Order = self.Order
        with self.maker()() as s:
            s.execute(update(Order).where(Order.id <= n).values(status=BULK_STATUS, updated_at=BULK_AT))
            s.commit()

    # -- reading back --------------------------------------------------------------
    def _count(self, table: str, column: str | None = None) -> int:
        assert self.engine is not None
        expr = f"coalesce(sum({column}), 0)" if column else "count(*)"
        with self.engine.connect() as conn:
            return int(conn.execute(text(f'SELECT {expr} FROM "{table}"')).scalar_one())

    def pragmas(self) -> dict[str, Any]:
        assert self.engine is not None
        with self.engine.connect() as conn:
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        return {"journal_mode": str(journal), "synchronous": _sync_name(sync)}


class Plain(OrmSystem):
    name = "plain"
    label = "plain SQLAlchemy (no history)"

    def define(self) -> None:
        class Base(DeclarativeBase):
            pass

        class Order(OrderColumns, Base):
            pass

        self.Base, self.Order = Base, Order


class ParquedbTracked(OrmSystem):
    """parquedb-orm: `pq.Tracked` on the model, `pq.enable(Session, archive=...)`.

    Flush policy `FlushPolicy(mode="manual")`: nothing moves to Parquet during a measured
    workload, so its rows are deterministic; the seed's events are flushed before the
    workload (unmetered) and the workload's events after it, measured on their own
    (`flush()`), so the archive's cost is reported instead of hidden or left to a timer."""

    name = "parquedb"
    label = "parquedb-orm (pq.Tracked)"
    history_tables = ("events_wal",)

    def define(self) -> None:
        import parquedb_orm as pq

        class Base(DeclarativeBase):
            pass

        class Order(pq.Tracked, OrderColumns, Base):
            pass

        self.Base, self.Order = Base, Order
        self.handle: Any = None

    def enable(self) -> None:
        import parquedb_orm as pq

        assert self.workdir is not None
        self.handle = pq.enable(self.maker(), archive=self.workdir / "archive", policy=pq.FlushPolicy(mode="manual"))

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        super().close()

    def after_seed(self) -> None:
        self.handle.flush()

    def flush(self) -> bool:
        self.handle.flush()
        return True

    def versions(self, order_id: int) -> int | None:
        import parquedb_orm as pq

        with self.maker()() as s:
            obj = s.get(self.Order, order_id)
            return len(pq.history(s, obj))

    def history_rows(self) -> tuple[int, int]:
        return self._count("events_wal"), self._count("events_wal", "event_count")


class _ContinuumLike(OrmSystem):
    """SQLAlchemy-Continuum and its fork: same API, different module."""

    module: ClassVar[str]
    history_tables = ("orders_version", "transaction")

    def define(self) -> None:
        import importlib

        import sqlalchemy as sa

        lib = importlib.import_module(self.module)
        lib.make_versioned(user_cls=None)

        class Base(DeclarativeBase):
            pass

        class Order(OrderColumns, Base):
            __versioned__: ClassVar[dict[str, Any]] = {}

        sa.orm.configure_mappers()  # builds the version class and table
        self.Base, self.Order, self._lib = Base, Order, lib
        self.notes.append("default validity strategy; ORM-enabled bulk UPDATE statements are not versioned")

    def versions(self, order_id: int) -> int | None:
        """The versions themselves, as `pq.history` returns them: the `obj.versions`
        relationship both libraries add (lazy="dynamic": a query; else a list)."""
        with self.maker()() as s:
            obj = s.get(self.Order, order_id)
            found = obj.versions
            return len(found.all() if hasattr(found, "all") else list(found))

    def history_rows(self) -> tuple[int, int]:
        return self._count("orders_version") + self._count("transaction"), self._count("orders_version")


class Continuum(_ContinuumLike):
    name = "continuum"
    label = "SQLAlchemy-Continuum"
    module = "sqlalchemy_continuum"


class History(_ContinuumLike):
    name = "history"
    label = "sqlalchemy-history"
    module = "sqlalchemy_history"


# --------------------------------------------------------------------------
# The raw sqlite3 line
# --------------------------------------------------------------------------

_TRACE_PROFILE = 0x02
_ROWS_READ, _ROWS_WRITTEN = 1025, 1026  # libSQL's stmt-status counters (scripts/build_metered_sqlite.sh)
_Trace = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _sqlite_value(v: Any) -> Any:
    """What SQLAlchemy's SQLite dialect binds for our column types (Numeric -> float,
    DateTime -> 'YYYY-MM-DD HH:MM:SS.ffffff'), so the raw line stores the same bytes."""
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ", timespec="microseconds")
    return v


def _orders_ddl() -> str:
    from sqlalchemy.dialects import sqlite as sqlite_dialect
    from sqlalchemy.schema import CreateTable

    class Base(DeclarativeBase):
        pass

    class Order(OrderColumns, Base):
        pass

    table: Any = Order.__table__
    return str(CreateTable(table).compile(dialect=sqlite_dialect.dialect())).strip()


class Raw(OrderSystem):
    """The app's statements through the `sqlite3` module: no SQLAlchemy, no history.

    Statement by statement what `plain` sends (the same SELECTs, UPDATEs, commits, the same
    bound values); the same pragmas. Rows are read from the same libSQL counters the meter
    reads, by a trace callback on this one connection; a statement is one `execute` or
    `executemany` call, as the meter counts DBAPI cursor calls."""

    name = "raw"
    label = "raw sqlite3 (no ORM, no history)"

    def __init__(self) -> None:
        super().__init__()
        self.con: sqlite3.Connection | None = None
        self.statements = self.read = self.written = self.app_written = 0
        self._lib: ctypes.CDLL | None = None
        self._cb = _Trace(self._trace)

    def open(self, workdir: Path) -> None:
        from parquedb_meter import faithful_available

        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path(), timeout=30)
        _apply_pragmas(con)
        con.execute(_orders_ddl())  # the DDL SQLAlchemy emits for OrderColumns
        con.commit()
        self.con = con
        if faithful_available():
            lib = ctypes.CDLL("libsqlite3.so.0")  # the library _sqlite3 loaded (LD_LIBRARY_PATH)
            lib.sqlite3_stmt_status.restype = ctypes.c_int
            lib.sqlite3_stmt_status.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            lib.sqlite3_trace_v2.restype = ctypes.c_int
            lib.sqlite3_trace_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint, _Trace, ctypes.c_void_p]
            db = con.execute("SELECT parquedb_meter_db_handle()").fetchone()[0]
            if db and lib.sqlite3_trace_v2(ctypes.c_void_p(db), _TRACE_PROFILE, self._cb, None) == 0:
                self._lib = lib

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    def _trace(self, mask: int, _ctx: int | None, stmt: int | None, _x: int | None) -> int:
        lib = self._lib
        if lib is None or mask != _TRACE_PROFILE or not stmt:
            return 0
        p = ctypes.c_void_p(stmt)
        written = lib.sqlite3_stmt_status(p, _ROWS_WRITTEN, 1)
        self.read += lib.sqlite3_stmt_status(p, _ROWS_READ, 1)
        self.written += written
        if self._current_is_app:
            self.app_written += written
        return 0

    _current_is_app = False

    def _exec(self, sql: str, params: Any = (), many: bool = False) -> sqlite3.Cursor:
        assert self.con is not None
        self.statements += 1
        self._current_is_app = _target_table(sql) == APP_TABLE
        return self.con.executemany(sql, params) if many else self.con.execute(sql, params)

    @contextlib.contextmanager
    def measure(self, counts: Counts) -> Iterator[None]:
        import time

        self.statements = self.read = self.written = self.app_written = 0
        t0 = time.perf_counter()
        try:
            yield
        finally:
            counts.seconds = time.perf_counter() - t0
            counts.statements = self.statements
            if self._lib is not None:
                counts.rows_read, counts.rows_written, counts.app_rows_written = (
                    self.read, self.written, self.app_written)

    _UPDATE = "UPDATE orders SET status=?, qty=?, total=?, updated_at=? WHERE orders.id = ?"

    def seed(self, n: int) -> None:
        assert self.con is not None
        rows = [seed_row(i) for i in range(1, n + 1)]
        self._exec("INSERT INTO orders (id, customer, status, qty, total, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                   [tuple(_sqlite_value(r[k]) for k in ("id", "customer", "status", "qty", "total", "updated_at"))
                    for r in rows], many=True)
        self.con.commit()

    def _params(self, i: int, qty: int) -> tuple[Any, ...]:
        f = updated_fields(i, qty)
        return (*(_sqlite_value(f[k]) for k in ("status", "qty", "total", "updated_at")), i)

    def updates_one_commit(self, n: int) -> None:
        assert self.con is not None
        rows = self._exec("SELECT id, customer, status, qty, total, updated_at FROM orders WHERE id <= ? "
                          "ORDER BY id", (n,)).fetchall()
        self._exec(self._UPDATE, [self._params(r[0], r[3]) for r in rows], many=True)
        self.con.commit()

    def updates_per_commit(self, n: int) -> None:
        assert self.con is not None
        for i in range(1, n + 1):
            row = self._exec("SELECT id, customer, status, qty, total, updated_at FROM orders WHERE id = ?",
                             (i,)).fetchone()
            self._exec(self._UPDATE, self._params(i, row[3]))
            self.con.commit()

    def bulk_update(self, n: int) -> None:
        assert self.con is not None
        self._exec("UPDATE orders SET status=?, updated_at=? WHERE orders.id <= ?",
                   (BULK_STATUS, _sqlite_value(BULK_AT), n))
        self.con.commit()

    def pragmas(self) -> dict[str, Any]:
        assert self.con is not None
        journal = self.con.execute("PRAGMA journal_mode").fetchone()[0]
        sync = self.con.execute("PRAGMA synchronous").fetchone()[0]
        return {"journal_mode": str(journal), "synchronous": _sync_name(sync)}


SYSTEMS: dict[str, type[OrderSystem]] = {
    cls.name: cls for cls in (ParquedbTracked, Continuum, History, Plain, Raw)
}


def build(name: str) -> OrderSystem:
    """The adapter of system `name` (defines its model: one system per process)."""
    return SYSTEMS[name]()

