"""parquedb-meter: statement and row meters for SQLAlchemy engines.

A development tool of the parquedb-orm repository (``tools/meter``), not part of
the ``parquedb_orm`` package and independent of it: it meters any SQLAlchemy
engine.  From a source checkout the tests and benchmarks import it directly
(they put ``tools/meter`` on ``sys.path``); elsewhere ``pip install ./tools/meter``.

Two levels of fidelity:

* **portable** (any dialect): counts statements, ``cursor.rowcount`` of DML,
  rows inserted per table (parameter sets x ``VALUES`` tuples, parsed from the
  SQL) and rows returned where the driver knows them without extra work:
  psycopg / PyMySQL buffer results, so ``rowcount`` is the result size;
  server-side cursors and portable SQLite give ``None``.  Works on sqlite,
  postgresql+psycopg and mysql+pymysql engines.  Transaction control
  (SAVEPOINT / RELEASE / ROLLBACK TO) is not counted.
* **faithful** (SQLite only): when the process loaded the ``libsqlite3`` built
  by ``scripts/build_metered_sqlite.sh`` (libSQL's ``LIBSQL_STMTSTATUS_ROWS_READ``
  / ``..._ROWS_WRITTEN`` counters), every statement also gets the rows read and
  rows written exactly as Cloudflare D1 / Durable Objects and Turso bill them,
  and the rows it returned.  Start Python with :func:`metered_env` (it sets
  ``LD_LIBRARY_PATH``; the build needs the repository's
  ``scripts/build_metered_sqlite.sh``, gcc and npm once).
  The counters arrive through ``sqlite3_trace_v2(SQLITE_TRACE_PROFILE)`` when a
  statement finishes (for a SELECT: when its rows are exhausted or the cursor
  closes), so ``sqlite3.Connection.set_trace_callback`` cannot be used on a
  metered connection at the same time.

A raw ``sqlite3.Connection`` (no SQLAlchemy) is metered the same way by
:class:`SQLite3Meter`: its statements go to the meters it is given and to every
process-wide :class:`EngineMeter` (one installed on the ``Engine`` class itself).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext

__all__ = [
    "EngineMeter",
    "FaithfulMeterUnavailable",
    "Meter",
    "SQLite3Meter",
    "StatementRecord",
    "build_metered_sqlite",
    "faithful_available",
    "meter",
    "metered_env",
    "metered_lib_dir",
    "run_metered",
]

# stmt-status opcodes (libSQL numbering; 1027 is this project's own addition).
LIBSQL_STMTSTATUS_ROWS_READ: Final = 1025
LIBSQL_STMTSTATUS_ROWS_WRITTEN: Final = 1026
PARQUEDB_STMTSTATUS_ROWS_RETURNED: Final = 1027
_COUNTER_OPS: Final = (LIBSQL_STMTSTATUS_ROWS_READ, LIBSQL_STMTSTATUS_ROWS_WRITTEN, PARQUEDB_STMTSTATUS_ROWS_RETURNED)
_SQLITE_TRACE_PROFILE: Final = 0x02

# This file is <repo>/tools/meter/parquedb_meter/__init__.py in a source checkout
# (imported from there, or installed editable); an installed copy has no repository.
_PACKAGE_DIR: Final = Path(__file__).resolve().parent
_REPO_ROOT: Final = _PACKAGE_DIR.parents[2] if len(_PACKAGE_DIR.parents) > 2 else _PACKAGE_DIR
_BUILD_SCRIPT: Final = _REPO_ROOT / "scripts" / "build_metered_sqlite.sh"


# --------------------------------------------------------------------------
# SQL text analysis (cheap regexes; run once per statement)
# --------------------------------------------------------------------------

_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/|\()*", re.S)
_IDENT = r"(?:`[^`]+`|\"[^\"]+\"|\[[^\]]+\]|[\w$]+)"
_QUALIFIED = rf"({_IDENT}(?:\s*\.\s*{_IDENT})?)"
_INSERT_TARGET = re.compile(
    r"^(?:INSERT|REPLACE)\b(?:\s+OR\s+\w+)?(?:\s+(?:IGNORE|LOW_PRIORITY|DELAYED|HIGH_PRIORITY))*"
    rf"\s+(?:INTO\s+)?{_QUALIFIED}",
    re.I,
)
_WITH_DML = re.compile(r"\)\s*(INSERT|REPLACE|UPDATE|DELETE)\b", re.I)
_DML_KINDS: Final = frozenset({"INSERT", "REPLACE", "UPDATE", "DELETE", "MERGE", "UPSERT"})
_TX_KINDS: Final = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "START", "XA"})
_PENDING_PER_CONNECTION: Final = 256
_CONFLICT_SKIP = re.compile(r"\bOR\s+IGNORE\b|\bDO\s+NOTHING\b|\bON\s+CONFLICT\b", re.I)
_VALUES_KW = re.compile(r"\bVALUES?\b", re.I)


def _unquote(name: str) -> str:
    parts = [p.strip().strip('`"[]') for p in name.split(".")]
    return parts[-1].lower()


def _statement_kind(sql: str) -> str:
    """First SQL verb, upper-case (``WITH ... INSERT`` counts as INSERT)."""
    body = sql[_LEADING_NOISE.match(sql).end() :]  # type: ignore[union-attr]
    m = re.match(r"[A-Za-z]+", body)
    if m is None:
        return ""
    kind = m.group(0).upper()
    if kind == "WITH":
        dml = _WITH_DML.search(body)
        return dml.group(1).upper() if dml else "SELECT"
    return kind


def _insert_target(sql: str) -> str | None:
    body = sql[_LEADING_NOISE.match(sql).end() :]  # type: ignore[union-attr]
    m = _INSERT_TARGET.match(body)
    return _unquote(m.group(1)) if m else None


def _values_tuples(sql: str, backslash_escapes: bool = False) -> int:
    """Rows spelled out after ``VALUES`` (``VALUES (..), (..)`` -> 2).

    Handles SQLAlchemy's insertmanyvalues batches, including the PostgreSQL
    form ``INSERT .. SELECT .. FROM (VALUES (..), (..)) AS imp_sen(..)``.
    Returns 0 when there is no VALUES clause (e.g. ``INSERT .. SELECT``).
    ``backslash_escapes``: MySQL's default string syntax (``'it\\'s'``);
    SQLite and PostgreSQL treat a backslash as an ordinary character.
    """
    m = _VALUES_KW.search(sql)
    if m is None:
        return 0
    count = 0
    depth = 0
    i = m.end()
    n = len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            # skip a quoted literal / identifier ('' escapes itself)
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                if backslash_escapes and sql[j] == "\\" and c == "'":
                    j += 1
                j += 1
            i = j + 1
            continue
        if c == "(":
            if depth == 0:
                count += 1
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:  # closed the parenthesis enclosing VALUES
                break
        elif depth == 0 and c not in " \t\r\n,":
            break  # ON CONFLICT / RETURNING / AS ... ends the list
        i += 1
    return count


_ANALYSIS_CACHE: dict[tuple[str, bool], tuple[str, str | None, int]] = {}
_ANALYSIS_CACHE_MAX: Final = 4096


def _analyze(sql: str, backslash_escapes: bool) -> tuple[str, str | None, int]:
    """(kind, INSERT target, VALUES tuples) of ``sql``, memoised: SQLAlchemy's
    compiled cache hands the same statement strings over and over, and the
    regexes would otherwise be most of the meter's per-statement cost."""
    key = (sql, backslash_escapes)
    hit = _ANALYSIS_CACHE.get(key)
    if hit is not None:
        return hit
    kind = _statement_kind(sql)
    table = _insert_target(sql) if kind in ("INSERT", "REPLACE") else None
    values_rows = _values_tuples(sql, backslash_escapes) if table is not None else 1
    if len(_ANALYSIS_CACHE) >= _ANALYSIS_CACHE_MAX:
        _ANALYSIS_CACHE.clear()  # literal-heavy workloads: cheap, bounded
    result = (kind, table, values_rows)
    _ANALYSIS_CACHE[key] = result
    return result


