"""pq0005: archive_manifest gets a `checksum` column (each file's CRC-32s, docs/archive.md).

Rows written before keep NULL: their files were written without the checksums (and
without page CRCs), so nothing is verified for them beyond what pyarrow itself detects;
a compaction that merges them writes checked files. No backfill: a migration does not
know where the archive is (a folder or bucket given to the store, not to the database),
and a checksum computed now would vouch for whatever the file holds today.
The downgrade drops the column (the files keep their page CRCs, which older readers
ignore).

Revision ID: pq0005
Revises: pq0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from parquedb_orm.sql import revision_kit as kit

revision: str = "pq0005"
down_revision: str | Sequence[str] | None = "pq0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _has_column(name: str) -> bool:
    columns = sa.inspect(op.get_bind()).get_columns("archive_manifest")
    return any(c["name"] == name for c in columns)


def upgrade() -> None:
    # a plain ADD COLUMN (nullable: no table rewrite anywhere); tolerated when a re-run
    # follows an interrupted one on MariaDB, whose DDL commits at once
    if not _has_column("checksum"):
        op.add_column("archive_manifest", sa.Column("checksum", sa.String(80), nullable=True))
    kit.checkpoint("pq0005:mid")


def downgrade() -> None:
    if _has_column("checksum"):
        # SQLite >= 3.35 drops a column in place; a batch copy would lose WITHOUT ROWID
        op.drop_column("archive_manifest", "checksum")
    kit.checkpoint("pq0005-down:mid")
