"""pq0002: add entity_snapshots, counters and archive_manifest; backfill counters.

Counters, read with ONE `UNION ALL` query over events_wal and rels_wal plus a scan of ids:
- `seq:<ns>` / `rseq:<ns>` are the store's *flushed marks*: WAL rows with a first_seq
  above them are the unflushed tail (wal.read_unflushed), and the next sequence number
  is max(mark, highest WAL seq) + 1. No WAL row of the legacy layout has been archived
  (there is no manifest yet), so the mark is set just below the namespace's lowest WAL
  seq: every existing event stays visible and none is ever renumbered.
- `id:<ns>`: the highest sqid number of any entity id found in the database for that
  namespace, so no id is ever issued again: ids of events in events_wal (CREATE first of
  all), both ends of links in rels_wal, ids in every legacy event batch (flushed or not)
  and both ends of every legacy relationship. Decoding blobs and sqids is Python work,
  done in chunks.

Revision ID: pq0002
Revises: pq0001
Create Date: 2025-01-01
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

from parquedb_orm.core import codec, ids
from parquedb_orm.sql import revision_kit as kit
from parquedb_orm.sql.progress import progress

revision: str = "pq0002"
down_revision: str | Sequence[str] | None = "pq0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    if context.is_offline_mode():
        raise RuntimeError("pq0002 backfills counters from the data: it cannot run in --sql (offline) mode")
    # if_not_exists: on MariaDB, DDL commits at once; a re-run after an interrupted
    # backfill must not fail on the tables the first run already created.
    op.create_table(
        "entity_snapshots",
        sa.Column("ns", sa.String(64), nullable=False),
        sa.Column("chunk", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("state", BLOB, nullable=False),
        sa.Column("entity_count", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("wal_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("ns", "chunk", name=op.f("pk_entity_snapshots")),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_counters")),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    op.create_table(
        "archive_manifest",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ns", sa.String(64), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("kind", "ns", "first_seq", name=op.f("pk_archive_manifest")),
        sqlite_with_rowid=False,
        if_not_exists=True,
    )
    _backfill_counters(op.get_bind())
    kit.checkpoint("pq0002:mid")


def _legacy_tables() -> tuple[sa.Table, sa.Table]:
    md = sa.MetaData()
    batches = sa.Table("event_batches", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("batch", BLOB))
    rels = sa.Table(
        "relationships",
        md,
        *(
            sa.Column(c, sa.String(128), primary_key=True)
            for c in ("from_ns", "from_id", "predicate", "to_ns", "to_id")
        ),
    )
    return batches, rels


def _backfill_counters(conn: sa.Connection) -> None:
    events, rels = kit.wal_table("events_wal"), kit.wal_table("rels_wal")
    batches, legacy_rels = _legacy_tables()

    counters: dict[str, int] = {}
    lowest = sa.union_all(
        sa.select(sa.literal("seq").label("kind"), events.c.ns, sa.func.min(events.c.first_seq).label("low")).group_by(
            events.c.ns
        ),
        sa.select(sa.literal("rseq").label("kind"), rels.c.ns, sa.func.min(rels.c.first_seq).label("low")).group_by(
            rels.c.ns
        ),
    )
    for kind, ns, low in conn.execute(lowest):
        counters[f"{kind}:{ns}"] = int(low) - 1  # flushed mark: nothing of the WAL is archived yet

    top: dict[str, int] = {}

    @lru_cache(maxsize=1 << 16)  # link ends repeat a lot; sqids decoding is the slow part
    def number(entity_id: str) -> int | None:
        return ids.decode_id(entity_id)

    def seen(ns: Any, entity_id: Any) -> None:
        if isinstance(ns, str) and isinstance(entity_id, str) and entity_id:
            n = number(entity_id)
            if n is not None and n > top.get(ns, -1):
                top[ns] = n

    inspector = sa.inspect(conn)
    sources: list[sa.Table] = [events, rels]
    sources += [t for t in (batches, legacy_rels) if inspector.has_table(t.name)]
    total = sum(kit.count_rows(conn, t) for t in sources)
    with progress("pq0002: scanning ids for id counters", total) as bar:
        for rows in kit.iter_chunks(conn, events, ["ns", "first_seq"], chunk=1000):
            for row in rows:
                for rec in codec.decode_batch(row.events, table="events_wal", row=f"{row.ns}/{row.first_seq}"):
                    seen(row.ns, rec[3])
            bar.advance(len(rows))
        for rows in kit.iter_chunks(conn, rels, ["ns", "first_seq"], chunk=1000):
            for row in rows:
                for rec in codec.decode_batch(row.events, table="rels_wal", row=f"{row.ns}/{row.first_seq}"):
                    seen(row.ns, rec[3])
                    if isinstance(rec[5], str) and rec[5].count("/") == 1:
                        seen(*rec[5].split("/"))
            bar.advance(len(rows))
        if batches in sources:
            for rows in kit.iter_chunks(conn, batches, ["id"], chunk=500):
                for row in rows:
                    for rec in kit.decode_legacy_batch(row.batch):
                        if isinstance(rec, dict):
                            seen(rec.get("ns"), rec.get("id"))
                bar.advance(len(rows))
        if legacy_rels in sources:
            key = ["from_ns", "from_id", "predicate", "to_ns", "to_id"]
            for rows in kit.iter_chunks(conn, legacy_rels, key):
                for row in rows:
                    seen(row.from_ns, row.from_id)
                    seen(row.to_ns, row.to_id)
                bar.advance(len(rows))
    for ns, n in top.items():
        counters[f"id:{ns}"] = n
    kit.insert_many(conn, kit.counters_table(), [{"name": k, "value": v} for k, v in sorted(counters.items())])


def downgrade() -> None:
    # Snapshots can be rebuilt from the events. The manifest cannot: without it the
    # archived events (and the id high-water marks they imply) are lost to the store,
    # so refuse unless told otherwise.
    if not context.is_offline_mode() and not os.environ.get(kit.ALLOW_LOSS_ENV):
        manifest = sa.table("archive_manifest", sa.column("path"))
        files = op.get_bind().execute(sa.select(sa.func.count()).select_from(manifest)).scalar_one()
        if files:
            raise RuntimeError(
                f"pq0002 downgrade would drop archive_manifest with {files} archived file(s): the store "
                f"would no longer see those events. Back up first; set {kit.ALLOW_LOSS_ENV}=1 to go ahead."
            )
    op.drop_table("archive_manifest")
    op.drop_table("counters")
    op.drop_table("entity_snapshots")