_TABLE_REF_CACHE: dict[str, re.Pattern[str]] = {}


def _table_ref_pattern(table: str) -> re.Pattern[str]:
    pat = _TABLE_REF_CACHE.get(table)
    if pat is None:
        name = re.escape(table)
        pat = re.compile(
            r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE|REPLACE)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?"
            rf"(?:{_IDENT}\s*\.\s*)?[`\"\[]?{name}[`\"\]]?(?![\w$])",
            re.I,
        )
        _TABLE_REF_CACHE[table] = pat
    return pat


# --------------------------------------------------------------------------
# Records and the meter
# --------------------------------------------------------------------------


@dataclass(slots=True)
class StatementRecord:
    """One statement sent through a DBAPI cursor."""

    sql: str
    params_count: int  # 1 for execute, N for executemany
    rows_affected: int  # rowcount of INSERT/UPDATE/DELETE (summed over executemany), 0 for SELECT
    rows_returned: int | None  # rows the statement produced; None when not countable
    rows_read: int | None  # faithful (SQLite with counters only)
    rows_written: int | None  # faithful
    kind: str = ""  # first SQL verb, upper-case: SELECT, INSERT, ...
    table: str | None = None  # INSERT target table (lower-case, unquoted)
    values_rows: int = 1  # rows spelled per parameter set (multi-VALUES); 0 for INSERT .. SELECT

    @property
    def inserted_rows(self) -> int:
        """Rows this INSERT put into :attr:`table` (0 for other statements)."""
        if self.table is None:
            return 0
        if self.values_rows == 0:  # INSERT .. SELECT: only the DBAPI knows
            return max(self.rows_affected, 0)
        return self.params_count * self.values_rows


