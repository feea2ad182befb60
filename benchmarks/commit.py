"""What one commit costs, from the raw driver up to parquedb-orm (issue 11, item 5).

Run on demand, from the repository root::

    python -m benchmarks.commit                 # 5 s per line, SQLite + PostgreSQL + MariaDB
    python -m benchmarks.commit --quick         # 1 s per line
    python -m benchmarks.commit --seconds 10 --no-servers

Every line is one way of committing one change at a time, measured in the same run:

SQLite (a fresh file per line, one temp folder):
  raw sqlite3 INSERT / UPDATE (one row per commit: the ceiling), SQLAlchemy Core INSERT /
  UPDATE on an engine of ``parquedb_orm.sql.dialects.create_engine_for``, parquedb-orm
  ``db.create`` / ``db.update`` (``pq.ParqueDB(url, policy=pq.FlushPolicy(mode="manual"))``),
  the ORM path (``pq.enable(Session)``, one ``pq.store(s).create(...)`` + ``s.commit()``
  per op), group commit (``db.create`` from 8 and 16 threads, and 16 threads with
  ``group_commit=False``) and shared mode (``shared=True``) create / update.
PostgreSQL and MariaDB (``--no-servers`` skips them; an unreachable server is skipped):
  raw psycopg / PyMySQL INSERT (1 and 4 processes), Core INSERT, parquedb-orm create in
  1 process single owner, 1 process ``shared=True`` and 4 processes ``shared=True`` (each
  process its own ``ParqueDB``; several writer processes must say ``shared=True``).

Columns: ops/s of the timed pass; its ratio to the raw line and to the Core line of the
same backend and kind (INSERT lines for creates, UPDATE lines for updates; the 4-process
lines against the 4-process raw line); SQL statements, rows read and rows written per op.

How the lines are made fair:

- **Same file settings, verified.** Every SQLite connection runs in WAL mode with
  ``synchronous=NORMAL`` and a 30 s busy timeout: the raw line sets the pragmas that
  ``create_engine_for`` sets on every connection of a SQLite file (``busy_timeout=30000``,
  ``journal_mode=WAL``, ``synchronous=NORMAL``; it also gives the pool 32 connections and
  pysqlite a 30 s timeout), every other line uses that function's engines (``ParqueDB(url)``
  makes its engine with it). Each line reads ``PRAGMA journal_mode`` and ``PRAGMA synchronous`` back on its
  own connection (the session's, for the ORM line) and the table prints them; the servers
  print ``synchronous_commit`` (PostgreSQL) and ``innodb_flush_log_at_trx_commit``
  (MariaDB) as read on their connections. Server defaults are used as they are.
- **Same row size.** The raw and Core lines write a row of the same table shape as
  ``events_wal`` (``ns``, ``first_seq`` primary key, ``last_seq``, ``event_count``,
  ``events`` blob, ``created_at``; ``WITHOUT ROWID`` on SQLite), created by SQLAlchemy
  from one ``Table`` for both; their blob is the very bytes parquedb-orm wrote for one
  create (INSERT lines) or one update (UPDATE lines) of this run's payload, taken from a
  calibration store at the start; ``created_at`` is taken per commit as parquedb-orm does.
  The UPDATE lines rewrite rows of 100 seeded keys round-robin, parquedb-orm's updates
  ``$set`` one field of 100 seeded entities round-robin.
- **What is timed.** Only the loop of commits: each op is one commit and returns once the
  commit returned. Opening the store or engine, schema creation, seeding and a warm-up
  (1 s, or 0.3 s with ``--quick``: imports, SQLAlchemy's statement cache, the
  namespace's first commit, the first id block, pool connections, prepared statements)
  are outside it; ``gc.collect()`` runs before it. For the N-process lines the parent
  makes the schema and the namespace's first entity before it starts the workers (N
  processes making a namespace's first commit at the same moment is a start-up race, not
  the steady state measured here). Threads and processes start the timed
  loop together (a barrier) and stop at the same deadline; N-thread lines count every
  thread's ops over the wall time, N-process lines add the processes' rates. parquedb-orm
  runs with ``FlushPolicy(mode="manual")`` and no archive, so no flush is in any figure:
  this is the commit path alone. ``--rounds R`` runs every line R times, round-robin in
  table order, each time on a fresh database, and reports the median rate and the range:
  a slow minute of the shared machine then hits every line alike.
- **What is counted.** Statements and rows come from a separate metered pass of
  ``--metered-ops`` ops (default 200; threads and processes as in the timed pass) after
  every timed round, on a fresh store of the same line, in spawned processes: the
  meter's per-statement callback would slow the timed pass (the output prints by how
  much), and a listener once added to SQLAlchemy's ``Engine`` class leaves every engine
  of that process dispatching events for good, so no meter is ever attached in the
  process that times.
  A statement is one DBAPI ``execute`` / ``executemany``; BEGIN and COMMIT are not
  counted, on any line. On SQLite rows read / written are libSQL's counters (the faithful
  meter: the whole run re-executes itself under ``parquedb_meter.metered_env()``, so every
  SQLite line, timed passes included, runs on that libsqlite3), as D1 / Turso bill them;
  the meter listens on SQLAlchemy's ``Engine`` class, so the store's side engine (id
  blocks, one counter UPDATE per 100 creates) is counted; the raw line reads the same
  counters through a trace callback on its connection. On the servers only statements
  are counted (the portable meter; raw lines: one per op by construction): their rows
  columns say ``n/f`` (not faithful).
- **Same run, same machine.** Lines run one after the other, never at the same time;
  absolute rates vary with the machine's other load, the ratios are within one run. The
  header names the parquedb-orm commit measured (and says so when the tree has local
  changes).

``--profile`` also prints a cProfile summary of 2,000 single-op creates and 2,000 updates
on SQLite (own time by package, top functions by cumulative and by own time). Results: ``benchmarks/results/commit.md``;
see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import gc
import io
import itertools
import json
import multiprocessing as mp
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Protocol, cast

import sqlalchemy as sa
from parquedb_meter import EngineMeter, FaithfulMeterUnavailable, faithful_available, metered_env
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

import parquedb_orm as pq
from parquedb_orm.sql.dialects import create_engine_for

Backend = Literal["sqlite", "postgresql", "mysql"]
System = Literal["raw", "core", "parquedb", "orm"]
Kind = Literal["insert", "update"]

NS = "posts"
SEEDED = 100  # rows / entities the UPDATE lines rewrite round-robin
DB_NAME = "pqbench_commit"
PG_ADMIN = os.environ.get("PARQUEDB_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_ADMIN = os.environ.get("PARQUEDB_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
BARRIER_TIMEOUT = 300.0
RESULTS = Path(__file__).resolve().parent / "results"
_SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def payload(i: int) -> dict[str, Any]:
    """The data of every create: fixed width, so every WAL row has the same size."""
    return {"$type": "Post", "title": f"post {i:010d}", "views": i, "tags": ["bench", "commit"]}


def update_of(i: int) -> dict[str, Any]:
    return {"$set": {"views": 1_000_000_000 + i}}  # fixed width too


# --------------------------------------------------------------------------- the lines


@dataclass(frozen=True)
class Spec:
    key: str
    label: str
    backend: Backend
    system: System
    kind: Kind
    threads: int = 1
    processes: int = 1
    shared: bool = False
    group_commit: bool = True
    raw_ref: str | None = None  # the raw line this one is divided by
    core_ref: str | None = None  # the Core line this one is divided by


def _sqlite_specs() -> list[Spec]:
    def line(key: str, label: str, system: System, kind: Kind, **options: Any) -> Spec:
        return Spec(key, label, "sqlite", system, kind, raw_ref=f"sqlite-raw-{kind}", core_ref=f"sqlite-core-{kind}",
                    **options)  # fmt: skip

    return [
        line("sqlite-raw-insert", "raw sqlite3 INSERT", "raw", "insert"),
        line("sqlite-raw-update", "raw sqlite3 UPDATE", "raw", "update"),
        line("sqlite-core-insert", "SQLAlchemy Core INSERT", "core", "insert"),
        line("sqlite-core-update", "SQLAlchemy Core UPDATE", "core", "update"),
        line("sqlite-pq-create", "parquedb-orm `db.create`", "parquedb", "insert"),
        line("sqlite-pq-update", "parquedb-orm `db.update` ($set)", "parquedb", "update"),
        line("sqlite-orm-create", "ORM session: `store(s).create` + `commit()`", "orm", "insert"),
        line("sqlite-orm-update", "ORM session: `store(s).update` + `commit()`", "orm", "update"),
        line("sqlite-gc8-create", "`db.create`, group commit", "parquedb", "insert", threads=8),
        line("sqlite-gc16-create", "`db.create`, group commit", "parquedb", "insert", threads=16),
        line("sqlite-nogc16-create", "`db.create`, `group_commit=False`", "parquedb", "insert", threads=16,
             group_commit=False),
        line("sqlite-shared-create", "`db.create`, `shared=True`", "parquedb", "insert", shared=True),
        line("sqlite-shared-update", "`db.update`, `shared=True`", "parquedb", "update", shared=True),
    ]  # fmt: skip


def _server_specs(backend: Literal["postgresql", "mysql"]) -> list[Spec]:
    driver = "psycopg" if backend == "postgresql" else "PyMySQL"
    p = "pg" if backend == "postgresql" else "my"
    raw1, raw4, core = f"{p}-raw-insert", f"{p}-raw4-insert", f"{p}-core-insert"
    return [
        Spec(raw1, f"raw {driver} INSERT", backend, "raw", "insert", raw_ref=raw1, core_ref=core),
        Spec(raw4, f"raw {driver} INSERT", backend, "raw", "insert", processes=4, raw_ref=raw4, core_ref=core),
        Spec(core, "SQLAlchemy Core INSERT", backend, "core", "insert", raw_ref=raw1, core_ref=core),
        Spec(f"{p}-pq-create", "parquedb-orm `db.create`", backend, "parquedb", "insert", raw_ref=raw1,
             core_ref=core),
        Spec(f"{p}-shared-create", "`db.create`, `shared=True`", backend, "parquedb", "insert", shared=True,
             raw_ref=raw1, core_ref=core),
        Spec(f"{p}-shared4-create", "`db.create`, `shared=True`", backend, "parquedb", "insert", processes=4,
             shared=True, raw_ref=raw4, core_ref=core),
    ]  # fmt: skip


# --------------------------------------------------------------------------- counting


@dataclass
class Counts:
    statements: int = 0
    rows_read: int | None = None
    rows_written: int | None = None

    def add(self, other: Counts) -> None:
        self.statements += other.statements
        self.rows_read = None if self.rows_read is None or other.rows_read is None else self.rows_read + other.rows_read
        self.rows_written = (
            None if self.rows_written is None or other.rows_written is None else self.rows_written + other.rows_written
        )


class ClassMeter(EngineMeter):
    """An `EngineMeter` on every engine of this process (listeners on the `Engine` class),
    so the engines the store makes for itself (its side engine for id blocks) count too."""

    def __init__(self, dialect: str) -> None:
        # EngineMeter reads only `engine.dialect.name` when it is built
        super().__init__(cast(Engine, SimpleNamespace(dialect=SimpleNamespace(name=dialect))), max_records=64)
        self.engine = cast(Engine, Engine)

    def counts(self) -> Counts:
        m = self.meter
        return Counts(m.statements, m.rows_read, m.rows_written)


_TRACE_PROFILE = 0x02
_ROWS_READ, _ROWS_WRITTEN = 1025, 1026  # libSQL's stmt-status counters (scripts/build_metered_sqlite.sh)
_Trace = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


class RawTrace:
    """libSQL's row counters of one `sqlite3` connection, through a trace callback (the
    faithful library only; the raw line has no SQLAlchemy engine for the meter)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.read = self.written = 0
        self._cb = _Trace(self._trace)
        self._lib: ctypes.CDLL | None = None
        self._db = 0
        if faithful_available():
            lib = ctypes.CDLL("libsqlite3.so.0")  # the library _sqlite3 loaded (LD_LIBRARY_PATH)
            lib.sqlite3_stmt_status.restype = ctypes.c_int
            lib.sqlite3_stmt_status.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            lib.sqlite3_next_stmt.restype = ctypes.c_void_p
            lib.sqlite3_next_stmt.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.sqlite3_trace_v2.restype = ctypes.c_int
            lib.sqlite3_trace_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint, _Trace, ctypes.c_void_p]
            self._db = int(con.execute("SELECT parquedb_meter_db_handle()").fetchone()[0] or 0)
            self._lib = lib

    @property
    def faithful(self) -> bool:
        return self._lib is not None and self._db != 0

    def start(self) -> None:
        lib = self._lib
        if lib is None or not self._db:
            return
        # counters gathered by cached statements before tracing would be billed to the first op
        stmt = lib.sqlite3_next_stmt(ctypes.c_void_p(self._db), None)
        while stmt:
            for op in (_ROWS_READ, _ROWS_WRITTEN):
                lib.sqlite3_stmt_status(ctypes.c_void_p(stmt), op, 1)
            stmt = lib.sqlite3_next_stmt(ctypes.c_void_p(self._db), ctypes.c_void_p(stmt))
        self.read = self.written = 0
        lib.sqlite3_trace_v2(ctypes.c_void_p(self._db), _TRACE_PROFILE, self._cb, None)

    def stop(self) -> None:
        if self._lib is not None and self._db:
            self._lib.sqlite3_trace_v2(ctypes.c_void_p(self._db), 0, self._cb, None)  # mask 0: tracing off

    def _trace(self, mask: int, _ctx: int | None, stmt: int | None, _x: int | None) -> int:
        lib = self._lib
        if lib is None or mask != _TRACE_PROFILE or not stmt:
            return 0
        p = ctypes.c_void_p(stmt)
        self.read += lib.sqlite3_stmt_status(p, _ROWS_READ, 1)
        self.written += lib.sqlite3_stmt_status(p, _ROWS_WRITTEN, 1)
        return 0


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Payload:
    """The WAL blobs parquedb-orm writes for one create and one update of `payload()`."""

    create_blob: bytes
    update_blob: bytes


