"""parquedb-orm: an event-sourced entity and relationship store for SQLAlchemy.

Every change is an event; events are packed many to a SQL row (zstd) in WAL tables,
current state lives in snapshots, and history is archived to Parquet.
"""

from __future__ import annotations

from parquedb_orm import errors
from parquedb_orm.archive import memory as _memory  # noqa: F401  (first: it chooses Arrow's allocator)
from parquedb_orm.archive.flush import FlushResult
from parquedb_orm.archive.iceberg import Iceberg
from parquedb_orm.archive.policy import FlushPolicy
from parquedb_orm.core.codec import register_enum, register_type
from parquedb_orm.core.ids import NAMESPACE_PATTERN
from parquedb_orm.db import ParqueDB
from parquedb_orm.engine.setup import sqlite_settings
from parquedb_orm.engine.store import Store
from parquedb_orm.errors import (
    ArchiveError,
    ArchiveFileMissingError,
    ConfigurationError,
    CorruptBatchError,
    EntityNotFoundError,
    InvalidIdError,
    InvalidNamespaceError,
    ParqueDBError,
    SerializationError,
    TransactionError,
    UnknownOperatorError,
    ValidationError,
    VersionConflictError,
)
from parquedb_orm.orm import disable, enable, handle, store
from parquedb_orm.orm.aio import AsyncParqueDB, AsyncStore, AsyncTransaction
from parquedb_orm.orm.capture import acting_as
from parquedb_orm.orm.history import Version, as_of, history, revert
from parquedb_orm.orm.tracked import Tracked, ref, track, untrack
from parquedb_orm.sql.models import metadata

# re-bound here so that the API reference (pdoc) shows these two imported values' docstrings
NAMESPACE_PATTERN = NAMESPACE_PATTERN
"""The regular expression every namespace matches (`^[A-Za-z][A-Za-z0-9_-]{0,63}$`): a
namespace becomes a directory name in the archive."""
metadata = metadata
"""The SQLAlchemy `MetaData` of the store's own tables (WAL, counters, manifest): the tables
the packaged migrations create (docs/migrations.md)."""

__all__ = [
    "NAMESPACE_PATTERN",
    "ArchiveError",
    "ArchiveFileMissingError",
    "AsyncParqueDB",
    "AsyncStore",
    "AsyncTransaction",
    "ConfigurationError",
    "CorruptBatchError",
    "EntityNotFoundError",
    "FlushPolicy",
    "FlushResult",
    "Iceberg",
    "InvalidIdError",
    "InvalidNamespaceError",
    "ParqueDB",
    "ParqueDBError",
    "SerializationError",
    "Store",
    "Tracked",
    "TransactionError",
    "UnknownOperatorError",
    "ValidationError",
    "Version",
    "VersionConflictError",
    "acting_as",
    "as_of",
    "disable",
    "enable",
    "errors",
    "handle",
    "history",
    "metadata",
    "ref",
    "register_enum",
    "register_type",
    "revert",
    "sqlite_settings",
    "store",
    "track",
    "untrack",
]
__version__ = "0.1.0"
