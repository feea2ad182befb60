"""Internal: the toolkit our revision scripts (migrations/versions/*.py) use. Not a public API.

Revision scripts are loaded by Alembic from a folder that is not a package, so the helpers
they share live here: failure checkpoints for tests of interrupted migrations, chunked
reads and writes, the WAL and counters tables as the revisions see them, packing events
into WAL rows, the provenance bookkeeping that lets pq0003/pq0004 downgrade exactly, and
the legacy `event_batches.batch` codec. The env-var names and `InjectedFailure` are
re-exported by `parquedb_orm.migrate`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import sqlalchemy as sa
import zstandard
from sqlalchemy.dialects.mysql import LONGBLOB
from sqlalchemy.engine import Connection

from parquedb_orm.core import codec
from parquedb_orm.sql.models import NAMING_CONVENTION

#: Bookkeeping kept by pq0003/pq0004 so their downgrades restore the legacy tables exactly.
PROVENANCE_TABLE = "parquedb_migration_provenance"
#: Comma-separated checkpoint labels at which a revision raises InjectedFailure (tests).
FAIL_AT_ENV = "PARQUEDB_MIGRATION_FAIL_AT"
#: Set to 1 to let the pq0002 downgrade drop a non-empty archive manifest.
ALLOW_LOSS_ENV = "PARQUEDB_MIGRATION_ALLOW_DATA_LOSS"

CHUNK_ROWS = 10_000  # rows read per SELECT and written per executemany
EVENTS_PER_ROW = 100  # events packed into one WAL row, as the store does


class InjectedFailure(RuntimeError):
    """Raised at a checkpoint named in $PARQUEDB_MIGRATION_FAIL_AT (tests of interrupted migrations)."""


#: A checkpoint label at which the process dies at once (os._exit(17)): no exception
#: handler, no rollback by the library, as a kill -9 or a power cut would (tests).
KILL_AT_ENV = "PARQUEDB_MIGRATION_KILL_AT"


def checkpoint(label: str) -> None:
    wanted = os.environ.get(FAIL_AT_ENV, "")
    if label in {w.strip() for w in wanted.split(",") if w.strip()}:
        raise InjectedFailure(f"failure injected at checkpoint {label!r} (${FAIL_AT_ENV})")
    if os.environ.get(KILL_AT_ENV) == label:
        os._exit(17)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def as_utc(value: datetime) -> datetime:
    """Database datetimes come back naive (SQLite, MySQL: stored as UTC) or in the session zone (PostgreSQL)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_us(value: datetime) -> int:
    """Exact microseconds since the epoch (no float rounding, unlike timestamp())."""
    return (as_utc(value) - EPOCH) // _US


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def blob_type() -> sa.types.TypeEngine[bytes]:
    return sa.LargeBinary().with_variant(LONGBLOB(), "mysql", "mariadb")