@dataclass(frozen=True)
class Target:
    backend: Backend
    url: str  # SQLAlchemy URL
    path: str | None = None  # SQLite file


COLUMNS = "ns, first_seq, last_seq, event_count, events, created_at"
BENCH_TABLE = sa.Table(
    "bench_wal",
    sa.MetaData(),
    sa.Column("ns", sa.String(64), primary_key=True),
    sa.Column("first_seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("last_seq", sa.BigInteger),
    sa.Column("event_count", sa.Integer),
    sa.Column("events", sa.LargeBinary),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sqlite_with_rowid=False,
)  # the shape of events_wal, for the raw and Core lines


class Workload(Protocol):
    def op(self, i: int) -> None: ...
    def settings(self) -> str: ...
    def meter_start(self) -> None: ...
    def meter_stop(self) -> Counts: ...
    def close(self) -> None: ...


def _sqlite_settings(conn: sa.Connection | sqlite3.Connection) -> str:
    if isinstance(conn, sqlite3.Connection):
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    else:
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    return f"{journal}/{_SYNC_NAMES.get(int(sync), sync)}"


def _server_settings(backend: Backend, run: Callable[[str], Any]) -> str:
    if backend == "postgresql":
        return f"synchronous_commit={run('SHOW synchronous_commit')}"
    return f"flush_log_at_trx_commit={run('SELECT @@innodb_flush_log_at_trx_commit')}"


def _engine_settings(engine: Engine, backend: Backend) -> str:
    with engine.connect() as conn:
        if backend == "sqlite":
            return _sqlite_settings(conn)
        return _server_settings(backend, lambda sql: conn.exec_driver_sql(sql).scalar())


class _SQLAlchemyMetered:
    backend: Backend
    _meter: ClassMeter | None = None

    def meter_start(self) -> None:
        meter = ClassMeter(self.backend)
        meter.install()
        self._meter = meter

    def meter_stop(self) -> Counts:
        assert self._meter is not None
        self._meter.uninstall()
        return self._meter.counts()


def _row(seq: int, blob: bytes) -> dict[str, Any]:
    return {"ns": NS, "first_seq": seq, "last_seq": seq, "event_count": 1, "events": blob,
            "created_at": datetime.now(UTC)}  # fmt: skip


class RawSQLite:
    """stdlib `sqlite3`: one INSERT (or UPDATE) and one COMMIT per op."""

    _INSERT = f"INSERT INTO bench_wal ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
    _UPDATE = "UPDATE bench_wal SET last_seq = ?, events = ?, created_at = ? WHERE ns = ? AND first_seq = ?"

    def __init__(self, target: Target, kind: Kind, blob: bytes, worker: int) -> None:
        assert target.path is not None
        self.con = sqlite3.connect(target.path, timeout=30)
        # what dialects.sqlite_file_pragmas sets on every connection of create_engine_for
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            self.con.execute(f"PRAGMA {pragma}")
        self.kind, self.blob, self.base = kind, blob, 10**9 * (worker + 1)
        self.trace = RawTrace(self.con)
        self.statements = 0

    @staticmethod
    def _now() -> str:  # what SQLAlchemy's SQLite DateTime binds
        return datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")

    def op(self, i: int) -> None:
        if self.kind == "insert":
            seq = self.base + i
            self.con.execute(self._INSERT, (NS, seq, seq, 1, self.blob, self._now()))
        else:
            self.con.execute(self._UPDATE, (i, self.blob, self._now(), NS, i % SEEDED + 1))
        self.statements += 1
        self.con.commit()

    def settings(self) -> str:
        return _sqlite_settings(self.con)

    def meter_start(self) -> None:
        self.statements = 0
        self.trace.start()

    def meter_stop(self) -> Counts:
        self.trace.stop()
        if self.trace.faithful:
            return Counts(self.statements, self.trace.read, self.trace.written)
        return Counts(self.statements)

    def close(self) -> None:
        self.con.close()


class RawServer:
    """psycopg / PyMySQL: one INSERT and one COMMIT per op (statements counted here)."""

    def __init__(self, target: Target, blob: bytes, worker: int) -> None:
        url = sa.engine.make_url(target.url)
        self.backend = target.backend
        self.conn: Any
        if target.backend == "postgresql":
            import psycopg

            self.conn = psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database)
        else:
            import pymysql  # type: ignore[import-untyped, unused-ignore]

            self.conn = pymysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306,
                                        user=url.username or "root", password=url.password or "",
                                        database=url.database)  # fmt: skip
        self.sql = f"INSERT INTO bench_wal ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"  # both drivers: format style
        self.cur = self.conn.cursor()
        self.blob, self.base = blob, 10**9 * (worker + 1)
        self.statements = 0

    def op(self, i: int) -> None:
        seq = self.base + i
        self.cur.execute(self.sql, (NS, seq, seq, 1, self.blob, datetime.now(UTC)))
        self.statements += 1
        self.conn.commit()

    def settings(self) -> str:
        def run(sql: str) -> Any:
            cur = self.conn.cursor()
            cur.execute(sql)
            value = cur.fetchone()[0]
            cur.close()
            self.conn.commit()
            return value

        return _server_settings(self.backend, run)

    def meter_start(self) -> None:
        self.statements = 0

    def meter_stop(self) -> Counts:
        return Counts(self.statements)

    def close(self) -> None:
        self.cur.close()
        self.conn.close()


