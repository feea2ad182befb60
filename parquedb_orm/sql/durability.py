"""What an engine's settings make a returned commit survive, read back from the database
(docs/durability.md). The store never changes the settings of an engine it did not create,
nor a server's: it reads them, says once per engine what they imply, and refuses a
`durability=` they do not give.

Levels, weakest first: below "normal" (None), "normal" (a commit survives a crash of the
process that made it and of the database server; the last commits may be lost on power
loss or an OS crash), "full" (a commit survives power loss too).
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from parquedb_orm.errors import ConfigurationError
from parquedb_orm.sql import dialects
from parquedb_orm.sql.dialects import Durability

log = logging.getLogger("parquedb_orm")

_RANK: dict[Durability | None, int] = {None: 0, "normal": 1, "full": 2}
_SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
_HELPER = 'pq.sqlite_settings(engine) applies WAL+NORMAL, durability="full" WAL+FULL'

NORMAL_MEANS = "each commit survives a crash of the process; the last commits may be lost on power loss or OS crash"
FULL_MEANS = "each commit durable on power loss"


@dataclass(frozen=True)
class Reading:
    """An engine's durability settings as read back on one of its connections."""

    family: str
    #: the settings as read, e.g. "journal_mode=wal, synchronous=NORMAL"
    settings: str
    #: the durability they give; None: less than "normal"
    level: Durability | None
    #: what a returned commit survives, in words
    means: str
    #: a rollback journal: every commit syncs journal and database, where WAL syncs one file or none
    slow: bool = False
    #: how to change it, for the log line and errors
    advice: str = ""

    def gives(self, wanted: Durability) -> bool:
        return _RANK[self.level] >= _RANK[wanted]

    def describe(self, engine: Engine) -> str:
        url = engine.url.render_as_string(hide_password=True)
        text = f"{self.family} engine {url}: {self.settings}: {self.means}"
        return f"{text} ({self.advice})" if self.advice else text


def read(engine: Engine) -> Reading:
    """The engine's settings, read on one of its connections (never assumed)."""
    fam = dialects.family(engine)
    with engine.connect() as conn:
        if fam == "sqlite":
            return _sqlite(conn)
        if fam == "postgresql":
            return _postgresql(conn)
        return _mysql(conn)


def _sqlite(conn: Connection) -> Reading:
    journal = str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower()
    sync = int(conn.exec_driver_sql("PRAGMA synchronous").scalar() or 0)
    files = {row[1]: row[2] for row in conn.exec_driver_sql("PRAGMA database_list")}
    settings = f"journal_mode={journal}, synchronous={_SYNC_NAMES.get(sync, sync)}"
    if not files.get("main"):
        return Reading("sqlite", "in-memory database", None, "no commit outlives the process")
    if journal in ("off", "memory"):
        means = "a crash in the middle of a write can corrupt the database"
        return Reading("sqlite", settings, None, means, advice=_HELPER)
    if sync == 0:
        means = "each commit survives a crash of the process; an OS crash or power loss can corrupt the database"
        return Reading("sqlite", settings, None, means, advice=_HELPER)
    if journal == "wal":
        if sync >= 2:
            return Reading("sqlite", settings, "full", FULL_MEANS)
        return Reading("sqlite", settings, "normal", NORMAL_MEANS)
    # a rollback journal (delete, truncate, persist): readers block the writer, and each
    # commit syncs the journal (twice at FULL) and the database file
    slow = "slower: a rollback journal syncs several times per commit, WAL+FULL once, WAL+NORMAL not at all"
    if sync >= 3 or (sync == 2 and journal != "delete"):
        return Reading("sqlite", settings, "full", f"{FULL_MEANS}; {slow}", slow=True, advice=_HELPER)
    if sync == 2:
        # FULL does not sync the directory after the journal's unlink, the commit point in
        # delete mode; EXTRA does (SQLite's documentation of PRAGMA synchronous)
        means = (
            "each commit survives a crash of the process; a power loss soon after a commit may roll it back "
            f"(synchronous=EXTRA or WAL+FULL prevent that); {slow}"
        )
        return Reading("sqlite", settings, "normal", means, slow=True, advice=_HELPER)
    return Reading("sqlite", settings, "normal", f"{NORMAL_MEANS}; {slow}", slow=True, advice=_HELPER)


_SERVER = "the server's settings; the store never changes them"


