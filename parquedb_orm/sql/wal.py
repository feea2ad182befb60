"""Write-ahead-log rows: one row = one batch of events of one namespace."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, TextClause, func, select, text, union_all
from sqlalchemy.exc import DBAPIError

from parquedb_orm.core import codec
from parquedb_orm.core.events import Event, RelEvent
from parquedb_orm.errors import ValidationError
from parquedb_orm.sql import dialects
from parquedb_orm.sql.models import Counter, EventsWal, RelsWal

#: A commit's events of one namespace go to one row unless the encoded JSON exceeds
#: this many bytes (D1 and Durable Objects cap a row at 2 MB).
ROW_CAP_BYTES = 1_000_000
#: the largest one event may be, as encoded JSON (a created document, an update's operands,
#: a link's data): MariaDB's default max_allowed_packet is 16 MiB, and a D1 / Durable
#: Objects row is capped at 2 MB (compressed), so a bigger event could not be written
MAX_EVENT_BYTES = 8 * 2**20

#: A single owner's commits skip the flushed-mark check (`insert_unclaimed`) while its last
#: insert into the namespace is younger than OWNER_CHECK_SECONDS; in exchange, a flush keeps
#: any row that may be another writer's next number for RETAIN_SECONDS after it was written
#: (archive/flush.py `_retire`), so that writer's next insert still meets it. The gap between
#: the two covers a row's time from `created_at` to its COMMIT and clocks that disagree.
OWNER_CHECK_SECONDS = 1.0
RETAIN_SECONDS = 4.0

EVENTS: Table = EventsWal.__table__  # type: ignore[assignment]
RELS: Table = RelsWal.__table__  # type: ignore[assignment]


def _chunks(records: list[list[Any]], parts: list[str]) -> Iterator[tuple[list[list[Any]], list[str]]]:
    """Split a commit's encoded records only past the row size cap."""
    start, size = 0, 0
    for i, text_ in enumerate(parts):
        if i > start and size + len(text_) > ROW_CAP_BYTES:
            yield records[start:i], parts[start:i]
            start, size = i, 0
        size += len(text_) + 1
    if start < len(parts):
        yield records[start:], parts[start:]


def build_rows(ns: str, records: list[list[Any]], parts: list[str] | None = None) -> list[dict[str, Any]]:
    """Encoded rows for records already numbered (record[0] is the sequence). Each record
    is encoded once (`parts`: the caller did it): its size decides the split and its text
    goes into the row."""
    now = datetime.now(UTC)
    if parts is None:
        parts = [codec.dumps(rec) for rec in records]
    for rec, text_ in zip(records, parts, strict=True):
        if len(text_) > MAX_EVENT_BYTES:
            raise ValidationError(
                f"an event of {ns}/{rec[3]} encodes to {len(text_):,} bytes of JSON; at most "
                f"{MAX_EVENT_BYTES:,} (sql/wal.MAX_EVENT_BYTES, docs/limits.md): keep large blobs "
                "outside the entity and store a reference"
            )
    return [
        {
            "ns": ns,
            "first_seq": batch[0][0],
            "last_seq": batch[-1][0],
            "event_count": len(batch),
            "events": codec.encode_json("[" + ",".join(texts) + "]"),
            "created_at": now,
        }
        for batch, texts in _chunks(records, parts)
    ]


def build_event_rows(ns: str, events: list[Event]) -> list[dict[str, Any]]:
    """`build_rows` for entity events; each keeps its record's text (the tail packs it)."""
    records = [e.to_record() for e in events]
    parts = [codec.dumps(rec) for rec in records]
    for e, text_ in zip(events, parts, strict=True):
        e.text = text_
    return build_rows(ns, records, parts)


_COLUMNS = ("ns", "first_seq", "last_seq", "event_count", "events", "created_at")
#: PostgreSQL cannot type the parameters of a SELECT without FROM: cast them
_PG_CASTS = ("varchar", "bigint", "bigint", "integer", "bytea", "timestamptz")


