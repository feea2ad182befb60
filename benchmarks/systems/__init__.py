"""The systems compared, each behind the same small interface.

An adapter owns one SQLite file (and, for parquedb-orm, an archive folder) inside its
work directory. Entities are handed back as opaque handles (sqid, UUID, integer...);
the driver keeps them per namespace and passes them back unchanged.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

Handle = Any
Doc = dict[str, Any]

#: name -> module under benchmarks.systems (each defines `System`)
SYSTEMS: dict[str, str] = {
    "parquedb": "parquedb",
    "naive": "naive",
    "raw": "raw",
    "eventsourcing": "eventsourcing_es",
    "continuum": "continuum",
}
LABELS: dict[str, str] = {
    "parquedb": "parquedb-orm",
    "naive": "naive (row per change)",
    "raw": "raw sqlite3, row per change",
    "eventsourcing": "eventsourcing",
    "continuum": "SQLAlchemy-Continuum",
}


SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class BenchSystem(ABC):
    """One system under test. Every write call is one commit (bulk_create: one per call)."""

    name: str = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        #: remarks for the report (configuration choices, missing features...)
        self.notes: list[str] = []

    # -- lifecycle -------------------------------------------------------------
    @abstractmethod
    def open(self) -> None:
        """Create the database (schema) and connect."""

    @abstractmethod
    def restart(self) -> None:
        """Cold restart: drop every process-level object (engine, caches) and reconnect."""

    @abstractmethod
    def close(self) -> None: ...

    # -- writes ----------------------------------------------------------------
    @abstractmethod
    def bulk_create(self, ns: str, items: list[Doc]) -> list[Handle]:
        """Create many entities through the system's natural bulk path (one commit)."""

    @abstractmethod
    def create(self, ns: str, data: Doc) -> Handle: ...

    @abstractmethod
    def update(self, ns: str, handle: Handle, update: Doc) -> None:
        """Apply `{"$inc": {...}}` / `{"$set": {...}}` (one commit)."""

    @abstractmethod
    def link(self, from_ns: str, from_handle: Handle, predicate: str, to_ns: str, to_handle: Handle) -> None: ...

    def flush(self) -> dict[str, Any]:
        """Move history out of the SQL database, if the system does that (default: nothing)."""
        return {}

    def sql_engine(self) -> Any:
        """The SQLAlchemy engine the system writes through (None: it has none)."""
        return getattr(self, "engine", None)

    def settings_read_back(self) -> str:
        """journal_mode / synchronous as a connection of the system's own engine reads them
        back with PRAGMA (synchronous is per connection: a connection of our own would
        show SQLite's default, not the system's)."""
        engine = self.sql_engine()
        if engine is None:
            return "n/a"
        with engine.connect() as conn:
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        return f"{journal}/{SYNC_NAMES.get(sync, sync)}"

    # -- reads -----------------------------------------------------------------
    @abstractmethod
    def get(self, ns: str, handle: Handle) -> Doc | None:
        """The entity's data fields (other keys are ignored by the checks)."""

    @abstractmethod
    def related(self, ns: str, handle: Handle, predicate: str, direction: str) -> list[Doc]:
        """Entities linked from (outbound) or to (inbound) the entity by `predicate`."""

    @abstractmethod
    def find(self, ns: str, field: str, gt: int, limit: int) -> list[Doc]:
        """Entities whose `field` > `gt`, sorted by `field` descending, at most `limit`."""

    # -- footprint -------------------------------------------------------------
    def sql_files(self) -> list[Path]:
        """The SQLite database file(s) of this system (their -wal files are added)."""
        return [self.workdir / f"{self.name}.db"]

    def archive_dir(self) -> Path | None:
        return None

    def stats(self) -> dict[str, Any]:
        return {}


def load(name: str) -> type[BenchSystem]:
    if name not in SYSTEMS:
        raise KeyError(f"unknown system {name!r}: choose from {', '.join(SYSTEMS)}")
    module = importlib.import_module(f"{__name__}.{SYSTEMS[name]}")
    cls: type[BenchSystem] = module.System
    return cls


def apply_update(data: Doc, update: Doc) -> Doc:
    """Apply the workload's operators ($set, $inc) to a plain dict, in place."""
    for op, fields in update.items():
        if op == "$set":
            data.update(fields)
        elif op == "$inc":
            for k, v in fields.items():
                data[k] = data.get(k, 0) + v
        else:
            raise ValueError(f"operator {op} not used by the workload")
    return data


def sqlite_pragmas(engine: Any) -> None:
    """The journal settings parquedb-orm uses on a SQLite file, for every system alike:
    WAL journal, synchronous=NORMAL (its durability="normal": docs/durability.md), a busy timeout."""
    from sqlalchemy import event

    from parquedb_orm.sql.dialects import sqlite_file_pragmas

    event.listen(engine, "connect", sqlite_file_pragmas)
