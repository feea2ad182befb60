"""Entity snapshots: the state of a chunk of a namespace's entities, valid up to a sequence.

Entities are grouped by id number (`number // chunk_size`), so a cold `get` is one
primary-key seek and a flush that touched thousands of entities writes tens of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update

from parquedb_orm.core import codec
from parquedb_orm.errors import CorruptBatchError
from parquedb_orm.sql.models import EntitySnapshot

State = dict[str, Any]
TABLE: Table = EntitySnapshot.__table__  # type: ignore[assignment]


@dataclass
class Chunk:
    ns: str
    chunk: int
    wal_seq: int
    version: int  # times this row was written; guards concurrent flushers
    #: id -> (version, state); state None is a hard-delete tombstone
    entities: dict[str, tuple[int, State | None]]
    #: id -> the state already JSON-encoded by the caller (saves encoding it again)
    encoded: dict[str, str | None] = field(default_factory=dict)


def _decode(ns: str, chunk: int, blob: bytes) -> dict[str, tuple[int, State | None]]:
    records = codec.decode_batch(blob, table="entity_snapshots", row=f"ns={ns}, chunk={chunk}")
    out: dict[str, tuple[int, State | None]] = {}
    for rec in records:
        if not (
            isinstance(rec, list)
            and len(rec) == 3
            and isinstance(rec[1], int)
            and (rec[2] is None or isinstance(rec[2], dict))
        ):
            raise CorruptBatchError(
                f"corrupt snapshot record in entity_snapshots row ns={ns}, chunk={chunk}",
                table="entity_snapshots",
                row=f"ns={ns}, chunk={chunk}",
            )
        out[rec[0]] = (rec[1], rec[2])
    return out


def read_chunk(conn: Connection, ns: str, chunk: int) -> Chunk | None:
    row = conn.execute(
        select(EntitySnapshot.wal_seq, EntitySnapshot.version, EntitySnapshot.state).where(
            EntitySnapshot.ns == ns, EntitySnapshot.chunk == chunk
        )
    ).first()
    if row is None:
        return None
    return Chunk(ns, chunk, int(row[0]), int(row[1]), _decode(ns, chunk, row[2]))


def read_chunks(conn: Connection, ns: str, chunks: list[int] | None = None) -> list[Chunk]:
    """The given chunks (or all) of a namespace: a range seek on the primary key."""
    stmt = select(EntitySnapshot.chunk, EntitySnapshot.wal_seq, EntitySnapshot.version, EntitySnapshot.state).where(
        EntitySnapshot.ns == ns
    )
    if chunks is not None:
        stmt = stmt.where(EntitySnapshot.chunk.in_(chunks))
    return [Chunk(ns, int(c), int(w), int(v), _decode(ns, int(c), s)) for c, w, v, s in conn.execute(stmt)]


def write_chunks(conn: Connection, new: list[Chunk], existing: set[int]) -> None:
    """Insert new chunk rows and update existing ones (one written row each)."""
    now = datetime.now(UTC)
    ins, upd, gone = [], [], []
    for ch in new:
        parts = []
        for k, (v, st) in ch.entities.items():
            text = ch.encoded[k] if k in ch.encoded else codec.dumps(st)
            parts.append(f"[{codec.dumps(k)},{v},{'null' if text is None else text}]")
        blob = codec.encode_json("[" + ",".join(parts) + "]")
        if ch.chunk in existing:
            if ch.entities:
                upd.append(
                    {
                        "b_ns": ch.ns,
                        "b_chunk": ch.chunk,
                        "state": blob,
                        "entity_count": len(ch.entities),
                        "version": ch.version + 1,
                        "wal_seq": ch.wal_seq,
                        "updated_at": now,
                    }
                )
            else:
                gone.append(ch)
        elif ch.entities:
            ins.append(
                {
                    "ns": ch.ns,
                    "chunk": ch.chunk,
                    "state": blob,
                    "entity_count": len(ch.entities),
                    "version": 1,
                    "wal_seq": ch.wal_seq,
                    "updated_at": now,
                }
            )
    if ins:
        conn.execute(insert(EntitySnapshot), ins)
    if upd:
        from sqlalchemy import bindparam

        conn.execute(
            update(TABLE)
            # SET columns bind by name from each parameter dict
            .where(TABLE.c.ns == bindparam("b_ns"), TABLE.c.chunk == bindparam("b_chunk")),
            upd,
        )
    for ch in gone:
        conn.execute(delete(EntitySnapshot).where(EntitySnapshot.ns == ch.ns, EntitySnapshot.chunk == ch.chunk))
