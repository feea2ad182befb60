"""pq0003: per-row relationships become LINK/UNLINK events in rels_wal; `relationships` is dropped.

Every row becomes a LINK event (ts = created_at, actor = created_by); a soft-deleted
row becomes LINK then UNLINK (ts = deleted_at, actor = deleted_by). Events are filed
under from_ns, ~100 per rels_wal row, seqs continuing after max(`rseq:<ns>`, highest
rels_wal seq) as the store numbers them. `rseq:<ns>` is the store's flushed mark, so it
is left where it is: the moved events are the unflushed tail until the store flushes.

The event's data is the `data` column parsed as JSON; non-null `match_mode` and
`similarity` are added to it as `$matchMode` and `$similarity` (a non-object JSON
value is then wrapped as `{"$data": value}`). Text that is not JSON is kept as a
JSON string.

Downgrade rebuilds the rows from those events. Whatever the events cannot say
exactly (version other than 1 for a live row / 2 for a soft-deleted one, JSON text
not in compact form, ...) is recorded at upgrade time, per namespace, in
`parquedb_migration_provenance`: the upgrade derives each row back from the events
it wrote, exactly as the downgrade will, and keeps the columns that differ.

Revision ID: pq0003
Revises: pq0002
Create Date: 2025-01-01
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from parquedb_orm.core import codec, ids
from parquedb_orm.core.events import LINK, UNLINK, RelEvent
from parquedb_orm.sql import revision_kit as kit
from parquedb_orm.sql.progress import progress

revision: str = "pq0003"
down_revision: str | Sequence[str] | None = "pq0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MATCH_KEY, SIMILARITY_KEY, WRAP_KEY = "$matchMode", "$similarity", "$data"
KEY = ["from_ns", "from_id", "predicate", "to_ns", "to_id"]
COLUMNS = [
    *KEY,
    "reverse",
    "version",
    "created_at",
    "created_by",
    "deleted_at",
    "deleted_by",
    "match_mode",
    "similarity",
    "data",
]
FIXES_PER_SEGMENT = 10_000  # bounds the size of one provenance row (and the memory holding it)


def _columns() -> list[sa.Column[Any]]:
    utc = sa.DateTime(timezone=True)
    return [
        sa.Column("from_ns", sa.String(64), nullable=False),
        sa.Column("from_id", sa.String(64), nullable=False),
        sa.Column("predicate", sa.String(128), nullable=False),
        sa.Column("to_ns", sa.String(64), nullable=False),
        sa.Column("to_id", sa.String(64), nullable=False),
        sa.Column("reverse", sa.String(128), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", utc, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=True),
        sa.Column("deleted_at", utc, nullable=True),
        sa.Column("deleted_by", sa.String(256), nullable=True),
        sa.Column("match_mode", sa.String(16), nullable=True),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.Column("data", sa.Text(), nullable=True),
    ]


def _legacy_table() -> sa.Table:
    return sa.Table("relationships", sa.MetaData(), *_columns(), sa.PrimaryKeyConstraint(*KEY))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def link_data(text: str | None, match_mode: str | None, similarity: float | None) -> Any:
    """The LINK event's data for a legacy row."""
    parsed: Any = None
    if text is not None:
        try:
            parsed = json.loads(text, parse_constant=_reject_constant)
        except ValueError:
            parsed = text  # not JSON: keep it as a string (the exact text goes to provenance)
    if match_mode is None and similarity is None:
        return parsed
    data: dict[str, Any]
    if isinstance(parsed, dict):
        data = dict(parsed)
    elif parsed is None:
        data = {}
    else:
        data = {WRAP_KEY: parsed}
    if match_mode is not None:
        data[MATCH_KEY] = match_mode
    if similarity is not None:
        data[SIMILARITY_KEY] = similarity
    return data


