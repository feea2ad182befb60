"""raw sqlite3, row per change: the layout of `naive`, hand-written on the stdlib `sqlite3`.

The speed ceiling of the issue ("wall time ≤ 1.5x a raw-sqlite3 one-row-per-change
store"). Same tables, rows and indexes as naive.py (the DDL below is what SQLAlchemy
compiles for naive's metadata, the ids come from the same seeded generator), so rows read
and written compare with naive line for line; what differs is how a hand-written store
drives them:

- no SQLAlchemy: one `sqlite3` connection in autocommit mode, SQL strings written once
  (pysqlite's statement cache keeps them prepared), every write operation one explicit
  `BEGIN IMMEDIATE` ... `COMMIT`;
- an in-process dict cache of each entity's current state (namespace, data, version),
  filled by what this process wrote (create, bulk create, update: after their commit) and
  by what it read. `get` is served from the cache after the entity's first read (or its
  write) in this process, so warm gets cost no SQL; a miss reads SQL and caches the row.
  An update of a cached entity writes its row without reading it first (naive reads it
  back in SQL); `related` reads the links in SQL and the linked entities from the cache
  (SQL only for those not cached); `find` is one SQL query on `json_extract`, like naive.
  The cache is authoritative because this process is the file's only writer, the
  single-owner setting of parquedb-orm and of the eventsourcing line's repository cache.
  The cold restart drops it with the connection.

The SQLite settings are every system's: `parquedb_orm.sql.dialects.sqlite_file_pragmas`
(WAL journal, synchronous=NORMAL, a busy timeout) on the raw connection, read back with
PRAGMA at each connect (report notes and `stats()`).

Metered like the other systems: statements go through `parquedb_meter.SQLite3Meter`,
which hands them to the benchmark's process-wide meter (`ProcessMeter`, installed on the
SQLAlchemy `Engine` class) and traces the connection for the faithful libSQL counters.
One `execute` / `executemany` is one statement, as one DBAPI cursor call is for the
SQLAlchemy systems; BEGIN / COMMIT are not counted (they are not for engines either),
nor the pragmas set and read when connecting (an engine's `connect` listener is not).
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parquedb_meter import SQLite3Meter

from benchmarks.systems import SYNC_NAMES, BenchSystem, Doc, Handle, apply_update
from parquedb_orm.sql.dialects import sqlite_file_pragmas

#: naive's schema, as SQLAlchemy compiles `benchmarks.systems.naive.metadata` for SQLite
#: (`IF NOT EXISTS` added): the same tables, columns, keys and indexes
DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS entities (
        id TEXT NOT NULL,
        ns TEXT NOT NULL,
        type TEXT,
        data TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        created_by TEXT,
        updated_at INTEGER NOT NULL,
        updated_by TEXT,
        deleted_at INTEGER,
        deleted_by TEXT,
        PRIMARY KEY (id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_entities_ns ON entities (ns)",
    """CREATE TABLE IF NOT EXISTS events (
        id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        op TEXT NOT NULL,
        target TEXT NOT NULL,
        actor TEXT,
        data TEXT,
        PRIMARY KEY (id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_events_target ON events (target)",
    """CREATE TABLE IF NOT EXISTS relationships (
        id INTEGER NOT NULL,
        from_ns TEXT NOT NULL,
        from_id TEXT NOT NULL,
        predicate TEXT NOT NULL,
        to_ns TEXT NOT NULL,
        to_id TEXT NOT NULL,
        reverse TEXT,
        version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        created_by TEXT,
        deleted_at INTEGER,
        deleted_by TEXT,
        match_mode TEXT,
        similarity INTEGER,
        data TEXT,
        PRIMARY KEY (id)
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_relationships_out "
    "ON relationships (from_ns, from_id, predicate, to_ns, to_id)",
    "CREATE INDEX IF NOT EXISTS ix_relationships_in ON relationships (to_ns, to_id, predicate)",
)

INSERT_ENTITY = ("INSERT INTO entities (id, ns, type, data, version, created_at, created_by, updated_at, updated_by) "
                 "VALUES (?, ?, ?, ?, 1, ?, NULL, ?, NULL)")
INSERT_EVENT = "INSERT INTO events (ts, op, target, actor, data) VALUES (?, ?, ?, NULL, ?)"
INSERT_LINK = ("INSERT INTO relationships (from_ns, from_id, predicate, to_ns, to_id, version, created_at, match_mode) "
               "VALUES (?, ?, ?, ?, ?, 1, ?, 'exact')")
SELECT_ENTITY = "SELECT ns, data, version FROM entities WHERE id = ? AND deleted_at IS NULL"
UPDATE_ENTITY = "UPDATE entities SET data = ?, version = ?, updated_at = ? WHERE id = ?"
OUTBOUND = ("SELECT to_id FROM relationships "
            "WHERE from_ns = ? AND from_id = ? AND predicate = ? AND deleted_at IS NULL")
INBOUND = ("SELECT from_id FROM relationships "
           "WHERE to_ns = ? AND to_id = ? AND predicate = ? AND deleted_at IS NULL")
FIND = ("SELECT data FROM entities WHERE ns = ? AND deleted_at IS NULL AND json_extract(data, ?) > ? "
        "ORDER BY json_extract(data, ?) DESC LIMIT ?")

#: one cached entity: (namespace, data fields, version)
Cached = tuple[str, Doc, int]


def _now_us() -> int:
    return time.time_ns() // 1000


class System(BenchSystem):
    name = "raw"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.path = workdir / "raw.db"
        self.con: sqlite3.Connection | None = None
        self.sql: SQLite3Meter | None = None  # the metered statement path of `con`
        self.cache: dict[str, Cached] = {}
        self.pragmas: dict[str, Any] = {}
        self._ids = random.Random(7)  # naive's generator: the same ids, the same B-trees

    # -- lifecycle -------------------------------------------------------------
    def _connect(self) -> None:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # autocommit: explicit BEGIN
        sqlite_file_pragmas(con, None)  # the pragmas every system's engine gets at connect
        pragmas = {p: con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous",
                                                                          "busy_timeout")}
        if pragmas != self.pragmas:
            sync = SYNC_NAMES.get(pragmas["synchronous"], pragmas["synchronous"])
            self.notes.append(f"SQLite settings read back with PRAGMA: journal_mode={pragmas['journal_mode']}, "
                              f"synchronous={sync}, busy_timeout={pragmas['busy_timeout']} ms")
            self.pragmas = pragmas
        self.con = con
        self.sql = SQLite3Meter(con)

    def settings_read_back(self) -> str:
        if not self.pragmas:
            return "n/a"
        sync = self.pragmas["synchronous"]
        return f"{self.pragmas['journal_mode']}/{SYNC_NAMES.get(sync, sync)}"

    def open(self) -> None:
        self._connect()
        with self._write() as sql:
            for ddl in DDL:
                sql.execute(ddl)

    def restart(self) -> None:
        self.close()
        self._connect()

    def close(self) -> None:
        self.cache.clear()
        self.sql = None
        if self.con is not None:
            self.con.close()
            self.con = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[SQLite3Meter]:
        """One write transaction: BEGIN IMMEDIATE (the write lock up front) ... COMMIT."""
        assert self.con is not None and self.sql is not None
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            yield self.sql
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # -- writes ----------------------------------------------------------------
    def _new_id(self) -> str:
        return f"{self._ids.getrandbits(64):016x}"

    def bulk_create(self, ns: str, items: list[Doc]) -> list[Handle]:
        ts = _now_us()
        ids = [self._new_id() for _ in items]
        bodies = [{k: v for k, v in d.items() if k != "$type"} for d in items]
        with self._write() as sql:
            sql.executemany(INSERT_ENTITY, [(eid, ns, d.get("$type"), json.dumps(body), ts, ts)
                                            for eid, d, body in zip(ids, items, bodies, strict=True)])
            sql.executemany(INSERT_EVENT, [(ts, "CREATE", f"{ns}/{eid}", json.dumps(d))
                                           for eid, d in zip(ids, items, strict=True)])
        cache = self.cache
        for eid, body in zip(ids, bodies, strict=True):
            cache[eid] = (ns, body, 1)
        return ids

    def create(self, ns: str, data: Doc) -> Handle:
        ts = _now_us()
        eid = self._new_id()
        body = {k: v for k, v in data.items() if k != "$type"}
        with self._write() as sql:
            sql.execute(INSERT_ENTITY, (eid, ns, data.get("$type"), json.dumps(body), ts, ts))
            sql.execute(INSERT_EVENT, (ts, "CREATE", f"{ns}/{eid}", json.dumps(data)))
        self.cache[eid] = (ns, body, 1)
        return eid

    def update(self, ns: str, handle: Handle, upd: Doc) -> None:
        ts = _now_us()
        with self._write() as sql:
            cached = self.cache.get(handle)
            if cached is None:  # not read nor written by this process yet: read the row
                row = sql.execute(SELECT_ENTITY, (handle,)).fetchone()
                if row is None:
                    raise KeyError(f"{ns}/{handle}")
                cached = (row[0], json.loads(row[1]), row[2])
            entity_ns, data, version = cached
            data = apply_update(dict(data), upd)  # the cached dict stays as committed
            cur = sql.execute(UPDATE_ENTITY, (json.dumps(data), version + 1, ts, handle))
            if cur.rowcount != 1:
                raise KeyError(f"{ns}/{handle}")
            sql.execute(INSERT_EVENT, (ts, "UPDATE", f"{ns}/{handle}", json.dumps(upd)))
        self.cache[handle] = (entity_ns, data, version + 1)

    def link(self, from_ns: str, from_handle: Handle, predicate: str, to_ns: str, to_handle: Handle) -> None:
        ts = _now_us()
        with self._write() as sql:
            sql.execute(INSERT_LINK, (from_ns, from_handle, predicate, to_ns, to_handle, ts))
            sql.execute(INSERT_EVENT, (ts, "LINK", f"{from_ns}/{from_handle}",
                                       json.dumps({"predicate": predicate, "to": f"{to_ns}/{to_handle}"})))

    # -- reads -----------------------------------------------------------------
    def _load(self, handle: str) -> Cached | None:
        """The entity's state: the cache, else one SQL read (then cached)."""
        cached = self.cache.get(handle)
        if cached is None:
            assert self.sql is not None
            row = self.sql.execute(SELECT_ENTITY, (handle,)).fetchone()
            if row is None:
                return None
            cached = self.cache[handle] = (row[0], json.loads(row[1]), row[2])
        return cached

    def get(self, ns: str, handle: Handle) -> Doc | None:
        cached = self._load(handle)
        if cached is None or cached[0] != ns:
            return None
        doc = dict(cached[1])  # a copy: callers must not change the cache
        doc["version"] = cached[2]
        return doc

    def related(self, ns: str, handle: Handle, predicate: str, direction: str) -> list[Doc]:
        assert self.sql is not None
        query = OUTBOUND if direction == "outbound" else INBOUND
        ids = [r[0] for r in self.sql.execute(query, (ns, handle, predicate)).fetchall()]
        cache = self.cache
        missing = [i for i in ids if i not in cache]
        if missing:
            marks = ", ".join("?" * len(missing))
            rows = self.sql.execute(f"SELECT id, ns, data, version FROM entities WHERE id IN ({marks}) "
                                    "AND deleted_at IS NULL", missing).fetchall()
            for eid, entity_ns, data, version in rows:
                cache[eid] = (entity_ns, json.loads(data), version)
        return [dict(cache[i][1]) for i in ids if i in cache]

    def find(self, ns: str, field: str, gt: int, limit: int) -> list[Doc]:
        assert self.sql is not None
        path = f"$.{field}"
        rows = self.sql.execute(FIND, (ns, path, gt, path, limit)).fetchall()
        return [json.loads(d) for (d,) in rows]

    # -- footprint -------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {"cached_entities": len(self.cache), **{f"pragma_{k}": v for k, v in self.pragmas.items()}}
