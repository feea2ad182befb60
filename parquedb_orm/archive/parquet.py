"""Parquet schemas of the archive and conversions to and from events and states.

Typed columns (int64 sequences, UTC microsecond timestamps, dictionary-encoded op),
JSON text for the free-form parts (data, before, after, state). The namespace is not a
column: it is the hive partition `ns=<ns>` of the file's path.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from parquedb_orm.core import codec
from parquedb_orm.core.events import CREATE, Event, RelEvent, State, us_to_dt

TS = pa.timestamp("us", tz="UTC")
OP = pa.dictionary(pa.int8(), pa.string())

EVENTS_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("ts", TS),
        ("op", OP),
        ("id", pa.string()),
        ("version", pa.int64()),
        ("actor", pa.string()),
        ("data", pa.string()),
        ("before", pa.string()),
        ("after", pa.string()),
        ("meta", pa.string()),  # request metadata (JSON), null for most events
    ]
)

RELS_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("ts", TS),
        ("op", OP),
        ("from_id", pa.string()),
        ("predicate", pa.string()),
        ("to", pa.string()),
        ("reverse", pa.string()),
        ("actor", pa.string()),
        ("data", pa.string()),
    ]
)

#: Latest state of entities: written by flushes (entities touched) and by create_many.
ENTITIES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("number", pa.int64()),  # the sqid's counter value: bulk files are looked up by it
        ("version", pa.int64()),
        ("seq", pa.int64()),  # sequence of the last event folded in (0: bulk create)
        ("type", pa.string()),
        ("name", pa.string()),
        ("created_at", TS),
        ("updated_at", TS),
        ("deleted_at", TS),
        ("state", pa.string()),  # the whole entity as JSON (null: hard-deleted)
    ]
)


def _json(value: Any) -> str | None:
    return None if value is None else codec.dumps(value)


def events_table(rows: list[tuple[Event, str | None, str | None]]) -> pa.Table:
    """(event, JSON of the state before, JSON of the state after) rows -> an events table."""
    return pa.table(
        {
            "seq": [e.seq for e, _, _ in rows],
            "ts": pa.array([e.ts for e, _, _ in rows], pa.int64()).cast(TS),
            "op": pa.array([e.op for e, _, _ in rows], pa.string()).dictionary_encode().cast(OP),
            "id": [e.id for e, _, _ in rows],
            "version": [e.version for e, _, _ in rows],
            "actor": [e.actor for e, _, _ in rows],
            "data": [_json(e.data) for e, _, _ in rows],
            "before": [b for _, b, _ in rows],
            "after": [a for _, _, a in rows],
            "meta": [_json(e.meta) for e, _, _ in rows],
        },
        schema=EVENTS_SCHEMA,
    )


def rels_table(rows: list[RelEvent]) -> pa.Table:
    return pa.table(
        {
            "seq": [r.seq for r in rows],
            "ts": pa.array([r.ts for r in rows], pa.int64()).cast(TS),
            "op": pa.array([r.op for r in rows], pa.string()).dictionary_encode().cast(OP),
            "from_id": [r.from_id for r in rows],
            "predicate": [r.predicate for r in rows],
            "to": [r.to for r in rows],
            "reverse": [r.reverse for r in rows],
            "actor": [r.actor for r in rows],
            "data": [_json(r.data) for r in rows],
        },
        schema=RELS_SCHEMA,
    )


def _us(value: Any) -> int | None:
    from parquedb_orm.core.events import dt_to_us

    return None if value is None else dt_to_us(value)


def entities_table(
    rows: list[tuple[str, int, int, State | None, int]], jsons: list[str | None] | None = None
) -> pa.Table:
    """(id, number, version, state or None, seq) rows -> an entities table (`jsons`: the
    states already encoded, same order)."""
    return pa.table(
        {
            "id": [r[0] for r in rows],
            "number": [r[1] for r in rows],
            "version": [r[2] for r in rows],
            "seq": [r[4] for r in rows],
            "type": [r[3].get("$type") if r[3] else None for r in rows],
            "name": [str(r[3]["name"]) if r[3] and r[3].get("name") is not None else None for r in rows],
            "created_at": pa.array([_us(r[3]["createdAt"]) if r[3] else None for r in rows], pa.int64()).cast(TS),
            "updated_at": pa.array([_us(r[3]["updatedAt"]) if r[3] else None for r in rows], pa.int64()).cast(TS),
            "deleted_at": pa.array([_us(r[3].get("deletedAt")) if r[3] else None for r in rows], pa.int64()).cast(TS),
            "state": jsons if jsons is not None else [_json(r[3]) for r in rows],
        },
        schema=ENTITIES_SCHEMA,
    )


def bulk_entities_table(
    ids: list[str], numbers: list[int], states: list[tuple[str, State]], jsons: list[str], ts_us: int
) -> pa.Table:
    """Entities table of a bulk create: all version 1, one shared timestamp."""
    n = len(ids)
    ts = pa.array([ts_us] * n, pa.int64()).cast(TS)
    names = [st.get("name") for _eid, st in states]
    return pa.table(
        {
            "id": ids,
            "number": numbers,
            "version": pa.array([1] * n, pa.int64()),
            "seq": pa.array([0] * n, pa.int64()),
            "type": [st["$type"] for _eid, st in states],
            "name": [None if v is None else str(v) for v in names],
            "created_at": ts,
            "updated_at": ts,
            "deleted_at": pa.nulls(n, TS),
            "state": jsons,
        },
        schema=ENTITIES_SCHEMA,
    )


def _micros(col: pa.ChunkedArray) -> list[int]:
    return col.cast(pa.int64()).to_pylist()  # type: ignore[no-any-return]


def table_events(table: pa.Table) -> list[Event]:
    cols = table.to_pydict()
    ts = _micros(table.column("ts"))
    metas = cols.get("meta") or [None] * table.num_rows  # files written before the column existed
    return [
        Event(
            cols["seq"][i],
            ts[i],
            str(cols["op"][i]),
            cols["id"][i],
            cols["actor"][i],
            None if cols["data"][i] is None else codec.loads(cols["data"][i]),
            cols["version"][i],
            None if metas[i] is None else codec.loads(metas[i]),
        )
        for i in range(table.num_rows)
    ]


def table_rel_events(table: pa.Table) -> list[RelEvent]:
    cols = table.to_pydict()
    ts = _micros(table.column("ts"))
    return [
        RelEvent(
            cols["seq"][i],
            ts[i],
            str(cols["op"][i]),
            cols["from_id"][i],
            cols["predicate"][i],
            cols["to"][i],
            cols["reverse"][i],
            cols["actor"][i],
            None if cols["data"][i] is None else codec.loads(cols["data"][i]),
        )
        for i in range(table.num_rows)
    ]


def table_states(table: pa.Table) -> dict[str, tuple[int, int, State | None]]:
    """id -> (version, seq, state) keeping the highest version of each id."""
    cols = table.select(["id", "version", "seq", "state"]).to_pydict()
    out: dict[str, tuple[int, int, State | None]] = {}
    for eid, version, seq, state in zip(cols["id"], cols["version"], cols["seq"], cols["state"], strict=True):
        old = out.get(eid)
        if old is None or old[0] <= version:
            out[eid] = (version, seq, None if state is None else codec.loads(state))
    return out


def bulk_create_events(ns: str, table: pa.Table) -> list[Event]:
    """A bulk file read back as the CREATE events it stands for (history, as_of, replay)."""
    cols = table.select(["id", "state"]).to_pydict()
    out = []
    for eid, text in zip(cols["id"], cols["state"], strict=True):
        state = codec.loads(text)
        data = {k: v for k, v in state.items() if k not in _META}
        if state.get("$type", ns) != ns:
            data["$type"] = state["$type"]  # the default type is not part of what was passed
        from parquedb_orm.core.events import dt_to_us

        out.append(Event(0, dt_to_us(state["createdAt"]), CREATE, eid, state.get("createdBy"), data, 1))
    return out


_META = frozenset(
    {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}
)
__all__ = ["ENTITIES_SCHEMA", "EVENTS_SCHEMA", "RELS_SCHEMA", "us_to_dt"]
