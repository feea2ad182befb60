"""Legacy tables, read only by migrations: the store never writes them.

They live on their own MetaData so `alembic check` against `models.metadata` does
not expect them after the migration that retires them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from parquedb_orm.sql.models import NAMING_CONVENTION, Blob, UtcDateTime


class LegacyBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class EventBatch(LegacyBase):
    """Pre-WAL batches of events (a JSON/zstd blob), flushed or not."""

    __tablename__ = "event_batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch: Mapped[bytes] = mapped_column(Blob)
    min_ts: Mapped[int] = mapped_column(BigInteger)
    max_ts: Mapped[int] = mapped_column(BigInteger)
    event_count: Mapped[int] = mapped_column(Integer)
    flushed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Relationship(LegacyBase):
    """One row per relationship, as the reference design stored them before row reduction."""

    __tablename__ = "relationships"

    from_ns: Mapped[str] = mapped_column(String(64), primary_key=True)
    from_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    predicate: Mapped[str] = mapped_column(String(128), primary_key=True)
    to_ns: Mapped[str] = mapped_column(String(64), primary_key=True)
    to_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    reverse: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str | None] = mapped_column(String(256))
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    deleted_by: Mapped[str | None] = mapped_column(String(256))
    match_mode: Mapped[str | None] = mapped_column(String(16))
    similarity: Mapped[float | None] = mapped_column(Float)
    data: Mapped[str | None] = mapped_column(Text)


legacy_metadata = LegacyBase.metadata