def row_from_events(ns: str, link: list[Any], unlink: list[Any] | None) -> dict[str, Any]:
    """The legacy row the events stand for (what downgrade writes, before provenance fixes)."""
    ev = RelEvent(*link)
    to_ns, to_id = ev.to.split("/", 1)
    data = ev.data
    match_mode = similarity = None
    if isinstance(data, dict) and (MATCH_KEY in data or SIMILARITY_KEY in data):
        data = dict(data)
        match_mode = data.pop(MATCH_KEY, None)
        similarity = data.pop(SIMILARITY_KEY, None)
        if not data:
            data = None
        elif set(data) == {WRAP_KEY}:
            data = data[WRAP_KEY]
    text = None if data is None else kit.json_text(data)
    return {
        "from_ns": ns,
        "from_id": ev.from_id,
        "predicate": ev.predicate,
        "to_ns": to_ns,
        "to_id": to_id,
        "reverse": ev.reverse,
        "version": 1 if unlink is None else 2,
        "created_at": kit.from_us(ev.ts),
        "created_by": ev.actor,
        "deleted_at": None if unlink is None else kit.from_us(unlink[1]),
        "deleted_by": None if unlink is None else unlink[7],
        "match_mode": match_mode,
        "similarity": similarity,
        "data": text,
    }


def _normalised(row: sa.Row[Any]) -> dict[str, Any]:
    out = row._asdict()
    out["created_at"] = kit.as_utc(out["created_at"])
    if out["deleted_at"] is not None:
        out["deleted_at"] = kit.as_utc(out["deleted_at"])
    return out


def _differs(a: Any, b: Any) -> bool:
    """Type-strict: 1 and 1.0 and True differ, so do 0.0 and -0.0."""
    if type(a) is not type(b):
        return True
    if isinstance(a, float):
        return repr(a) != repr(b)
    if isinstance(a, (dict, list)):
        return kit.canonical(a) != kit.canonical(b)
    return bool(a != b)


def upgrade() -> None:
    if context.is_offline_mode():
        raise RuntimeError("pq0003 moves data: it cannot run in --sql (offline) mode")
    conn = op.get_bind()
    legacy = _legacy_table()
    rels = kit.wal_table("rels_wal")
    total = kit.count_rows(conn, legacy)
    if total:
        _move_rows(conn, legacy, rels, total)
    kit.checkpoint("pq0003:before-drop")
    op.drop_table("relationships")


def _move_rows(conn: sa.Connection, legacy: sa.Table, rels: sa.Table, total: int) -> None:
    prov = kit.ensure_provenance(conn)  # DDL before any DML: see env.py on MariaDB

    def first_seq(ns: str) -> int:
        # As the store numbers events: after the flushed mark and after the WAL's highest seq.
        return max(kit.read_counter(conn, f"rseq:{ns}") or 0, kit.wal_high(conn, rels, ns) or 0) + 1

    packer = kit.WalPacker(first_seq)
    pending_prov: list[dict[str, Any]] = []
    state: dict[str, Any] = {"ns": None, "seg_first": 0, "fixes": []}

    def close_segment() -> None:
        ns = state["ns"]
        last = packer.last_seq(ns)
        info = {"last_seq": last, "fixes": state["fixes"]}
        pending_prov.append(kit.provenance_row(revision, ns, state["seg_first"], info))
        state["seg_first"], state["fixes"] = last + 1, []

    def finish_namespace() -> None:
        ns = state["ns"]
        packer.flush(ns)
        close_segment()

    def write() -> None:
        kit.insert_many(conn, rels, packer.take())
        kit.insert_many(conn, prov, pending_prov)
        pending_prov.clear()

    with progress("pq0003: relationships -> rels_wal", total) as bar:
        # Primary-key order: a namespace's rows come together, so one namespace is open at a time.
        for rows in kit.iter_chunks(conn, legacy, KEY):
            for row in rows:
                orig = _normalised(row)
                ns = orig["from_ns"]
                if ns != state["ns"]:
                    if state["ns"] is not None:
                        finish_namespace()
                    state["ns"] = ns
                    state["seg_first"] = packer.next_seq(ns)
                    link_seq = state["seg_first"]
                else:
                    link_seq = packer.next_seq(ns)
                records = _events(orig, link_seq, packer)
                # Derive the row back from what will be stored (JSON round trip = what
                # decode_batch returns) exactly as downgrade does; keep what differs.
                stored = [codec.loads(codec.dumps(r)) for r in records]
                derived = row_from_events(ns, stored[0], stored[1] if len(stored) > 1 else None)
                fix = {c: orig[c] for c in COLUMNS if _differs(orig[c], derived[c])}
                if fix:
                    state["fixes"].append([link_seq, fix])
                    if len(state["fixes"]) >= FIXES_PER_SEGMENT:
                        close_segment()  # covers the seqs allocated so far, this row's included
                packer.add(ns, records, orig["created_at"] if len(records) == 1 else orig["deleted_at"])
            write()
            bar.advance(len(rows))
            kit.checkpoint("pq0003:mid")
        finish_namespace()
        write()