@lru_cache(maxsize=256)
def _unclaimed_sql(family: str, paramstyle: str, table: str, checked: tuple[bool, ...]) -> str:
    """The claiming INSERT for rows of this shape (`checked[i]`: row i carries the mark
    check), built once per shape: it runs on every commit."""
    # positional placeholders in the driver's own style (format/pyformat drivers take %s)
    mark = {"qmark": "?", "numeric": ":{}", "numeric_dollar": "${}"}.get(paramstyle, "%s")
    n = 0

    def param(cast: str | None = None) -> str:
        nonlocal n
        n += 1
        text_ = mark.format(n) if "{}" in mark else mark
        return f"CAST({text_} AS {cast})" if cast else text_

    selects = []
    for has_check in checked:
        values = ", ".join(param(_PG_CASTS[i] if family == "postgresql" else None) for i in range(len(_COLUMNS)))
        sel = f"SELECT {values}"
        if has_check:
            sel += f" WHERE NOT EXISTS (SELECT 1 FROM counters WHERE name = {param()} AND value >= {param()})"
        selects.append(sel)
    verb = {"sqlite": "INSERT OR IGNORE INTO", "mysql": "INSERT IGNORE INTO"}.get(family, "INSERT INTO")
    sql = f"{verb} {table} ({', '.join(_COLUMNS)}) {' UNION ALL '.join(selects)}"
    return sql + (" ON CONFLICT DO NOTHING" if family == "postgresql" else "")


@lru_cache(maxsize=32)
def _processors(dialect: Any, table: Table) -> tuple[tuple[str, Any], ...]:
    return tuple((c, table.c[c].type.dialect_impl(dialect).bind_processor(dialect)) for c in _COLUMNS)


def insert_unclaimed(conn: Connection, table: Table, rows: list[dict[str, Any]], marks: dict[str, str] | None) -> bool:
    """Insert a commit's rows in ONE statement unless another writer got to their numbers
    first. False if any row was left out: the caller's numbers are stale.

    A writer numbers from the highest sequence it knows, so the first row anyone else
    writes after this process's last one starts exactly at this process's next number:
    - while that row is in the table, its primary key is taken (the insert skips it);
    - once a flush has retired it, the namespace's flushed mark (counter `marks[ns]`) is
      at or above it: a namespace's first row checked this way goes in only if the mark
      is below it.
    Reading the mark costs a row read (a seek in `counters` that lands on a row; before the
    first flush the key is missing, and a missing key is read for free), so a single owner
    checks it only for namespaces it last inserted into more than OWNER_CHECK_SECONDS ago:
    a flush keeps such a row for RETAIN_SECONDS (archive/flush.py), so a busy owner meets
    it as a taken key. Not the WAL's own newest row as the check: SQLite copies an INSERT's
    SELECT aside when it reads the table it inserts into, and libSQL bills that 2 rows
    (measured with the faithful meter).
    `marks` None or without a row's namespace: only the key counts for it (a floor read
    just now under a lock, in shared mode, or a recent insert of this single owner).

    Sent as the driver's own SQL (built once per shape): the expression language would
    spend more time building and caching this statement than the database takes to run it."""
    if not rows:
        return True
    dialect = conn.dialect
    procs = _processors(dialect, table)
    params: list[Any] = []
    checked = []
    seen: set[str] = set()
    for row in rows:
        params += [row[col] if proc is None else proc(row[col]) for col, proc in procs]
        ns = row["ns"]
        check = marks is not None and ns in marks and ns not in seen
        seen.add(ns)
        if check:
            assert marks is not None
            params += [marks[ns], row["first_seq"]]
        checked.append(check)
    sql = _unclaimed_sql(dialects.family(conn), dialect.paramstyle, table.name, tuple(checked))
    raw = _plain_sqlite(conn)
    if raw is not None:
        try:
            return bool(raw.execute(sql, params).rowcount == len(rows))
        except sqlite3.Error as exc:  # what SQLAlchemy would have raised
            raise DBAPIError.instance(sql, params, exc, sqlite3.Error, dialect=dialect) from exc
    result = conn.exec_driver_sql(sql, tuple(params), execution_options={"preserve_rowcount": True})
    return result.rowcount == len(rows)


def _plain_sqlite(conn: Connection) -> sqlite3.Connection | None:
    """The pysqlite connection under `conn` when SQLAlchemy's execute layers would add
    nothing to the commit's INSERT: no event listener (a user's, or a meter's), no echo.
    They cost ~15 µs a statement, as much as SQLite's own INSERT."""
    if getattr(conn, "_has_events", True) or getattr(conn.engine, "_has_events", True) or getattr(conn, "_echo", True):
        return None
    dbapi = conn.connection.dbapi_connection
    return dbapi if isinstance(dbapi, sqlite3.Connection) else None


def delete_own_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Delete rows this transaction inserted, matched by key AND content: a row under the
    same key with other events is another writer's."""
    from sqlalchemy import and_, delete, or_

    match = [
        and_(table.c.ns == r["ns"], table.c.first_seq == r["first_seq"], table.c.events == r["events"]) for r in rows
    ]
    conn.execute(delete(table).where(or_(*match)))


