"""pq0004: unflushed event_batches move into events_wal; `event_batches` is dropped.

A legacy batch is a zstd frame holding a JSON array of
`{"ts": ms, "op": "CREATE"|"UPDATE"|"DELETE", "ns", "id", "actor", "before", "after"}`
(before/after: the entity's fields incl. "$type"; DELETE has after = null).
Each event of an unflushed batch becomes an entity event of the store:
CREATE -> data = after; UPDATE -> {"$set": changed fields, "$unset": removed fields};
DELETE -> {"hard": false}; ts in microseconds; version counted per entity over all
legacy batches (flushed ones too), in batch order. Events go to events_wal grouped by
namespace, ~100 per row, in their original order, seqs continuing after
max(`seq:<ns>`, highest events_wal seq) as the store numbers them. `seq:<ns>` is the
store's flushed mark and stays where it is: the moved events are unflushed.

Batches with flushed = true are already archived: they are not moved. So that the
downgrade can put event_batches back exactly, they are kept byte for byte in
`parquedb_migration_provenance`, with, for every moved batch, its id, created_at,
ts range, the namespace layout of its events and the events the store's format
cannot reproduce exactly (derived back and compared at upgrade time, as pq0003 does).

Revision ID: pq0004
Revises: pq0003
Create Date: 2025-01-01
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mysql

from parquedb_orm.core import codec, ids
from parquedb_orm.core.events import CREATE, DELETE, UPDATE, Event
from parquedb_orm.core.operators import META_FIELDS
from parquedb_orm.sql import revision_kit as kit
from parquedb_orm.sql.progress import progress

revision: str = "pq0004"
down_revision: str | Sequence[str] | None = "pq0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
LEGACY_OPS = (CREATE, UPDATE, DELETE)
BATCH_ROWS = 500  # legacy batches read per SELECT (each holds many events)
EntityKey = tuple[str, str]


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("batch", BLOB, nullable=False),
        sa.Column("min_ts", sa.BigInteger(), nullable=False),
        sa.Column("max_ts", sa.BigInteger(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("flushed", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _batches_table() -> sa.Table:
    return sa.Table("event_batches", sa.MetaData(), *_columns(), sa.PrimaryKeyConstraint("id"))


# ----- legacy record <-> store event


def _check_fields(fields: Any, where: str, what: str) -> dict[str, Any]:
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: {what} must be a JSON object, got {fields!r}")
    for name in fields:
        if name != "$type" and (name.startswith("$") or "." in name or name in META_FIELDS or not name):
            raise ValueError(
                f"{where}: field {name!r} cannot be stored by parquedb_orm (no leading '$', no '.', "
                "not a store-maintained name such as 'version' or 'createdAt')"
            )
    return fields


def event_data(rec: dict[str, Any], where: str) -> Any:
    """The store's event data for a legacy event."""
    op_ = rec["op"]
    if op_ == CREATE:
        return copy.deepcopy(_check_fields(rec.get("after"), where, "after"))
    if op_ == DELETE:
        return {"hard": False}
    before = _check_fields(rec.get("before") or {}, where, "before")
    after = _check_fields(rec.get("after") or {}, where, "after")
    changed = {k: v for k, v in after.items() if k not in before or kit.canonical(before[k]) != kit.canonical(v)}
    removed = {k: "" for k in before if k not in after}
    if "$type" in changed or "$type" in removed:
        raise ValueError(f"{where}: an UPDATE changes $type, which the store's events cannot express")
    data: dict[str, Any] = {"$set": copy.deepcopy(changed)}
    if removed:
        data["$unset"] = removed
    return data


