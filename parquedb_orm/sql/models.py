"""Declarative tables of the store, on their own MetaData (migrations/ mirrors them).

Keys are chosen for the billed unit: every index entry is a written row.
- WAL and snapshot tables are clustered on their natural key (`WITHOUT ROWID` on
  SQLite, the primary key is the clustered index on InnoDB and a plain btree on
  PostgreSQL), so an insert pays exactly one written row and every read the store
  makes is a seek on a primary-key prefix. No secondary index anywhere.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, MetaData, String
from sqlalchemy.dialects.mysql import LONGBLOB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Blobs may exceed MySQL's 64 KiB BLOB; LONGBLOB there, the generic type elsewhere.
Blob = LargeBinary().with_variant(LONGBLOB(), "mysql", "mariadb")
UtcDateTime = DateTime(timezone=True)
#: Namespaces are at most 64 characters (ids.NAMESPACE_PATTERN).
NsString = String(64)

_CLUSTERED = {"sqlite_with_rowid": False}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class _WalRow:
    """One row = one batch of events of one namespace (~100 events, zstd)."""

    ns: Mapped[str] = mapped_column(NsString, primary_key=True)
    first_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    event_count: Mapped[int] = mapped_column(Integer)
    events: Mapped[bytes] = mapped_column(Blob)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class EventsWal(_WalRow, Base):
    __tablename__ = "events_wal"
    __table_args__ = _CLUSTERED


class RelsWal(_WalRow, Base):
    """Relationship events, filed under the namespace of the link's source entity."""

    __tablename__ = "rels_wal"
    __table_args__ = _CLUSTERED


class EntitySnapshot(Base):
    """Chunked entity states written by flushes of versions before the archive held the
    current state (issue 12). Nothing writes or reads it now: every state in it is also
    in the entities file its flush wrote. Kept so the schema matches the migrations.
    """

    __tablename__ = "entity_snapshots"
    __table_args__ = _CLUSTERED

    ns: Mapped[str] = mapped_column(NsString, primary_key=True)
    chunk: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    state: Mapped[bytes] = mapped_column(Blob)
    entity_count: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    wal_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Counter(Base):
    """Persisted counters: `id:<ns>` (entity ids, reserved in blocks), `seq:<ns>` and
    `rseq:<ns>` (highest event sequence folded into the archive)."""

    __tablename__ = "counters"
    __table_args__ = _CLUSTERED

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ArchiveFile(Base):
    """The archive manifest: a Parquet file not listed here does not exist for readers."""

    __tablename__ = "archive_manifest"
    __table_args__ = _CLUSTERED

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # events | rels | entities
    ns: Mapped[str] = mapped_column(NsString, primary_key=True)
    first_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(512))
    row_count: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: `crc32 <footer> <file>[ scan <size> <file>]` (archive/files.Check); NULL: written
    #: before checksums (pq0005), not verified
    checksum: Mapped[str | None] = mapped_column(String(80), nullable=True)


metadata = Base.metadata