class CoreLine(_SQLAlchemyMetered):
    """SQLAlchemy Core: `with engine.begin() as conn: conn.execute(stmt, row)` per op."""

    def __init__(self, target: Target, kind: Kind, blob: bytes, worker: int) -> None:
        self.backend = target.backend
        self.engine = create_engine_for(target.url)
        self.kind, self.blob, self.base = kind, blob, 10**9 * (worker + 1)
        t = BENCH_TABLE
        self.insert = sa.insert(t)
        self.update = (
            sa.update(t)
            .where(t.c.ns == sa.bindparam("k_ns"), t.c.first_seq == sa.bindparam("k_seq"))
            .values(last_seq=sa.bindparam("last_seq"), events=sa.bindparam("events"),
                    created_at=sa.bindparam("created_at"))
        )  # fmt: skip

    def op(self, i: int) -> None:
        with self.engine.begin() as conn:
            if self.kind == "insert":
                conn.execute(self.insert, _row(self.base + i, self.blob))
            else:
                conn.execute(self.update, {"k_ns": NS, "k_seq": i % SEEDED + 1, "last_seq": i, "events": self.blob,
                                           "created_at": datetime.now(UTC)})  # fmt: skip

    def settings(self) -> str:
        return _engine_settings(self.engine, self.backend)

    def close(self) -> None:
        self.engine.dispose()