def is_mysql(conn: Connection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def _after(cols: Sequence[sa.ColumnElement[Any]], values: Sequence[Any], mysql: bool) -> sa.ColumnElement[bool]:
    if not mysql:
        return sa.tuple_(*cols) > sa.tuple_(*values)
    # MariaDB does not turn a row-value comparison into a range scan (each page would
    # rescan from the start); the expanded OR form is a range on the primary key.
    cond: sa.ColumnElement[bool] = cols[-1] > values[-1]
    for col, value in zip(reversed(cols[:-1]), reversed(values[:-1]), strict=True):
        cond = sa.or_(col > value, sa.and_(col == value, cond))
    return cond


def iter_chunks(
    conn: Connection,
    table: sa.Table,
    key: Sequence[str],
    *,
    where: sa.ColumnElement[bool] | None = None,
    chunk: int = CHUNK_ROWS,
) -> Iterator[Sequence[sa.Row[Any]]]:
    """All rows of `table` in `key` order, `chunk` at a time (keyset pagination).

    Keyset rather than a streaming cursor: MySQL drivers cannot run the inserts of
    the migration on the same connection while a server-side cursor is open, and a
    plain cursor would buffer the whole table in memory.
    """
    cols = [table.c[k] for k in key]
    mysql = is_mysql(conn)
    last: tuple[Any, ...] | None = None
    while True:
        stmt = sa.select(table).order_by(*cols).limit(chunk)
        if where is not None:
            stmt = stmt.where(where)
        if last is not None:
            stmt = stmt.where(_after(cols, last, mysql))
        rows = conn.execute(stmt).all()
        if not rows:
            return
        yield rows
        if len(rows) < chunk:
            return
        last = tuple(rows[-1]._mapping[k] for k in key)


def count_rows(conn: Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def insert_many(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), CHUNK_ROWS):
        conn.execute(table.insert(), rows[start : start + CHUNK_ROWS])  # executemany


@cache  # one Table object per name, so clauses built by different helpers combine
def wal_table(name: str) -> sa.Table:
    """events_wal / rels_wal as the store defines them (see models._WalRow)."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("ns", sa.String(64), primary_key=True),
        sa.Column("first_seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("event_count", sa.Integer, nullable=False),
        sa.Column("events", blob_type(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


@cache
def counters_table() -> sa.Table:
    return sa.Table(
        "counters",
        sa.MetaData(),
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


def read_counter(conn: Connection, name: str) -> int | None:
    t = counters_table()
    value = conn.execute(sa.select(t.c.value).where(t.c.name == name)).scalar_one_or_none()
    return None if value is None else int(value)


def write_counter(conn: Connection, name: str, value: int | None) -> None:
    """Set a counter (None: remove it). One seek, then one update or insert."""
    t = counters_table()
    exists = read_counter(conn, name) is not None
    if value is None:
        if exists:
            conn.execute(t.delete().where(t.c.name == name))
    elif exists:
        conn.execute(t.update().where(t.c.name == name).values(value=value))
    else:
        conn.execute(t.insert().values(name=name, value=value))


def raise_counter(conn: Connection, name: str, value: int) -> None:
    """Counter = max(counter, value): id counters only ever go up (ids are never reused)."""
    old = read_counter(conn, name)
    if old is None or old < value:
        write_counter(conn, name, value)


def wal_high(conn: Connection, table: sa.Table, ns: str) -> int | None:
    """Highest seq in a WAL table for `ns`: one seek (ranges of a namespace never overlap)."""
    stmt = sa.select(table.c.last_seq).where(table.c.ns == ns).order_by(table.c.first_seq.desc()).limit(1)
    value = conn.execute(stmt).scalar_one_or_none()
    return None if value is None else int(value)


class WalPacker:
    """Packs event records into WAL rows of ~EVENTS_PER_ROW events, per namespace, seqs in order.

    `first_seq(ns)` gives the first sequence number to use for a namespace the first
    time it is seen. Records are the events' `to_record()` lists (seq first).
    """

    def __init__(self, first_seq: Callable[[str], int], per_row: int = EVENTS_PER_ROW) -> None:
        self._first_seq = first_seq
        self._per_row = per_row
        self._next: dict[str, int] = {}
        self._buf: dict[str, list[list[Any]]] = {}
        self._when: dict[str, datetime] = {}
        self.started: dict[str, int] = {}  # ns -> first seq this packer assigned
        self.ready: list[dict[str, Any]] = []

    def next_seq(self, ns: str) -> int:
        if ns not in self._next:
            self._next[ns] = self.started[ns] = self._first_seq(ns)
        seq = self._next[ns]
        self._next[ns] = seq + 1
        return seq

    def last_seq(self, ns: str) -> int:
        return self._next[ns] - 1

    def namespaces(self) -> list[str]:
        return list(self.started)

    def add(self, ns: str, records: list[list[Any]], when: datetime) -> None:
        buf = self._buf.setdefault(ns, [])
        buf.extend(records)
        when = as_utc(when)
        if ns not in self._when or self._when[ns] < when:
            self._when[ns] = when
        if len(buf) >= self._per_row:
            self._emit(ns)

    def _emit(self, ns: str) -> None:
        buf = self._buf.pop(ns, [])
        if not buf:
            return
        self.ready.append(
            {
                "ns": ns,
                "first_seq": buf[0][0],
                "last_seq": buf[-1][0],
                "event_count": len(buf),
                "events": codec.encode_batch(buf),
                "created_at": self._when.pop(ns),
            }
        )

    def flush(self, ns: str | None = None) -> None:
        for name in [ns] if ns is not None else list(self._buf):
            self._emit(name)

    def take(self) -> list[dict[str, Any]]:
        rows, self.ready = self.ready, []
        return rows


def iter_wal_events(
    conn: Connection, table: sa.Table, ns: str, first: int, last: int
) -> Iterator[tuple[int, list[Any]]]:
    """(row first_seq, record) for every event of `ns` with seq in [first, last], in order.

    Raises if any seq is missing: the rows a migration wrote have since been flushed
    to the archive (or altered), so the downgrade cannot rebuild the legacy rows.
    """
    where = sa.and_(table.c.ns == ns, table.c.first_seq >= first, table.c.first_seq <= last)
    expected = first
    for rows in iter_chunks(conn, table, ["ns", "first_seq"], where=where, chunk=1000):
        for row in rows:
            records = codec.decode_batch(row.events, table=table.name, row=f"{ns}/{row.first_seq}")
            for rec in records:
                if rec[0] != expected:
                    raise RuntimeError(
                        f"{table.name}: event {ns}#{expected} written by the upgrade is gone (found "
                        f"#{rec[0]}); it was probably flushed to the archive since, so this downgrade "
                        "cannot rebuild the legacy rows"
                    )
                expected += 1
                yield row.first_seq, rec
    if expected != last + 1:
        raise RuntimeError(
            f"{table.name}: events {ns}#{expected}..#{last} written by the upgrade are gone (flushed to the "
            "archive since?); this downgrade cannot rebuild the legacy rows"
        )


def delete_wal_range(conn: Connection, table: sa.Table, ns: str, first: int, last: int) -> None:
    conn.execute(table.delete().where(table.c.ns == ns, table.c.first_seq >= first, table.c.first_seq <= last))


# ----- provenance: what a downgrade needs that the WAL events do not say


@cache
def provenance_table() -> sa.Table:
    """(revision, ns, seq) -> info (codec blob of one JSON object), payload (raw bytes or NULL)."""
    return sa.Table(
        PROVENANCE_TABLE,
        sa.MetaData(naming_convention=NAMING_CONVENTION),
        sa.Column("revision", sa.String(16), primary_key=True),
        sa.Column("ns", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("info", blob_type(), nullable=False),
        sa.Column("payload", blob_type(), nullable=True),
        sqlite_with_rowid=False,
    )


def ensure_provenance(conn: Connection) -> sa.Table:
    table = provenance_table()
    table.create(conn, checkfirst=True)  # checkfirst: a re-run after an interrupted MariaDB migration
    return table


def provenance_row(
    revision: str, ns: str, seq: int, info: dict[str, Any], payload: bytes | None = None
) -> dict[str, Any]:
    return {"revision": revision, "ns": ns, "seq": seq, "info": codec.encode_batch([info]), "payload": payload}


def read_info(row: sa.Row[Any]) -> dict[str, Any]:
    info: dict[str, Any] = codec.decode_batch(
        row.info, table=PROVENANCE_TABLE, row=f"{row.revision}/{row.ns}/{row.seq}"
    )[0]
    return info


def iter_provenance(
    conn: Connection, revision: str, where: sa.ColumnElement[bool] | None = None
) -> Iterator[sa.Row[Any]]:
    table = provenance_table()
    if not sa.inspect(conn).has_table(PROVENANCE_TABLE):
        return
    cond = table.c.revision == revision if where is None else sa.and_(table.c.revision == revision, where)
    for rows in iter_chunks(conn, table, ["revision", "ns", "seq"], where=cond, chunk=500):
        yield from rows


def forget_provenance(conn: Connection, revision: str) -> None:
    """Remove a revision's bookkeeping; drop the table once nothing is left in it."""
    if not sa.inspect(conn).has_table(PROVENANCE_TABLE):
        return
    table = provenance_table()
    conn.execute(table.delete().where(table.c.revision == revision))
    if count_rows(conn, table) == 0:
        table.drop(conn)


# ----- the legacy `event_batches.batch` format (see docs/migrations.md)


def _legacy_default(value: object) -> object:
    if isinstance(value, datetime):
        return {"$date": as_utc(value).isoformat()}
    raise TypeError(f"cannot store {type(value).__name__} in a legacy batch")


def canonical(value: Any) -> str:
    """Type-strict comparison key: 1, 1.0 and True differ (Python's == says they are equal)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_legacy_default)


def json_text(value: Any) -> str:
    """Compact JSON as the reference design wrote it (JSON.stringify: no spaces, UTF-8 kept)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_legacy_default)


def decode_legacy_batch(blob: bytes) -> list[dict[str, Any]]:
    """A zstd frame holding a UTF-8 JSON array of event objects."""
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(bytes(blob))
    records = json.loads(raw)
    if not isinstance(records, list):
        raise ValueError("legacy batch is not a JSON array")
    return records


def encode_legacy_batch(records: list[dict[str, Any]]) -> bytes:
    raw = json_text(records).encode("utf-8")
    return zstandard.ZstdCompressor(level=3).compress(raw)