def _postgresql(conn: Connection) -> Reading:
    row = conn.exec_driver_sql("SELECT current_setting('synchronous_commit'), current_setting('fsync')").one()
    commit, fsync = str(row[0]).lower(), str(row[1]).lower()
    settings = f"synchronous_commit={commit}, fsync={fsync}"
    if fsync != "on":
        means = "an OS crash or power loss can corrupt the database"
        return Reading("postgresql", settings, None, means, advice=_SERVER)
    if commit == "off":
        # the WAL writer flushes within 3 x wal_writer_delay: a server crash loses what it has not
        means = "the last commits may be lost on a crash of the server, an OS crash or power loss"
        return Reading("postgresql", settings, None, means, advice=_SERVER)
    # on, local, remote_write, remote_apply: each waits for the local WAL flush
    return Reading("postgresql", settings, "full", FULL_MEANS, advice=_SERVER)


def _mysql(conn: Connection) -> Reading:
    row = conn.exec_driver_sql("SELECT @@innodb_flush_log_at_trx_commit, @@log_bin, @@sync_binlog").one()
    flush, log_bin, sync_binlog = int(row[0]), str(row[1]).upper() in ("1", "ON"), int(row[2])
    settings = f"innodb_flush_log_at_trx_commit={flush}"
    if log_bin:
        settings += f", log_bin=ON, sync_binlog={sync_binlog}"
    if flush == 0:  # written and flushed about once a second
        means = "the last second of commits may be lost on a crash of the server, an OS crash or power loss"
        return Reading("mysql", settings, None, means, advice=_SERVER)
    if flush == 2:  # written to the OS at commit, flushed about once a second
        return Reading("mysql", settings, "normal", NORMAL_MEANS.replace("the process", "the server"), advice=_SERVER)
    if log_bin and sync_binlog != 1:
        # with the binary log on, crash recovery keeps only the transactions it holds
        means = "each commit survives a crash of the server; the last commits may be lost on power loss or OS crash"
        return Reading("mysql", settings, "normal", means, advice=_SERVER)
    return Reading("mysql", settings, "full", FULL_MEANS, advice=_SERVER)  # 1, or MariaDB's 3


_reported: weakref.WeakSet[Engine] = weakref.WeakSet()
_reported_lock = threading.Lock()


def check(engine: Engine, wanted: Durability | None) -> None:
    """At each open: refuse a `durability=` the engine's settings do not give, and say once
    per engine and process what they give (logger "parquedb_orm": INFO, WARNING when below
    "normal" or much slower than needed; DEBUG for the store's own engines set as asked)."""
    with _reported_lock:
        first = engine not in _reported
    if not first and wanted is None:
        return  # nothing to check, already said
    reading = read(engine)
    ours = dialects.applied_durability(engine)
    if wanted is not None and not reading.gives(wanted):
        raise ConfigurationError(_refusal(engine, reading, wanted, ours))
    with _reported_lock:
        if engine in _reported:
            return
        _reported.add(engine)
    log.log(_level(engine, reading, ours), "%s", reading.describe(engine))


def _level(engine: Engine, reading: Reading, ours: Durability | None) -> int:
    if reading.family == "sqlite" and dialects.created_here(engine):
        # the URL form: quiet if our pragmas read back as set (`sqlite://` has none); a
        # file system without WAL support keeps the journal it has
        return logging.DEBUG if ours is None or (reading.level == ours and not reading.slow) else logging.WARNING
    if reading.slow or (reading.level is None and reading.settings != "in-memory database"):
        return logging.WARNING
    return logging.INFO


def _refusal(engine: Engine, reading: Reading, wanted: Durability, ours: Durability | None) -> str:
    said = f'durability="{wanted}" asked, but {reading.describe(engine)}'
    if reading.family != "sqlite":
        knob = {"postgresql": "synchronous_commit=on and fsync=on", "mysql": "innodb_flush_log_at_trx_commit=1"}
        fix = knob[reading.family]
        if reading.family == "mysql" and "log_bin=ON" in reading.settings:
            fix += " and sync_binlog=1"
        return f"{said}. Set {fix} on the server (or for the database or role), or pass no durability="
    if reading.settings == "in-memory database":
        return f"{said}. Use a SQLite file, or pass no durability="
    if ours is not None or dialects.created_here(engine):
        return f"{said}: the file system did not accept the settings (WAL needs shared memory: no network file system)"
    return (
        f"{said}. The store does not change the settings of an engine you created: apply ours with "
        f'pq.sqlite_settings(engine, durability="{wanted}") before passing it, set the pragmas in your own '
        "connect listener, or pass no durability="
    )
