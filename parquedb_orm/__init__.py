"""parquedb-orm: an event-sourced entity and relationship store for SQLAlchemy.

Every change is an event; events are packed many to a SQL row (zstd) in WAL tables,
current state lives in snapshots, and history is archived to Parquet.
"""

from __future__ import annotations

from . import errors
from .codec import register_enum, register_type
from .errors import (
    ArchiveError,
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
from .facade import ParqueDB
from .flush import FlushResult
from .ids import NAMESPACE_PATTERN
from .models import metadata
from .policy import FlushPolicy
from .session import disable, enable, handle, store
from .store import Store

__all__ = [
    "NAMESPACE_PATTERN",
    "ArchiveError",
    "ConfigurationError",
    "CorruptBatchError",
    "EntityNotFoundError",
    "FlushPolicy",
    "FlushResult",
    "InvalidIdError",
    "InvalidNamespaceError",
    "ParqueDB",
    "ParqueDBError",
    "SerializationError",
    "Store",
    "TransactionError",
    "UnknownOperatorError",
    "ValidationError",
    "VersionConflictError",
    "disable",
    "enable",
    "errors",
    "handle",
    "metadata",
    "register_enum",
    "register_type",
    "store",
]
__version__ = "0.1.0"
