"""pq0001: the legacy layout — event_batches, events_wal, rels_wal and per-row relationships.

This is the schema the store had before row reduction: events in JSON/zstd batches
(`event_batches`), relationships one SQL row each (`relationships`), next to the WAL
tables the store still uses. Later revisions move the data out of the legacy tables.

Revision ID: pq0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "pq0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("parquedb",)
depends_on: str | Sequence[str] | None = None

# Types written out here, not imported from models.py: a revision must keep
# creating the schema of its time even after the models change.
BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
UTC_DATETIME = sa.DateTime(timezone=True)


def _wal(name: str) -> None:
    # Clustered on (ns, first_seq): an insert writes one row and no index entry.
    op.create_table(
        name,
        sa.Column("ns", sa.String(64), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("events", BLOB, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("ns", "first_seq", name=op.f(f"pk_{name}")),
        sqlite_with_rowid=False,
    )


def upgrade() -> None:
    op.create_table(
        "event_batches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch", BLOB, nullable=False),
        sa.Column("min_ts", sa.BigInteger(), nullable=False),
        sa.Column("max_ts", sa.BigInteger(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("flushed", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_batches")),
    )
    _wal("events_wal")
    _wal("rels_wal")
    op.create_table(
        "relationships",
        sa.Column("from_ns", sa.String(64), nullable=False),
        sa.Column("from_id", sa.String(64), nullable=False),
        sa.Column("predicate", sa.String(128), nullable=False),
        sa.Column("to_ns", sa.String(64), nullable=False),
        sa.Column("to_id", sa.String(64), nullable=False),
        sa.Column("reverse", sa.String(128), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=True),
        sa.Column("deleted_at", UTC_DATETIME, nullable=True),
        sa.Column("deleted_by", sa.String(256), nullable=True),
        sa.Column("match_mode", sa.String(16), nullable=True),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("from_ns", "from_id", "predicate", "to_ns", "to_id", name=op.f("pk_relationships")),
    )


def downgrade() -> None:
    op.drop_table("relationships")
    op.drop_table("rels_wal")
    op.drop_table("events_wal")
    op.drop_table("event_batches")