@lru_cache(maxsize=64)
def _floors_sql(events: int, rels: int, locking: bool = False) -> TextClause:
    """The floors statement for `events` + `rels` namespaces, built once per shape: it runs
    on every commit, and building it with the expression language cost ~0.3 ms."""
    # a snapshot (InnoDB REPEATABLE READ) may predate the last commits: read them locked
    lock = " LOCK IN SHARE MODE" if locking else ""
    parts = []
    for kind, table, count in (("e", "events_wal", events), ("r", "rels_wal", rels)):
        for i in range(count):
            parts.append(
                # the newest row is kept by every flush (flush.py), so the mark is read only
                # where a namespace has no row at all: COALESCE evaluates it lazily
                f"SELECT '{kind}' AS k, :{kind}{i}_ns AS ns, coalesce("
                f"(SELECT last_seq FROM {table} WHERE ns = :{kind}{i}_ns ORDER BY first_seq DESC LIMIT 1{lock}), "
                f"(SELECT value FROM counters WHERE name = :{kind}{i}_c{lock})) AS w"
            )
    return text(" UNION ALL ".join(parts))


def seq_floors(conn: Connection, events_ns: list[str], rels_ns: list[str]) -> dict[tuple[str, str], int]:
    """The highest sequence used so far per namespace, in ONE statement: the newest WAL row
    (a seek on the primary key) or the flushed mark, whichever is higher. Keys:
    ("e", ns) for entity events, ("r", ns) for relationship events."""
    if not events_ns and not rels_ns:
        return {}
    params: dict[str, str] = {}
    for i, ns in enumerate(events_ns):
        params[f"e{i}_ns"], params[f"e{i}_c"] = ns, f"seq:{ns}"
    for i, ns in enumerate(rels_ns):
        params[f"r{i}_ns"], params[f"r{i}_c"] = ns, f"rseq:{ns}"
    locking = dialects.capabilities(conn).snapshot_reads
    rows = conn.execute(_floors_sql(len(events_ns), len(rels_ns), locking), params).all()
    return {(str(k), str(ns)): int(w or 0) for k, ns, w in rows}


def read_tail(conn: Connection, table: Table, ns: str, after_seq: int = -1) -> list[tuple[int, int, list[Any]]]:
    """WAL rows of `ns` with first_seq > after_seq, decoded: (first_seq, last_seq, records)."""
    return read_many(conn, table, [(ns, after_seq, "")])[ns]


def read_unflushed(conn: Connection, table: Table, ns: str, mark_counter: str) -> list[tuple[int, int, list[Any]]]:
    """WAL rows of `ns` above its flushed mark (kept in `counters`), in one statement.

    Flushed rows may stay in the table until it is retired (see flush.py); the mark makes
    the seek skip them."""
    return read_many(conn, table, [(ns, None, mark_counter)])[ns]


def read_many(
    conn: Connection, table: Table, specs: list[tuple[str, int | None, str]], *, span: int | None = None
) -> dict[str, list[tuple[int, int, list[Any]]]]:
    """Several namespaces' WAL rows in ONE statement (a seek per namespace, UNION ALL).

    spec = (ns, after, mark_counter): rows with first_seq > after, or, when after is None,
    above the flushed mark kept in counter `mark_counter`. `span`: only rows whose
    first_seq is at most `span` above that floor (a flush's bounded chunk)."""
    out: dict[str, list[tuple[int, int, list[Any]]]] = {ns: [] for ns, _a, _m in specs}
    if not specs:
        return out
    parts = []
    for ns, after, mark_counter in specs:
        floor: Any = after
        if after is None:
            floor = func.coalesce(select(Counter.value).where(Counter.name == mark_counter).scalar_subquery(), -1)
        where = [table.c.ns == ns, table.c.first_seq > floor]
        if span is not None:
            where.append(table.c.first_seq <= floor + span)
        parts.append(select(table.c.ns, table.c.first_seq, table.c.last_seq, table.c.events).where(*where))
    stmt = union_all(*parts) if len(parts) > 1 else parts[0]
    rows = sorted(conn.execute(stmt).all(), key=lambda r: (r[0], r[1]))
    for ns, first, last, blob in rows:
        out[ns].append((first, last, codec.decode_batch(blob, table=table.name, row=f"ns={ns}, first_seq={first}")))
    return out


def decode_events(table: Table, ns: str, first_seq: int, records: Iterable[Any]) -> list[Event]:
    row = f"ns={ns}, first_seq={first_seq}"
    return [Event.from_record(r, table=table.name, row=row) for r in records]


def decode_rel_events(table: Table, ns: str, first_seq: int, records: Iterable[Any]) -> list[RelEvent]:
    row = f"ns={ns}, first_seq={first_seq}"
    return [RelEvent.from_record(r, table=table.name, row=row) for r in records]