@dataclass
class Meter:
    """Counters for the statements an engine ran while the meter was attached."""

    faithful: bool = False
    statements: int = 0
    rows_affected: int = 0
    rows_returned: int = 0
    rows_read: int | None = None
    rows_written: int | None = None
    records: list[StatementRecord] = field(default_factory=list)
    # Keep at most this many records (oldest dropped); None keeps all.  The
    # counters, including inserted_rows(), stay exact either way.
    max_records: int | None = None
    _inserted: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.faithful:
            self.rows_read = self.rows_read or 0
            self.rows_written = self.rows_written or 0

    def reset(self) -> None:
        with self._lock:
            self.statements = 0
            self.rows_affected = 0
            self.rows_returned = 0
            self.rows_read = 0 if self.faithful else None
            self.rows_written = 0 if self.faithful else None
            self.records = []
            self._inserted = {}

    def inserted_rows(self, table: str) -> int:
        """Rows INSERTed into ``table``: parameter sets x VALUES tuples of each
        completed ``INSERT INTO table`` (``rowcount`` for ``INSERT .. SELECT``)."""
        with self._lock:
            return self._inserted.get(_unquote(table), 0)

    def statements_on(self, table: str) -> list[StatementRecord]:
        """Records whose SQL names ``table`` after FROM/INTO/UPDATE/JOIN/TABLE."""
        pat = _table_ref_pattern(_unquote(table))
        with self._lock:
            return [r for r in self.records if pat.search(r.sql)]

    def snapshot(self) -> dict[str, int | None]:
        with self._lock:
            return {
                "statements": self.statements,
                "rows_affected": self.rows_affected,
                "rows_returned": self.rows_returned,
                "rows_read": self.rows_read,
                "rows_written": self.rows_written,
            }

    # -- updates (called from engine events / the SQLite trace callback) --

    def _open(self, record: StatementRecord) -> None:
        with self._lock:
            self.statements += 1
            self.records.append(record)
            cap = self.max_records
            if cap is not None and len(self.records) >= 2 * cap + 1:
                # trim in batches so appends stay amortised O(1)
                del self.records[: len(self.records) - cap]

    def _close(self, record: StatementRecord, affected: int, returned: int | None) -> None:
        with self._lock:
            record.rows_affected += affected
            self.rows_affected += affected
            if record.table is not None:
                self._inserted[record.table] = self._inserted.get(record.table, 0) + record.inserted_rows
            if returned is not None:
                record.rows_returned = (record.rows_returned or 0) + returned
                self.rows_returned += returned

    def _faithful_add(self, record: StatementRecord | None, read: int, written: int, returned: int) -> None:
        with self._lock:
            if self.rows_read is not None:
                self.rows_read += read
            if self.rows_written is not None:
                self.rows_written += written
            if record is None:
                return
            if record.rows_read is not None:
                record.rows_read += read
            if record.rows_written is not None:
                record.rows_written += written
            if record.rows_returned is not None:
                record.rows_returned += returned
                self.rows_returned += returned
            # SQLite reports DML rowcount only after RETURNING rows are fetched,
            # i.e. after after_cursor_execute; RETURNING yields one row per
            # affected row, so the VM's result-row count is the exact value.
            if record.kind in _DML_KINDS and returned > record.rows_affected:
                delta = returned - record.rows_affected
                self.rows_affected += delta
                record.rows_affected = returned
                if record.table is not None and record.values_rows == 0:
                    self._inserted[record.table] = self._inserted.get(record.table, 0) + delta