def _events(orig: dict[str, Any], link_seq: int, packer: kit.WalPacker) -> list[list[Any]]:
    where = "/".join(str(orig[c]) for c in KEY)
    try:
        ids.check_namespace(orig["from_ns"])
        ids.check_namespace(orig["to_ns"])
        ids.check_id(orig["from_id"])
        ids.check_id(orig["to_id"])
    except ValueError as exc:
        raise ValueError(f"relationships row {where}: {exc}") from None
    similarity = orig["similarity"]
    if similarity is not None and not math.isfinite(similarity):
        raise ValueError(f"relationships row {where}: similarity {similarity!r} cannot be stored in an event")
    to = f"{orig['to_ns']}/{orig['to_id']}"
    data = link_data(orig["data"], orig["match_mode"], similarity)
    link = RelEvent(
        link_seq,
        kit.to_us(orig["created_at"]),
        LINK,
        orig["from_id"],
        orig["predicate"],
        to,
        orig["reverse"],
        orig["created_by"],
        data,
    )
    records = [link.to_record()]
    if orig["deleted_at"] is not None:
        unlink = RelEvent(
            packer.next_seq(orig["from_ns"]),
            kit.to_us(orig["deleted_at"]),
            UNLINK,
            orig["from_id"],
            orig["predicate"],
            to,
            orig["reverse"],
            orig["deleted_by"],
            None,
        )
        records.append(unlink.to_record())
    return records


def downgrade() -> None:
    if context.is_offline_mode():
        raise RuntimeError("pq0003 moves data: it cannot run in --sql (offline) mode")
    conn = op.get_bind()
    op.create_table(
        "relationships",
        *_columns(),
        sa.PrimaryKeyConstraint(*KEY, name=op.f("pk_relationships")),
        if_not_exists=True,  # a re-run after an interrupted MariaDB downgrade
    )
    legacy = _legacy_table()
    rels = kit.wal_table("rels_wal")
    # First pass: where each namespace's events are (segments are small without their fixes).
    segments: dict[str, list[tuple[int, int]]] = {}
    for prow in kit.iter_provenance(conn, revision):
        info = kit.read_info(prow)
        segments.setdefault(prow.ns, []).append((int(prow.seq), int(info["last_seq"])))
    total = sum(segs[-1][1] - segs[0][0] + 1 for segs in segments.values())
    with progress("pq0003 downgrade: rels_wal -> relationships", total, unit="events") as bar:
        for ns, segs in segments.items():
            _restore_namespace(conn, legacy, rels, ns, segs, bar)
    kit.checkpoint("pq0003-down:mid")
    kit.forget_provenance(conn, revision)


def _restore_namespace(
    conn: sa.Connection,
    legacy: sa.Table,
    rels: sa.Table,
    ns: str,
    segs: list[tuple[int, int]],
    bar: Any,
) -> None:
    first, last = segs[0][0], segs[-1][1]
    prov = kit.provenance_table()
    seg_index = -1
    seg_last = first - 1
    fixes: dict[int, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    pending: list[Any] | None = None

    def emit(link: list[Any], unlink: list[Any] | None) -> None:
        row = row_from_events(ns, link, unlink)
        row.update(fixes.pop(link[0], {}))
        out.append(row)
        if len(out) >= kit.CHUNK_ROWS:
            kit.insert_many(conn, legacy, out)
            out.clear()

    for _, rec in kit.iter_wal_events(conn, rels, ns, first, last):
        while rec[0] > seg_last:  # entering the next segment: load its fixes
            seg_index += 1
            seg_first, seg_last = segs[seg_index]
            prow = conn.execute(
                sa.select(prov).where(prov.c.revision == revision, prov.c.ns == ns, prov.c.seq == seg_first)
            ).one()
            fixes.update({int(seq): fix for seq, fix in kit.read_info(prow)["fixes"]})
        if rec[2] == LINK:
            if pending is not None:
                emit(pending, None)
            pending = rec
        else:
            if pending is None or rec[3:6] != pending[3:6]:
                raise RuntimeError(f"rels_wal {ns}#{rec[0]}: UNLINK without the LINK written before it")
            emit(pending, rec)
            pending = None
        bar.advance(1)
    if pending is not None:
        emit(pending, None)
    kit.insert_many(conn, legacy, out)
    kit.delete_wal_range(conn, rels, ns, first, last)
