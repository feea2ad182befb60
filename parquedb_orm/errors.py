"""Typed errors. Every public call raises one of these, with a message a user can act on."""

from __future__ import annotations


class ParqueDBError(Exception):
    """Base class of every error raised by parquedb-orm."""


class ValidationError(ParqueDBError, ValueError):
    """Input rejected before anything was written."""


class InvalidNamespaceError(ValidationError):
    """A namespace outside the documented pattern (it becomes a directory name)."""


class InvalidIdError(ValidationError):
    """An entity id or `ns/id` reference that is malformed."""


class UnknownOperatorError(ValidationError):
    """An update or filter operator this library does not implement."""


class SerializationError(ValidationError):
    """A value that cannot be stored (not JSON-serialisable, NaN, non-string key...)."""


class EntityNotFoundError(ParqueDBError, LookupError):
    """The entity does not exist (or is deleted and the call needs a live one)."""


class VersionConflictError(ParqueDBError):
    """`expected_version` did not match, or a concurrent writer changed the entity first."""

    def __init__(self, message: str, *, expected: int | None = None, actual: int | None = None) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class CorruptBatchError(ParqueDBError):
    """A stored batch failed its header or checksum test. Never skipped silently."""

    def __init__(self, message: str, *, table: str | None = None, row: str | None = None) -> None:
        super().__init__(message)
        self.table = table
        self.row = row


class ConfigurationError(ParqueDBError):
    """The store was set up wrongly (bad URL, missing `enable`, bad policy...)."""


class ArchiveError(ParqueDBError):
    """Reading or writing the Parquet archive failed."""


class ArchiveFileMissingError(ArchiveError):
    """A file the manifest listed is not in the archive. A read that raced with a
    compaction (which deletes the files it merged once the manifest no longer lists them)
    is retried by the store against the new manifest; raised only if it persists."""


class MeterUnavailableError(ParqueDBError):
    """The faithful SQLite row meter could not be built or loaded."""


class TransactionError(ParqueDBError):
    """A store operation at a point of the session's life where it cannot be committed
    (e.g. in an `after_commit` listener, once the transaction's events are written)."""