class ParqueLine(_SQLAlchemyMetered):
    """`pq.ParqueDB(url, policy=FlushPolicy(mode="manual"))`: `db.create` / `db.update` per op."""

    def __init__(self, target: Target, kind: Kind, *, shared: bool, group_commit: bool) -> None:
        self.backend = target.backend
        self.kind = kind
        self.db = pq.ParqueDB(target.url, policy=pq.FlushPolicy(mode="manual"), shared=shared,
                              group_commit=group_commit)  # fmt: skip
        # the namespace's first commit (loads its empty tail) and its first id block are warm-up
        first = self.db.create(NS, payload(0))
        self.ids = [first["$id"].split("/")[1]]
        if kind == "update":
            self.ids += [self.db.create(NS, payload(n))["$id"].split("/")[1] for n in range(1, SEEDED)]

    def op(self, i: int) -> None:
        if self.kind == "insert":
            self.db.create(NS, payload(i))
        else:
            self.db.update(NS, self.ids[i % len(self.ids)], update_of(i))

    def settings(self) -> str:
        return _engine_settings(self.db.engine, self.backend)

    def close(self) -> None:
        self.db.close()


class OrmLine(_SQLAlchemyMetered):
    """`pq.enable(Session)`: per op a new session, one store operation, `s.commit()`."""

    def __init__(self, target: Target, kind: Kind) -> None:
        self.backend = target.backend
        self.kind = kind
        self.engine = create_engine_for(target.url)
        self.maker: sessionmaker[Session] = sessionmaker(self.engine)
        self.handle = pq.enable(self.maker, policy=pq.FlushPolicy(mode="manual"))
        with self.maker() as s:
            first = pq.store(s).create(NS, payload(0))
            s.commit()
        self.ids = [first["$id"].split("/")[1]]
        if kind == "update":
            self.ids += [self.handle.create(NS, payload(n))["$id"].split("/")[1] for n in range(1, SEEDED)]

    def op(self, i: int) -> None:
        with self.maker() as s:
            if self.kind == "insert":
                pq.store(s).create(NS, payload(i))
            else:
                pq.store(s).update(NS, self.ids[i % len(self.ids)], update_of(i))
            s.commit()

    def settings(self) -> str:
        with self.maker() as s:  # on the session's own connection
            return _sqlite_settings(s.connection())

    def close(self) -> None:
        self.handle.close()
        self.engine.dispose()


