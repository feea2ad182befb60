"""Parquet schemas of the archive and conversions to and from events and states.

Typed columns (int64 sequences, UTC microsecond timestamps, dictionary-encoded op),
JSON text for the free-form parts (data, before, after, state). The namespace is a
column `ns` of every file, equal to the hive partition `ns=<ns>` of the file's path (files
written before the column existed have only the partition). docs/archive.md documents
every column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import pyarrow as pa

from parquedb_orm.core import codec
from parquedb_orm.core.events import CREATE, Event, RelEvent, State, us_to_dt
from parquedb_orm.core.ids import chunk_number, encode_id

#: rows per row group of every archive file: a point read decodes one such piece
PIECE_ROWS = 1024
ENTITY_ROW_GROUP_ROWS = PIECE_ROWS
#: Parquet key-value metadata of entities files: JSON {field: type} (see `shred`)
FIELDS_KEY = b"parquedb.fields"
#: shredded column of state field k
FIELD_PREFIX = "f_"
#: at most this many typed `f_<k>` columns per file
MAX_FIELDS = 64
FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
FIELD_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
}

TS = pa.timestamp("us", tz="UTC")
OP = pa.dictionary(pa.int8(), pa.string())

EVENTS_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("ts", TS),
        ("op", OP),
        ("ns", pa.string()),  # the namespace: equals the file's hive partition `ns=<ns>`
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
        ("ns", pa.string()),
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
        ("ns", pa.string()),
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


def _ns_column(ns: str, n: int) -> pa.Array:
    return pa.array([ns] * n, pa.string())


def events_table(ns: str, rows: list[tuple[Event, str | None, str | None]]) -> pa.Table:
    """(event, JSON of the state before, JSON of the state after) rows -> an events table,
    sorted by (id, seq) so one entity's events sit in one row group (history)."""
    rows = sorted(rows, key=lambda r: (r[0].id, r[0].seq))
    return pa.table(
        {
            "seq": [e.seq for e, _, _ in rows],
            "ts": pa.array([e.ts for e, _, _ in rows], pa.int64()).cast(TS),
            "op": pa.array([e.op for e, _, _ in rows], pa.string()).dictionary_encode().cast(OP),
            "ns": _ns_column(ns, len(rows)),
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


def bulk_events_table(
    ns: str, ids: list[str], states: list[tuple[str, State]], ts_us: int, jsons: list[str] | None = None
) -> pa.Table:
    """The CREATE events a bulk file stands for (seq 0, version 1, `data` = what the
    CREATE carried, as `bulk_create_events` derives it; `after` = the state JSON, taken
    from `jsons` when the caller already encoded it), sorted by id."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    n = len(ids)
    return pa.table(
        {
            "seq": pa.array([0] * n, pa.int64()),
            "ts": pa.array([ts_us] * n, pa.int64()).cast(TS),
            "op": pa.array([CREATE] * n, pa.string()).dictionary_encode().cast(OP),
            "ns": _ns_column(ns, n),
            "id": [ids[i] for i in order],
            "version": pa.array([1] * n, pa.int64()),
            "actor": [states[i][1].get("createdBy") for i in order],
            "data": [codec.dumps(_create_data(ns, states[i][1])) for i in order],
            "before": pa.nulls(n, pa.string()),
            "after": [jsons[i] for i in order] if jsons is not None else [codec.dumps(states[i][1]) for i in order],
            "meta": pa.nulls(n, pa.string()),
        },
        schema=EVENTS_SCHEMA,
    )


def rels_table(ns: str, rows: list[RelEvent]) -> pa.Table:
    """Relationship events sorted by (from_id, seq): one entity's links sit together."""
    rows = sorted(rows, key=lambda r: (r.from_id, r.seq))
    return pa.table(
        {
            "seq": [r.seq for r in rows],
            "ts": pa.array([r.ts for r in rows], pa.int64()).cast(TS),
            "op": pa.array([r.op for r in rows], pa.string()).dictionary_encode().cast(OP),
            "ns": _ns_column(ns, len(rows)),
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


# ---------------------------------------------------------------------- shredded fields
_INT64 = 1 << 63
_EXACT = 1 << 53  # ints beyond this do not survive a float column
#: the store's own keys that already have a column: never shredded (recorded as "mixed")
_COLUMN_KEYS = frozenset({"version", "createdAt", "updatedAt", "deletedAt"})
_NONE = type(None)
#: keys whose values are examined for a column per file (the rest are "mixed")
_EXAMINED = 2 * MAX_FIELDS
#: exact Python types -> field type (subclasses such as IntEnum are tagged in the JSON: mixed)
_KINDS: dict[frozenset[type], str] = {
    frozenset({bool}): "bool",
    frozenset({int}): "int",
    frozenset({float}): "float",
    frozenset({int, float}): "float",
    frozenset({str}): "string",
}


def shred(states: Sequence[Mapping[str, Any] | str | None]) -> tuple[dict[str, str], dict[str, pa.Array]]:
    """The `parquedb.fields` map of these states (in row order) and the typed columns.

    Every top-level key but `$id`/`$type` is in the map, first seen first, so a field a
    file does not list is one none of its rows has. A key gets a typed `f_<k>` column
    (NULL where missing or null) when its values are all of one kind, its name fits
    `FIELD_NAME` and it is among the first `MAX_FIELDS` such keys; every other key is
    "mixed": only the JSON `state` knows. A key holding only nulls is "mixed" too."""
    rows: list[dict[str, Any]] = [
        json.loads(s) if isinstance(s, str) else ({} if s is None else s if type(s) is dict else dict(s))
        for s in states
    ]
    order: dict[str, Any] = {}
    for st in rows:
        order.update(st)  # C speed; keeps each key at its first-seen place
    fields: dict[str, str] = {}
    columns: dict[str, pa.Array] = {}
    examined = 0
    for k in order:
        if k.startswith("$"):
            continue
        if k in _COLUMN_KEYS or not FIELD_NAME.fullmatch(k) or len(columns) >= MAX_FIELDS or examined >= _EXAMINED:
            fields[k] = "mixed"
            continue
        examined += 1  # a column pass per key examined: bounded, whatever the file's width
        values = list(map(dict.get, rows, repeat(k)))
        types = set(map(type, values))
        types.discard(_NONE)
        kind = _KINDS.get(frozenset(types), "mixed")
        if kind != "mixed" and int in types:
            ints = [v for v in values if type(v) is int]
            limit = _EXACT if kind == "float" else _INT64
            if min(ints) < -limit or max(ints) >= limit:
                kind = "mixed"
        fields[k] = kind
        if kind != "mixed":
            columns[FIELD_PREFIX + k] = pa.array(values, FIELD_TYPES[kind])
    return fields, columns


def fields_of(source: pa.Schema | Any) -> dict[str, str] | None:
    """A file's `{field: type}` map from its Arrow schema, its Parquet FileMetaData or its
    key-value metadata dict. None: the file predates the map (every field is "mixed")."""
    meta = source if isinstance(source, dict) or source is None else getattr(source, "metadata", None)
    if not meta or FIELDS_KEY not in meta:
        return None
    out: dict[str, str] = json.loads(meta[FIELDS_KEY])
    return out


def field_type(fields: dict[str, str] | None, key: str) -> str | None:
    """How a file holds one field: "bool" | "int" | "float" | "string" (column `f_<key>`),
    "mixed" (only the JSON state), or None: no row of the file has it."""
    if fields is None:
        return "mixed"
    return fields.get(key)


def _with_fields(table: pa.Table, states: Sequence[Mapping[str, Any] | str | None]) -> pa.Table:
    fields, columns = shred(states)
    for name, column in columns.items():
        table = table.append_column(name, column)
    meta = dict(table.schema.metadata or {})
    meta[FIELDS_KEY] = json.dumps(fields, separators=(",", ":")).encode()
    return table.replace_schema_metadata(meta)


_ZERO_ID: list[str] = []


def _number(eid: str, number: int) -> int:
    """`number` as the file sorts by it: `chunk_number(id)` (older flushes passed 0 for key ids)."""
    if number != 0:
        return number
    if not _ZERO_ID:
        _ZERO_ID.append(encode_id(0))
    return 0 if eid == _ZERO_ID[0] else chunk_number(eid)


def entities_table(
    ns: str, rows: list[tuple[str, int, int, State | None, int]], jsons: list[str | None] | None = None
) -> pa.Table:
    """(id, number, version, state or None, seq) rows -> an entities table (`jsons`: the
    states already encoded, same order), sorted by (number, id), with the shredded
    `f_<k>` columns and the `parquedb.fields` metadata."""
    keyed = [(_number(r[0], r[1]), r[0], i) for i, r in enumerate(rows)]
    keyed.sort()
    rows = [(r[1], r[0], rows[r[2]][2], rows[r[2]][3], rows[r[2]][4]) for r in keyed]
    if jsons is not None:
        jsons = [jsons[r[2]] for r in keyed]
    table = pa.table(
        {
            "id": [r[0] for r in rows],
            "ns": _ns_column(ns, len(rows)),
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
    return _with_fields(table, [r[3] for r in rows])


def bulk_entities_table(
    ns: str,
    ids: list[str], numbers: list[int], states: list[tuple[str, State]], jsons: list[str], ts_us: int
) -> pa.Table:
    """Entities table of a bulk create: all version 1, one shared timestamp; sorted by
    (number, id) (an id block is ascending already), shredded like `entities_table`."""
    if any(numbers[i] > numbers[i + 1] for i in range(len(numbers) - 1)):
        order = sorted(range(len(ids)), key=lambda i: (numbers[i], ids[i]))
        ids, numbers = [ids[i] for i in order], [numbers[i] for i in order]
        states, jsons = [states[i] for i in order], [jsons[i] for i in order]
    n = len(ids)
    ts = pa.array([ts_us] * n, pa.int64()).cast(TS)
    names = [st.get("name") for _eid, st in states]
    table = pa.table(
        {
            "id": ids,
            "ns": _ns_column(ns, n),
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
    return _with_fields(table, [st for _eid, st in states])


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
    from parquedb_orm.core.events import dt_to_us

    for eid, text in zip(cols["id"], cols["state"], strict=True):
        state = codec.loads(text)
        out.append(
            Event(0, dt_to_us(state["createdAt"]), CREATE, eid, state.get("createdBy"), _create_data(ns, state), 1)
        )
    return out


def _create_data(ns: str, state: State) -> dict[str, Any]:
    """What the CREATE of a bulk entity carried: its state without the store's keys."""
    data = {k: v for k, v in state.items() if k not in _META}
    if state.get("$type", ns) != ns:
        data["$type"] = state["$type"]  # the default type is not part of what was passed
    return data


_META = frozenset(
    {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}
)
__all__ = [
    "ENTITIES_SCHEMA",
    "ENTITY_ROW_GROUP_ROWS",
    "EVENTS_SCHEMA",
    "PIECE_ROWS",
    "RELS_SCHEMA",
    "field_type",
    "fields_of",
    "shred",
    "us_to_dt",
]