# --------------------------------------------------------------------------
# Engine instrumentation
# --------------------------------------------------------------------------


class _StatementMeter:
    """The counting shared by :class:`EngineMeter` and :class:`SQLite3Meter`: one
    :class:`StatementRecord` per statement sent through a DBAPI cursor, and the faithful
    counters of each finished statement attributed by (connection handle, SQL)."""

    def __init__(self, dialect: str, max_records: int | None) -> None:
        self._sqlite = dialect == "sqlite"
        self._backslash = dialect in ("mysql", "mariadb")
        self._faithful = self._sqlite and faithful_available()
        self.meter = Meter(faithful=self._faithful, max_records=max_records)
        self._local = threading.local()
        self._installed = False
        # db handle -> normalised SQL -> latest record (faithful attribution)
        self._by_db: dict[int, dict[str, StatementRecord]] = {}

    @property
    def installed(self) -> bool:
        return self._installed

    def _open_statement(
        self, statement: str, parameters: Any, executemany: bool, conn: Connection | int
    ) -> StatementRecord | None:
        """Start the record of one statement (None for transaction control).

        ``conn``: the SQLAlchemy connection running it, or the ``sqlite3*`` handle of a
        raw connection (0: not traced), for the faithful counters' attribution."""
        kind, table, values_rows = _analyze(statement, self._backslash)
        if kind in _TX_KINDS:
            # SAVEPOINT / RELEASE / ROLLBACK TO (begin_nested) are transaction
            # control, like the BEGIN/COMMIT that never reach cursor_execute.
            return None
        # insertmanyvalues batches arrive with executemany=True but one flat
        # parameter set; their rows are the VALUES tuples of the batch.
        many = executemany and _is_param_list(parameters)
        params_count = len(parameters) if many else 1
        record = StatementRecord(
            sql=statement,
            params_count=params_count,
            rows_affected=0,
            rows_returned=None,
            rows_read=0 if self._faithful else None,
            rows_written=0 if self._faithful else None,
            kind=kind,
            table=table,
            values_rows=values_rows,
        )
        if self._faithful:
            record.rows_returned = 0
            db = conn if isinstance(conn, int) else _FAITHFUL.db_handle(conn)
            if db:
                key = _norm_sql(statement)
                with self.meter._lock:
                    pending = self._by_db.setdefault(db, {})
                    pending.pop(key, None)  # re-insert: dict order = recency
                    pending[key] = record
                    if len(pending) > _PENDING_PER_CONNECTION:
                        # a statement's counters arrive when it finishes, long
                        # before this many newer statements ran on the connection
                        del pending[next(iter(pending))]
        self.meter._open(record)
        return record

    def _close_statement(self, record: StatementRecord, cursor: _CursorLike, server_side: bool) -> None:
        """Finish ``record`` once its DBAPI call returned ``cursor``."""
        statement = record.sql
        rowcount = _rowcount(cursor)
        has_rows = cursor.description is not None
        affected = 0
        if record.kind in _DML_KINDS and rowcount > 0:
            affected = rowcount
        elif (
            self._sqlite
            and not self._faithful
            and has_rows
            and record.table is not None
            and record.values_rows > 0
            and _CONFLICT_SKIP.search(statement) is None
        ):
            # pysqlite sets rowcount of INSERT .. RETURNING only once the rows
            # are fetched (after this event); each spelled row is one insert.
            affected = record.inserted_rows
        returned: int | None = None
        if has_rows and not self._sqlite and not server_side:
            # psycopg / PyMySQL buffer the whole result: rowcount is its size.
            returned = max(rowcount, 0)
        self.meter._close(record, affected, returned)

    def _on_profile(self, db: int, sql: str, read: int, written: int, returned: int) -> None:
        """Counters of one finished SQLite statement (from the trace callback)."""
        with self.meter._lock:
            stmts = self._by_db.get(db)
            if stmts is None:
                return  # a connection of another engine
            record = stmts.get(_norm_sql(sql))
        self.meter._faithful_add(record, read, written, returned)