def open_workload(spec: Spec, target: Target, payload_: Payload, worker: int) -> Workload:
    blob = payload_.create_blob if spec.kind == "insert" else payload_.update_blob
    if spec.system == "raw":
        if spec.backend == "sqlite":
            return RawSQLite(target, spec.kind, blob, worker)
        return RawServer(target, blob, worker)
    if spec.system == "core":
        return CoreLine(target, spec.kind, blob, worker)
    if spec.system == "orm":
        return OrmLine(target, spec.kind)
    return ParqueLine(target, spec.kind, shared=spec.shared, group_commit=spec.group_commit)


def prepare_target(spec: Spec, root: Path, payload_: Payload, admin: dict[str, str]) -> Target:
    """A fresh database for one line, its schema and seed rows (not timed)."""
    if spec.backend == "sqlite":
        path = root / f"{spec.key}.db"
        for old in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            old.unlink(missing_ok=True)  # the previous round's
        target = Target("sqlite", f"sqlite:///{path}", str(path))
    else:
        admin_url = admin[spec.backend]
        eng = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            if spec.backend == "postgresql":
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
                conn.exec_driver_sql(f'CREATE DATABASE "{DB_NAME}"')
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{DB_NAME}`")
                conn.exec_driver_sql(f"CREATE DATABASE `{DB_NAME}`")
        eng.dispose()
        target = Target(spec.backend, admin_url.rsplit("/", 1)[0] + "/" + DB_NAME)
    if spec.system in ("raw", "core"):
        engine = create_engine_for(target.url)
        BENCH_TABLE.metadata.create_all(engine)
        if spec.kind == "update":
            with engine.begin() as conn:
                conn.execute(sa.insert(BENCH_TABLE), [_row(n, payload_.update_blob) for n in range(1, SEEDED + 1)])
        engine.dispose()
    else:
        with pq.ParqueDB(target.url) as db:  # the schema, once, before several processes open it
            if spec.processes > 1:
                # and the namespace (its counter row): N processes making a namespace's first
                # commit at the same moment is a start-up race, not the steady state measured
                db.create(NS, payload(0))
    return target


# --------------------------------------------------------------------------- driving


class _Waiter(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class Measured:
    ops: int = 0
    seconds: float = 0.0
    rate: float = 0.0  # of the timed pass; the median over rounds once merged
    rates: list[float] = field(default_factory=list)  # every round's
    metered_ops: int = 0
    metered_seconds: float = 0.0
    counts: Counts = field(default_factory=Counts)
    settings: str = ""


def _run_threads(wl: Workload, threads: int, ids: Iterator[int], *, seconds: float | None = None,
                 ops: int | None = None) -> tuple[int, float]:  # fmt: skip
    """Ops until a deadline (`seconds`) or a number of ops (`ops`), from `threads` threads."""
    budget = itertools.count()
    done = [0] * threads
    errors: list[BaseException] = []

    def work(k: int, deadline: float) -> None:
        n = 0
        try:
            if ops is None:
                while time.perf_counter() < deadline:
                    wl.op(next(ids))
                    n += 1
            else:
                while next(budget) < ops:
                    wl.op(next(ids))
                    n += 1
        except BaseException as exc:
            errors.append(exc)
        done[k] = n

    t0 = time.perf_counter()
    deadline = t0 + (seconds or 0.0)
    if threads == 1:
        work(0, deadline)
    else:
        start = threading.Barrier(threads)

        def thread_main(k: int) -> None:
            start.wait()
            work(k, deadline)

        pool = [threading.Thread(target=thread_main, args=(k,)) for k in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(done), elapsed


def drive(wl: Workload, spec: Spec, cfg: Config, metered: bool, barrier: _Waiter | None = None) -> Measured:
    """Warm-up, then the timed pass or (`metered`) the metered pass, on one opened
    workload. Never both in one process: a listener once added to SQLAlchemy's `Engine`
    class leaves every engine's dispatch on for good (`_has_events` is never reset), which
    would slow every later timed line, Core's and parquedb-orm's alike. An error says in
    which of them it happened."""
    ids = itertools.count(1)
    phase = "warm-up"
    try:
        _run_threads(wl, spec.threads, ids, seconds=cfg.warmup)
        res = Measured(settings=wl.settings())
        gc.collect()
        if barrier is not None:
            barrier.wait(BARRIER_TIMEOUT)
        if not metered:
            phase = "timed pass"
            res.ops, res.seconds = _run_threads(wl, spec.threads, ids, seconds=cfg.seconds)
            res.rate = res.ops / res.seconds
            return res
        if barrier is not None:
            barrier.wait(BARRIER_TIMEOUT)
        phase = "metered pass"
        wl.meter_start()
        try:
            res.metered_ops, res.metered_seconds = _run_threads(wl, spec.threads, ids, ops=cfg.metered_ops)
        finally:
            res.counts = wl.meter_stop()
        return res
    except threading.BrokenBarrierError:
        raise
    except Exception as exc:
        raise RuntimeError(f"{phase}: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Config:
    seconds: float
    warmup: float
    metered_ops: int
    rounds: int


def _worker(spec: Spec, target: Target, payload_: Payload, worker: int, cfg: Config, metered: bool,
            barrier: _Waiter, out: Any) -> None:  # fmt: skip
    try:
        wl = open_workload(spec, target, payload_, worker)
        try:
            out.put(("ok", asdict(drive(wl, spec, cfg, metered, barrier))))
        finally:
            wl.close()
    except BaseException as exc:
        out.put(("error", f"worker {worker}: {exc}" if isinstance(exc, RuntimeError) else f"worker {worker}: {exc!r}"))
        with contextlib.suppress(Exception):
            cast(Any, barrier).abort()


def run_line(spec: Spec, target: Target, payload_: Payload, cfg: Config, metered: bool) -> Measured:
    """One round of one line: in this process, or in `spec.processes` spawned ones. A
    metered pass always runs in spawned processes (see `drive`)."""
    if spec.processes == 1 and not metered:
        wl = open_workload(spec, target, payload_, 0)
        try:
            return drive(wl, spec, cfg, metered)
        finally:
            wl.close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(spec.processes)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(spec, target, payload_, k, cfg, metered, barrier, out))
             for k in range(spec.processes)]  # fmt: skip
    for p in procs:
        p.start()
    results = [out.get(timeout=BARRIER_TIMEOUT + cfg.warmup + cfg.seconds + 120) for _ in procs]
    for p in procs:
        p.join(60)
    errors = sorted((r[1] for r in results if r[0] == "error"), key=lambda e: "BrokenBarrierError" in e)
    if errors:
        raise RuntimeError("; ".join(errors))  # the first error first, the workers it stopped after it
    parts = [Measured(**{**d, "counts": Counts(**d["counts"])}) for _status, d in results]
    total = Measured(counts=parts[0].counts, settings=parts[0].settings)
    for k, m in enumerate(parts):
        total.ops += m.ops
        total.seconds = max(total.seconds, m.seconds)
        total.rate += m.rate  # the processes ran side by side: their rates add up
        total.metered_ops += m.metered_ops
        total.metered_seconds = max(total.metered_seconds, m.metered_seconds)
        if k:
            total.counts.add(m.counts)
            if m.settings not in total.settings.split(" / "):
                total.settings += f" / {m.settings}"
    return total


def calibrate(root: Path) -> Payload:
    """The WAL blobs of one create and one update of this run's payload."""
    path = root / "calibration.db"
    with pq.ParqueDB(f"sqlite:///{path}", policy=pq.FlushPolicy(mode="manual")) as db:
        first = db.create(NS, payload(1))
        db.update(NS, first["$id"].split("/")[1], update_of(1))
    con = sqlite3.connect(path)
    blobs = [bytes(r[0]) for r in con.execute("SELECT events FROM events_wal WHERE ns = ? ORDER BY first_seq", (NS,))]
    con.close()
    assert len(blobs) == 2, blobs
    return Payload(blobs[0], blobs[1])


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    spec: Spec
    measured: Measured | None
    error: str | None = None


def _per_op(value: int | None, ops: int, faithful_backend: bool) -> str:
    if not faithful_backend:
        return "n/f"
    if value is None:
        return "n/a"
    return f"{value / ops:.2f}"


def _ratio(rows: dict[str, Row], row: Row, ref: str | None) -> str:
    if ref is None or row.measured is None:
        return ""
    other = rows.get(ref)
    if other is None or other.measured is None or not other.measured.rate:
        return "n/a"
    return f"{row.measured.rate / other.measured.rate:.2f}"


def render(rows: list[Row], header: list[str], cfg: Config) -> str:
    by_key = {r.spec.key: r for r in rows}
    out = [*header, ""]
    spread = cfg.rounds > 1
    out.append("| line | backend | procs x threads | ops/s |" + (" range |" if spread else "")
               + " ÷ raw | ÷ Core | statements/op | rows read/op | rows written/op | settings read back |")
    out.append("|---|---|---:|---:|" + ("---:|" if spread else "") + "---:|---:|---:|---:|---:|---|")
    slowdowns: list[float] = []
    for r in rows:
        s, m = r.spec, r.measured
        where = f"{s.processes} x {s.threads}"
        if m is None:
            out.append(f"| {s.label} | {s.backend} | {where} | failed: {r.error} |" + " |" * (6 + spread))
            continue
        faithful_backend = s.backend == "sqlite"
        ops = max(m.metered_ops, 1)
        if m.metered_seconds and m.rate:
            slowdowns.append(1 - (m.metered_ops / m.metered_seconds) / m.rate)
        out.append(
            f"| {s.label} | {s.backend} | {where} | {m.rate:,.0f} "
            + (f"| {min(m.rates):,.0f}-{max(m.rates):,.0f} " if spread else "")
            + f"| {_ratio(by_key, r, s.raw_ref)} "
            f"| {_ratio(by_key, r, s.core_ref)} | {m.counts.statements / ops:.2f} "
            f"| {_per_op(m.counts.rows_read, ops, faithful_backend)} "
            f"| {_per_op(m.counts.rows_written, ops, faithful_backend)} | {m.settings} |"
        )
    out.append("")
    out.append(
        f"- ops/s: the timed pass ({cfg.seconds:g} s per line after {cfg.warmup:g} s of warm-up"
        + (f"; median of {cfg.rounds} rounds, every line once per round, in table order" if cfg.rounds > 1 else "")
        + "; no meter attached). ÷ raw / ÷ Core: ops/s over the raw driver's / SQLAlchemy Core's line of the "
        "same backend and kind (INSERT for creates, UPDATE for updates; 4-process lines over the 4-process raw "
        "line), same run."
    )
    meter_note = (
        f" The meter slows a line by up to {100 * max(slowdowns):.0f}% (median "
        f"{100 * statistics.median(slowdowns):.0f}%; metered pass vs the line's timed pass), which is why "
        "it is kept out of the timed pass."
        if slowdowns
        else ""
    )
    out.append(
        f"- statements and rows per op: a separate metered pass of {cfg.metered_ops} ops per line (all its "
        "threads / processes together) after the timed rounds, on a fresh store of the line, in a process "
        "of its own." + meter_note + " A "
        "statement is one DBAPI execute; BEGIN / COMMIT are not counted. Id blocks (one counter UPDATE per "
        "100 creates, on the store's side engine) are included, hence fractions."
    )
    out.append(
        "- rows read / written: libSQL's counters (faithful meter: what D1 / Turso bill) on SQLite; `n/f` on "
        "the servers, where only statements are counted (portable meter; raw lines: one per op by "
        "construction). `n/a`: the faithful library could not be loaded."
    )
    out.append(
        "- same row: raw and Core lines write rows of events_wal's shape whose blob is the WAL blob "
        "parquedb-orm wrote for one create / one update of the same payload; UPDATE lines rewrite 100 seeded "
        "keys round-robin. parquedb-orm runs with `FlushPolicy(mode=\"manual\")` and no archive: no flush in "
        "any figure."
    )
    return "\n".join(out) + "\n"