def legacy_record(ns: str, ev: list[Any], before: Any) -> dict[str, Any]:
    """The legacy event a stored event stands for; `before` = the entity's previous `after`."""
    _, ts, op_, entity_id, actor, data, _ = ev
    after: Any
    if op_ == CREATE:
        before, after = None, data
    elif op_ == UPDATE:
        after = dict(before or {})
        for name in data.get("$unset", {}):
            after.pop(name, None)
        after.update(data.get("$set", {}))
    else:
        after = None
    return {"ts": ts // 1000, "op": op_, "ns": ns, "id": entity_id, "actor": actor, "before": before, "after": after}


def _validate(rec: Any, where: str) -> tuple[str, str]:
    if not isinstance(rec, dict) or rec.get("op") not in LEGACY_OPS:
        raise ValueError(f"{where}: not a legacy event (op must be one of {LEGACY_OPS}): {rec!r}")
    if isinstance(rec.get("ts"), bool) or not isinstance(rec.get("ts"), (int, float)):
        raise ValueError(f"{where}: ts must be milliseconds since the epoch, got {rec.get('ts')!r}")
    if rec.get("actor") is not None and not isinstance(rec["actor"], str):
        raise ValueError(f"{where}: actor must be a string or null, got {rec['actor']!r}")
    try:
        return ids.check_namespace(rec.get("ns")), ids.check_id(rec.get("id"))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


# ----- upgrade


def upgrade() -> None:
    if context.is_offline_mode():
        raise RuntimeError("pq0004 moves data: it cannot run in --sql (offline) mode")
    conn = op.get_bind()
    batches = _batches_table()
    total = kit.count_rows(conn, batches)
    if total:
        _move_batches(conn, batches, total)
    kit.checkpoint("pq0004:before-drop")
    op.drop_table("event_batches")


def _move_batches(conn: sa.Connection, batches: sa.Table, total: int) -> None:
    prov = kit.ensure_provenance(conn)  # DDL before any DML: see env.py on MariaDB
    events_wal = kit.wal_table("events_wal")

    # Pass 1: the entities the moved events touch. Versions are counted over all
    # batches, but only for these, so memory follows the unflushed tail, not the history.
    wanted: set[EntityKey] = set()
    for rows in kit.iter_chunks(conn, batches, ["id"], where=batches.c.flushed == sa.false(), chunk=BATCH_ROWS):
        for row in rows:
            for rec in kit.decode_legacy_batch(row.batch):
                if isinstance(rec, dict):
                    wanted.add((rec.get("ns"), rec.get("id")))  # type: ignore[arg-type]

    def first_seq(ns: str) -> int:
        # As the store numbers events: after the flushed mark and after the WAL's highest seq.
        return max(kit.read_counter(conn, f"seq:{ns}") or 0, kit.wal_high(conn, events_wal, ns) or 0) + 1

    packer = kit.WalPacker(first_seq)
    versions: dict[EntityKey, int] = {}
    prev_after: dict[EntityKey, Any] = {}
    top_id: dict[str, int] = {}
    pending_prov: list[dict[str, Any]] = []

    with progress("pq0004: event_batches -> events_wal", total, unit="batches") as bar:
        for rows in kit.iter_chunks(conn, batches, ["id"], chunk=BATCH_ROWS):
            for row in rows:
                records = kit.decode_legacy_batch(row.batch)
                info: dict[str, Any] = {
                    "id": row.id,
                    "min_ts": row.min_ts,
                    "max_ts": row.max_ts,
                    "event_count": row.event_count,
                    "flushed": bool(row.flushed),
                    "created_at": kit.as_utc(row.created_at),
                }
                if row.flushed:
                    for rec in records:
                        key = (rec.get("ns"), rec.get("id")) if isinstance(rec, dict) else None
                        if key in wanted:
                            versions[key] = 1 if rec.get("op") == CREATE else versions.get(key, 0) + 1  # type: ignore[index]
                    pending_prov.append(kit.provenance_row(revision, "", row.id, info, payload=bytes(row.batch)))
                    continue
                layout: list[list[Any]] = []
                fixes: list[list[Any]] = []
                for pos, rec in enumerate(records):
                    where = f"event_batches id {row.id} event {pos}"
                    ns, entity_id = _validate(rec, where)
                    key = (ns, entity_id)
                    version = 1 if rec["op"] == CREATE else versions.get(key, 0) + 1
                    versions[key] = version
                    seq = packer.next_seq(ns)
                    ts_us = int(rec["ts"]) * 1000 if isinstance(rec["ts"], int) else round(rec["ts"] * 1000)
                    ev = Event(seq, ts_us, rec["op"], entity_id, rec.get("actor"), event_data(rec, where), version)
                    record = ev.to_record()
                    # What downgrade will rebuild from the stored event; keep the original if it differs.
                    stored = codec.loads(codec.dumps(record))
                    if kit.canonical(legacy_record(ns, stored, prev_after.get(key))) != kit.canonical(rec):
                        fixes.append([pos, rec])
                    prev_after[key] = rec.get("after")
                    packer.add(ns, [record], row.created_at)
                    if layout and layout[-1][0] == ns:
                        layout[-1][1] += 1
                    else:
                        layout.append([ns, 1])
                    if rec["op"] == CREATE:
                        number = ids.decode_id(entity_id)
                        if number is not None and number > top_id.get(ns, -1):
                            top_id[ns] = number
                info["layout"] = layout
                # Plain JSON text, so the codec's {"$date"} tagging cannot alter legacy values.
                info["fixes"] = json.dumps(fixes)
                pending_prov.append(kit.provenance_row(revision, "", row.id, info))
            kit.insert_many(conn, events_wal, packer.take())
            kit.insert_many(conn, prov, pending_prov)
            pending_prov.clear()
            bar.advance(len(rows))
            kit.checkpoint("pq0004:mid")
        packer.flush()
        kit.insert_many(conn, events_wal, packer.take())
    for ns in packer.namespaces():
        info = {"last_seq": packer.last_seq(ns)}
        pending_prov.append(kit.provenance_row(revision, ns, packer.started[ns], info))
    kit.insert_many(conn, prov, pending_prov)
    for ns, number in top_id.items():
        kit.raise_counter(conn, f"id:{ns}", number)


# ----- downgrade


def downgrade() -> None:
    if context.is_offline_mode():
        raise RuntimeError("pq0004 moves data: it cannot run in --sql (offline) mode")
    conn = op.get_bind()
    op.create_table(
        "event_batches",
        *_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_batches")),
        if_not_exists=True,  # a re-run after an interrupted MariaDB downgrade
    )
    batches = _batches_table()
    events_wal = kit.wal_table("events_wal")
    prov = kit.provenance_table()

    ranges: dict[str, tuple[int, int]] = {}
    for prow in kit.iter_provenance(conn, revision, where=prov.c.ns != ""):
        ranges[prow.ns] = (int(prow.seq), int(kit.read_info(prow)["last_seq"]))
    cursors: dict[str, Iterator[tuple[int, list[Any]]]] = {
        ns: kit.iter_wal_events(conn, events_wal, ns, first, last) for ns, (first, last) in ranges.items()
    }
    prev_after: dict[EntityKey, Any] = {}
    out: list[dict[str, Any]] = []
    n_batches = sum(1 for _ in kit.iter_provenance(conn, revision, where=prov.c.ns == ""))
    with progress("pq0004 downgrade: events_wal -> event_batches", n_batches, unit="batches") as bar:
        for prow in kit.iter_provenance(conn, revision, where=prov.c.ns == ""):
            info = kit.read_info(prow)
            if info["flushed"]:
                blob = bytes(prow.payload)
            else:
                fixes = {int(pos): rec for pos, rec in json.loads(info["fixes"])}
                records: list[dict[str, Any]] = []
                for ns, count in info["layout"]:
                    for _ in range(count):
                        _, ev = next(cursors[ns])
                        key = (ns, ev[3])
                        pos = len(records)
                        rec = fixes[pos] if pos in fixes else legacy_record(ns, ev, prev_after.get(key))
                        prev_after[key] = rec.get("after")
                        records.append(rec)
                blob = kit.encode_legacy_batch(records)
            out.append(
                {
                    "id": info["id"],
                    "batch": blob,
                    "min_ts": info["min_ts"],
                    "max_ts": info["max_ts"],
                    "event_count": info["event_count"],
                    "flushed": info["flushed"],
                    "created_at": info["created_at"],
                }
            )
            if len(out) >= BATCH_ROWS:
                kit.insert_many(conn, batches, out)
                out.clear()
            bar.advance(1)
        kit.insert_many(conn, batches, out)
    for ns, (first, last) in ranges.items():
        if next(cursors[ns], None) is not None:
            raise RuntimeError(f"events_wal {ns}: more moved events than the recorded batches hold")
        kit.delete_wal_range(conn, events_wal, ns, first, last)
    if conn.dialect.name == "postgresql":
        # Explicit ids do not move a SERIAL's sequence: put it past the restored ids.
        conn.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('event_batches', 'id'), "
            "COALESCE((SELECT MAX(id) FROM event_batches), 1), "
            "(SELECT COUNT(*) > 0 FROM event_batches))"
        )
    kit.checkpoint("pq0004-down:mid")
    kit.forget_provenance(conn, revision)