class EngineMeter(_StatementMeter):
    """Long-lived meter: ``EngineMeter(engine).install()`` ... ``.uninstall()``.

    Listeners are added by :meth:`install` and removed by :meth:`uninstall`
    (symmetric); the counters live in :attr:`meter`.

    A meter whose ``engine`` is the :class:`~sqlalchemy.engine.Engine` class itself
    listens to every engine of the process; while installed it also counts the
    statements of every :class:`SQLite3Meter` (raw ``sqlite3`` connections).
    """

    def __init__(self, engine: Engine, *, max_records: int | None = None) -> None:
        self.engine = engine
        super().__init__(engine.dialect.name, max_records)

    def install(self) -> EngineMeter:
        if self._installed:
            return self
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        if self._faithful:
            _FAITHFUL.subscribe(self)
        if self._process_wide():
            _PROCESS_METERS.add(self)
        self._installed = True
        return self

    def uninstall(self) -> None:
        if not self._installed:
            return
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)
        if self._faithful:
            _FAITHFUL.unsubscribe(self)
        _PROCESS_METERS.discard(self)
        with self.meter._lock:
            self._by_db.clear()
        self._installed = False

    def __enter__(self) -> Meter:
        self.install()
        return self.meter

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def _process_wide(self) -> bool:
        """Listening on the ``Engine`` class (every engine), not on one engine."""
        engine: object = self.engine
        return isinstance(engine, type) and issubclass(engine, Engine)

    # -- event handlers ---------------------------------------------------

    def _before(
        self,
        conn: Connection,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        self._local.current = self._open_statement(statement, parameters, executemany, conn)

    def _after(
        self,
        conn: Connection,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        record: StatementRecord | None = getattr(self._local, "current", None)
        if record is None or record.sql != statement:
            return
        self._local.current = None
        self._close_statement(record, cursor, _server_side(context))


@contextlib.contextmanager
def meter(engine: Engine) -> Iterator[Meter]:
    """Meter the statements ``engine`` runs inside the ``with`` block."""
    em = EngineMeter(engine).install()
    try:
        yield em.meter
    finally:
        em.uninstall()


class _ProcessMeters:
    """The installed process-wide :class:`EngineMeter` objects (on the ``Engine``
    class), which also count :class:`SQLite3Meter` statements. Copy-on-write tuple:
    read without the lock on every statement."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.meters: tuple[EngineMeter, ...] = ()

    def add(self, em: EngineMeter) -> None:
        with self._lock:
            if em not in self.meters:
                self.meters = (*self.meters, em)

    def discard(self, em: EngineMeter) -> None:
        with self._lock:
            self.meters = tuple(m for m in self.meters if m is not em)


_PROCESS_METERS: Final = _ProcessMeters()


# --------------------------------------------------------------------------
# Raw sqlite3 connections (no SQLAlchemy)
# --------------------------------------------------------------------------


class SQLite3Meter(_StatementMeter):
    """Meter the statements of one raw :class:`sqlite3.Connection` exactly as
    :class:`EngineMeter` meters an engine's.

    A bare connection has no cursor events, so its statements are run through
    :meth:`execute` and :meth:`executemany` (same arguments and result as the
    connection's own methods). Each call is one statement, as one DBAPI cursor call is
    for an engine: an ``executemany`` of N parameter sets is one statement of N
    inserted rows. Transaction control (``BEGIN``, ``COMMIT``, savepoints) is not
    counted, as an engine's BEGIN / COMMIT never reach its cursor events.

    With the faithful library loaded, the connection is traced at its first metered
    statement (``sqlite3_trace_v2``, as an engine's connections are), so each statement
    also gets its rows read, written and returned; a statement run on the connection
    directly (``con.execute``, ``con.commit()``) after that still adds its rows to the
    totals, unattributed, like an engine's BEGIN / COMMIT. The statements that set the
    connection up before its first metered one are not counted (an engine's ``connect``
    listeners are not either). ``set_trace_callback`` cannot be used on the connection.

    The statements are counted by this meter's own :attr:`meter` while it is installed,
    and by every process-wide :class:`EngineMeter` (one installed on the ``Engine``
    class, such as the benchmarks' ``ProcessMeter``) installed when they run::

        with SQLite3Meter(sqlite3.connect(path)) as sm:  # or .install() ... .uninstall()
            sm.execute("INSERT INTO t (a) VALUES (?)", (1,))
            sm.con.commit()
        sm.meter.statements, sm.meter.rows_written  # 1, 1 (faithful) or None
    """

    def __init__(self, con: sqlite3.Connection, *, max_records: int | None = None) -> None:
        super().__init__("sqlite", max_records)
        self.con = con
        self._db: int | None = None  # sqlite3* once traced (0: no counters)

    def install(self) -> SQLite3Meter:
        if not self._installed:
            if self._faithful:
                _FAITHFUL.subscribe(self)
            self._installed = True
        return self

    def uninstall(self) -> None:
        if not self._installed:
            return
        if self._faithful:
            _FAITHFUL.unsubscribe(self)
        with self.meter._lock:
            self._by_db.clear()
        self._installed = False

    def __enter__(self) -> SQLite3Meter:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    @property
    def db_handle(self) -> int:
        """The connection's ``sqlite3*``, traced on first use (0 without counters)."""
        if self._db is None:
            self._db = _FAITHFUL.trace_connection(self.con) if faithful_available() else 0
        return self._db

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        """``con.execute(sql, parameters)``, metered as one statement."""
        return self._run(sql, parameters, False)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> sqlite3.Cursor:
        """``con.executemany(sql, seq_of_parameters)``, metered as one statement."""
        params = seq_of_parameters if isinstance(seq_of_parameters, (list, tuple)) else list(seq_of_parameters)
        return self._run(sql, params, True)

    def _run(self, sql: str, parameters: Any, many: bool) -> sqlite3.Cursor:
        db = self.db_handle
        meters: tuple[_StatementMeter, ...] = _PROCESS_METERS.meters
        if self._installed:
            meters = (self, *meters)
        opened = [(m, r) for m in meters if (r := m._open_statement(sql, parameters, many, db)) is not None]
        cursor = self.con.executemany(sql, parameters) if many else self.con.execute(sql, parameters)
        for m, record in opened:
            m._close_statement(record, cursor, False)
        return cursor


def _is_param_list(parameters: Any) -> bool:
    if isinstance(parameters, (list, tuple)) and parameters:
        return isinstance(parameters[0], (Mapping, list, tuple))
    return False


class _CursorLike(Protocol):
    """What the meter reads of a cursor after its statement ran (a DBAPI cursor's
    ``description`` and ``rowcount``; SQLAlchemy's and ``sqlite3``'s both have them)."""

    @property
    def description(self) -> object: ...

    @property
    def rowcount(self) -> int: ...


def _rowcount(cursor: _CursorLike) -> int:
    try:
        rc = cursor.rowcount
    except Exception:  # some drivers raise on closed cursors
        return -1
    return rc if isinstance(rc, int) else -1


def _server_side(context: ExecutionContext | None) -> bool:
    return bool(getattr(context, "_is_server_side", False))


def _norm_sql(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


# --------------------------------------------------------------------------
# Faithful SQLite counters (ctypes over the loaded libsqlite3)
# --------------------------------------------------------------------------


class FaithfulMeterUnavailable(RuntimeError):
    """The counter-carrying SQLite library cannot be built or loaded here.

    A :class:`RuntimeError`, so callers that caught the bare ``RuntimeError`` of
    earlier versions keep working.
    """


_TraceCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


class _Faithful:
    """Process-wide access to the counters of the loaded libsqlite3."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._probed = False
        self._lib: ctypes.CDLL | None = None
        self._subscribers: tuple[_StatementMeter, ...] = ()
        # one C callback for every connection; kept alive for the process
        self._callback = _TraceCallback(self._trace)

    # -- library probing --------------------------------------------------

    def lib(self) -> ctypes.CDLL | None:
        if not self._probed:
            with self._lock:
                if not self._probed:
                    self._lib = _load_metered_lib()
                    self._probed = True
        return self._lib

    def subscribe(self, em: _StatementMeter) -> None:
        with self._lock:
            self._subscribers = (*self._subscribers, em)

    def unsubscribe(self, em: _StatementMeter) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not em)

    def db_handle(self, conn: Connection) -> int:
        """``sqlite3*`` of ``conn``'s DBAPI connection, tracing it on first use."""
        fairy = conn.connection
        info = fairy.info
        db = info.get("parquedb_meter_db")
        if isinstance(db, int):
            return db
        lib = self.lib()
        dbapi = fairy.dbapi_connection
        if lib is None or dbapi is None:
            return 0
        db = self.trace_connection(dbapi)
        info["parquedb_meter_db"] = db
        return db

    def trace_connection(self, dbapi: Any) -> int:
        """Trace a DBAPI ``sqlite3`` connection; its ``sqlite3*`` (0: cannot be traced)."""
        lib = self.lib()
        if lib is None:
            return 0
        # The patched library registers parquedb_meter_db_handle() on every
        # connection; asking SQL for the pointer avoids reading CPython's
        # private pysqlite_Connection layout.
        try:
            cur = dbapi.cursor()
            try:
                cur.execute("SELECT parquedb_meter_db_handle()")
                row = cur.fetchone()
            finally:
                cur.close()
        except Exception:
            return 0
        db = int(row[0]) if row and row[0] else 0
        if db:
            rc = lib.sqlite3_trace_v2(ctypes.c_void_p(db), _SQLITE_TRACE_PROFILE, self._callback, ctypes.c_void_p(db))
            if rc != 0:
                db = 0
            else:
                # Counters accumulate per prepared statement until read with
                # reset; pysqlite caches statements, so zero what they gathered
                # before tracing began or the first profile would bill it.
                stmt = lib.sqlite3_next_stmt(ctypes.c_void_p(db), None)
                while stmt:
                    p = ctypes.c_void_p(stmt)
                    for op in _COUNTER_OPS:
                        lib.sqlite3_stmt_status(p, op, 1)
                    stmt = lib.sqlite3_next_stmt(ctypes.c_void_p(db), p)
        return db

    def _trace(self, mask: int, ctx: int | None, stmt: int | None, _x: int | None) -> int:
        # Runs inside sqlite3_step/reset with the GIL re-acquired by ctypes.
        # Exceptions must not escape into C.
        try:
            lib = self._lib
            if mask != _SQLITE_TRACE_PROFILE or lib is None or not stmt or not ctx:
                return 0
            p = ctypes.c_void_p(stmt)
            read = lib.sqlite3_stmt_status(p, LIBSQL_STMTSTATUS_ROWS_READ, 1)
            written = lib.sqlite3_stmt_status(p, LIBSQL_STMTSTATUS_ROWS_WRITTEN, 1)
            returned = lib.sqlite3_stmt_status(p, PARQUEDB_STMTSTATUS_ROWS_RETURNED, 1)
            subs = self._subscribers
            if not subs:
                return 0
            raw = lib.sqlite3_sql(p)
            sql = raw.decode("utf-8", "replace") if raw else ""
            for em in subs:
                em._on_profile(ctx, sql, read, written, returned)
        except BaseException:  # pragma: no cover - never unwind through C
            pass
        return 0


def _loaded_sqlite_path() -> str | None:
    """Path of the libsqlite3 that ``_sqlite3`` is linked against, if mapped."""
    import sqlite3  # noqa: F401  (make sure _sqlite3 and its libsqlite3 are loaded)

    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "libsqlite3" in Path(parts[5]).name:
            return parts[5].strip()
    return None


def _load_metered_lib() -> ctypes.CDLL | None:
    path = _loaded_sqlite_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)  # same handle as the one _sqlite3 uses
        version = lib.parquedb_meter_version
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_int
    version.argtypes = []
    if version() < 1:
        return None
    lib.sqlite3_stmt_status.restype = ctypes.c_int
    lib.sqlite3_stmt_status.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.sqlite3_sql.restype = ctypes.c_char_p
    lib.sqlite3_next_stmt.restype = ctypes.c_void_p
    lib.sqlite3_next_stmt.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.sqlite3_sql.argtypes = [ctypes.c_void_p]
    lib.sqlite3_trace_v2.restype = ctypes.c_int
    lib.sqlite3_trace_v2.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint,
        _TraceCallback,
        ctypes.c_void_p,
    ]
    return lib


_FAITHFUL: Final = _Faithful()


def faithful_available() -> bool:
    """True when this process loaded a libsqlite3 with the row counters."""
    return _FAITHFUL.lib() is not None


def metered_lib_dir() -> Path:
    """Where ``scripts/build_metered_sqlite.sh`` puts ``libsqlite3.so.0``."""
    env = os.environ.get("PARQUEDB_METER_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "parquedb-orm" / "sqlite-meter"


def build_metered_sqlite(timeout: float = 900.0) -> Path:
    """Build (or reuse) the counter-carrying libsqlite3; returns its folder.

    Runs the repository's ``scripts/build_metered_sqlite.sh`` (``tools/meter``
    -> ``../../scripts``).  Without it (an installed copy outside a checkout) an
    already built library in :func:`metered_lib_dir` is reused; otherwise
    :class:`FaithfulMeterUnavailable` is raised.
    """
    lib_dir = metered_lib_dir()
    if not _BUILD_SCRIPT.is_file():
        if (lib_dir / "libsqlite3.so.0").is_file():
            return lib_dir
        raise FaithfulMeterUnavailable(
            "cannot build the metered libsqlite3: the repository's scripts/build_metered_sqlite.sh "
            f"is missing (looked for {_BUILD_SCRIPT}, i.e. tools/meter -> ../../scripts; a "
            "non-editable install of parquedb-meter has no repository) and no library was built "
            f"before ({lib_dir / 'libsqlite3.so.0'} does not exist). In a parquedb-orm checkout run "
            "`bash scripts/build_metered_sqlite.sh` (PARQUEDB_METER_DIR sets its output folder), "
            "or use the meter from tools/meter there (`pip install -e ./tools/meter`)"
        )
    # self-check with this interpreter, whose _sqlite3 is the one to serve
    env = dict(os.environ, PARQUEDB_METER_DIR=str(lib_dir), PYTHON=sys.executable)
    try:
        proc = subprocess.run(
            ["bash", str(_BUILD_SCRIPT)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FaithfulMeterUnavailable(f"metered SQLite build failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise FaithfulMeterUnavailable(f"metered SQLite build failed (exit {proc.returncode}):\n{tail}")
    out = proc.stdout.strip().splitlines()
    built = Path(out[-1]) if out else lib_dir
    if not (built / "libsqlite3.so.0").is_file():
        raise FaithfulMeterUnavailable(f"build did not produce {built / 'libsqlite3.so.0'}")
    return built


def metered_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess that should load the metered libsqlite3.

    Builds the library if needed; raises :class:`FaithfulMeterUnavailable`
    when that is impossible (no compiler, no network for the sources, ...).
    """
    if not sys.platform.startswith("linux"):
        raise FaithfulMeterUnavailable("faithful metering needs Linux (LD_LIBRARY_PATH)")
    lib_dir = build_metered_sqlite()
    env = dict(os.environ if base is None else base)
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{lib_dir}{os.pathsep}{old}" if old else str(lib_dir)
    env["PARQUEDB_METER_DIR"] = str(lib_dir)
    return env


def run_metered(
    args: Sequence[str], *, timeout: float | None = None, cwd: str | Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (e.g. ``[sys.executable, "-c", code]``) with :func:`metered_env`."""
    return subprocess.run(
        list(args),
        env=metered_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