def _revision() -> str:
    """The parquedb-orm code measured: its git commit, and whether it has local changes."""
    pkg = Path(pq.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(pkg), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(pkg), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"parquedb-orm from {pkg} (not a git checkout)"
    return f"parquedb-orm at {sha}" + (" with uncommitted changes under parquedb_orm/" if dirty else "")


def _server_version(admin: str) -> str | None:
    try:
        eng = sa.create_engine(admin, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            version = str(conn.exec_driver_sql("SELECT version()").scalar())
        eng.dispose()
        return version.split(" on ")[0].split(",")[0]
    except Exception:
        return None


# --------------------------------------------------------------------------- profile


def _where(filename: str, func: str) -> str:
    """The package a profiled function belongs to."""
    for part, name in (("/parquedb_orm/", "parquedb_orm"), ("/sqlalchemy/", "sqlalchemy"), ("/zstandard", "zstandard"),
                       ("/sqids/", "sqids"), ("/benchmarks/", "benchmark loop")):  # fmt: skip
        if part in filename:
            return name
    if filename == "~":  # a C function: pysqlite's execute / commit are where SQLite runs
        return "sqlite3 (C: SQLite itself)" if "sqlite3.Connection" in func or "sqlite3.Cursor" in func else "other C"
    return "Python stdlib / other"


def profile_loops(root: Path, ops: int) -> str:
    """cProfile of the single-op create and update loops (SQLite, single owner): the top
    functions by cumulative and by own time, and own time by package."""
    out = io.StringIO()
    for kind in ("insert", "update"):
        path = root / f"profile-{kind}.db"
        line = ParqueLine(Target("sqlite", f"sqlite:///{path}", str(path)), kind, shared=False,
                          group_commit=True)  # fmt: skip
        for i in range(1, 200):  # warm-up
            line.op(i)
        prof = cProfile.Profile()
        prof.enable()
        for i in range(200, 200 + ops):
            line.op(i)
        prof.disable()
        line.close()
        call = "create" if kind == "insert" else "update"
        stats = pstats.Stats(prof, stream=out)
        raw = cast(dict[tuple[str, int, str], tuple[int, int, float, float, Any]], stats.stats)  # type: ignore[attr-defined]
        total = sum(v[2] for v in raw.values())
        out.write(f"\n### cProfile: {ops} single-op `db.{call}` calls on SQLite ({1e6 * total / ops:.0f} µs "
                  "per call under the profiler)\n\n")  # fmt: skip
        by_pkg: dict[str, float] = {}
        for (filename, _line, func), v in raw.items():
            by_pkg[_where(filename, func)] = by_pkg.get(_where(filename, func), 0.0) + v[2]
        out.write("Own time by package: " + ", ".join(
            f"{name} {100 * t / total:.0f}%" for name, t in sorted(by_pkg.items(), key=lambda kv: -kv[1])) + "\n\n")
        for order, top in (("cumulative", 20), ("tottime", 10)):
            title = f"top {top} by {'cumulative' if order == 'cumulative' else 'own'} time"
            out.write(f"{title}:\n\n```\n")
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
            text = buf.getvalue()
            out.write(text[text.index("   ncalls"):].rstrip() + "\n```\n\n")
    return out.getvalue()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.commit",
        description="Commits per second and statements / rows per commit: raw driver, SQLAlchemy Core, "
        "parquedb-orm (single op, ORM session, group commit, shared mode) on SQLite, PostgreSQL and MariaDB.",
    )
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per line (default 5, --quick 1)")
    ap.add_argument("--quick", action="store_true", help="1 s per line, short warm-up, 100 metered ops")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds per line (default 1, --quick 0.3)")
    ap.add_argument("--metered-ops", type=int, default=None, help="ops of the metered pass (default 200)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every line R times, round-robin (fresh database each time); median ops/s")  # fmt: skip
    ap.add_argument("--no-servers", action="store_true", help="SQLite lines only")
    ap.add_argument("--lines", default=None, help="comma-separated line keys to run (default: all)")
    ap.add_argument("--list", action="store_true", help="print the line keys and exit")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where commit.md goes (default benchmarks/results/)")
    ap.add_argument("--json", type=Path, default=None, help="also write every number as JSON here")
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the create / update loops")
    ap.add_argument("--pg-url", default=PG_ADMIN, help="PostgreSQL admin URL (a database is created next to it)")
    ap.add_argument("--mysql-url", default=MY_ADMIN, help="MariaDB / MySQL admin URL")
    ap.add_argument("--keep", type=Path, default=None, help="keep the SQLite files in this folder")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("PARQUEDB_METERED") != "1":
        try:
            env = {**metered_env(), "PARQUEDB_METERED": "1"}
        except FaithfulMeterUnavailable as exc:
            print(f"faithful SQLite meter unavailable ({exc}); rows are n/a", file=sys.stderr)
        else:
            cmd = [sys.executable, "-m", "benchmarks.commit", *(sys.argv[1:] if argv is None else argv)]
            return subprocess.run(cmd, env=env).returncode
    quick = bool(args.quick)
    cfg = Config(
        seconds=float(args.seconds) if args.seconds is not None else (1.0 if quick else 5.0),
        warmup=args.warmup if args.warmup is not None else (0.3 if quick else 1.0),
        metered_ops=args.metered_ops if args.metered_ops is not None else (100 if quick else 200),
        rounds=max(1, int(args.rounds)),
    )
    specs = _sqlite_specs()
    admin = {"postgresql": str(args.pg_url), "mysql": str(args.mysql_url)}
    versions: dict[str, str | None] = {}
    if not args.no_servers:
        for backend in ("postgresql", "mysql"):
            versions[backend] = _server_version(admin[backend])
            if versions[backend] is not None:
                specs += _server_specs(backend)
    if args.list:
        for s in specs:
            print(f"{s.key:24} {s.label} ({s.backend}, {s.processes} x {s.threads})")
        return 0
    if args.lines:
        wanted = {k.strip() for k in str(args.lines).split(",") if k.strip()}
        unknown = wanted - {s.key for s in specs}
        if unknown:
            print(f"unknown line keys: {sorted(unknown)} (see --list)", file=sys.stderr)
            return 2
        specs = [s for s in specs if s.key in wanted]

    root = Path(tempfile.mkdtemp(prefix="pq-commit-")) if args.keep is None else Path(args.keep)
    root.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks.commit", *(sys.argv[1:] if argv is None else argv)])
    header = [
        "# Commit throughput: raw driver, SQLAlchemy Core, parquedb-orm",
        "",
        f"`{command}`",
        "",
        ", ".join([
            f"Python {platform.python_version()}", f"SQLAlchemy {sa.__version__}",
            f"SQLite {sqlite3.sqlite_version} ({'faithful meter' if faithful_available() else 'no faithful meter'})",
            *(v for v in versions.values() if v),
        ]) + f"; {os.cpu_count()} cores; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {_revision()}.",
    ]
    rows: list[Row] = []
    failed = False
    try:
        payload_ = calibrate(root)
        header.append(f"WAL blob of one create: {len(payload_.create_blob)} bytes, of one update: "
                      f"{len(payload_.update_blob)} bytes (the raw and Core lines write the same blobs).")  # fmt: skip
        rows = [Row(spec, None) for spec in specs]

        def attempt(row: Row, metered: bool) -> Measured | None:
            """One pass of one line on a fresh store; a failure marks the row and the run."""
            nonlocal failed
            try:
                target = prepare_target(row.spec, root, payload_, admin)
                return run_line(row.spec, target, payload_, cfg, metered=metered)
            except Exception as exc:
                failed = True
                first = (str(exc).strip().splitlines() or [""])[0].replace("|", "/")
                row.measured, row.error = None, f"{type(exc).__name__}: {first[:240]}"
                return None

        for rnd in range(cfg.rounds):  # round-robin: a slow minute of the machine hits every line alike
            for row in rows:
                if row.error is not None:
                    continue
                print(f"... round {rnd + 1}/{cfg.rounds}: {row.spec.key}", file=sys.stderr, flush=True)
                m = attempt(row, metered=False)
                if m is None:
                    continue
                if row.measured is None:
                    row.measured = m
                row.measured.rates.append(m.rate)
                row.measured.rate = statistics.median(row.measured.rates)
        for row in rows:  # the counts: one metered pass per line, on a fresh store, in its own process(es)
            if row.error is not None or row.measured is None:
                continue
            print(f"... metered pass: {row.spec.key}", file=sys.stderr, flush=True)
            measured = row.measured
            m = attempt(row, metered=True)
            if m is None:
                continue
            measured.counts = m.counts
            measured.metered_ops, measured.metered_seconds = m.metered_ops, m.metered_seconds
        sqlite_settings = {r.measured.settings for r in rows if r.measured is not None and r.spec.backend == "sqlite"}
        if sqlite_settings:
            same = "yes" if sqlite_settings == {"wal/NORMAL"} else f"NO: {sorted(sqlite_settings)}"
            header.append(f"Every SQLite line read back journal_mode=wal, synchronous=NORMAL: {same}.")
        report = render(rows, header, cfg)
        if args.profile:
            report += profile_loops(root, 2000)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "commit.md").write_text(report)
    if args.json is not None:
        args.json.write_text(json.dumps([{"spec": asdict(r.spec), "measured": asdict(r.measured) if r.measured
                                          else None, "error": r.error} for r in rows], indent=1))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
