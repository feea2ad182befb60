"""Parquet schemas of the archive and conversions to and from events and states.

Typed columns (int64 sequences, UTC microsecond timestamps, dictionary-encoded op),
Parquet JSON (logical type) for the free-form parts (data, before, after, changes, meta,
state), written as plain JSON: values beyond JSON are written as their plain form
(`codec.plain_dumps`) and the `types` column says, per row, where they are and what they
were, so the store's reads give back the exact values. Files written before the plain
format have string JSON columns with codec tags and no `types`/`changes`/`ns` columns: the
readers here tell them by their schema (`load_json` with no types is the tagged decode,
which is also exact for plain text without typed values). The namespace is a
column `ns` of every file, equal to the hive partition `ns=<ns>` of the file's path (files
written before the column existed have only the partition). docs/archive.md documents
every column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
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
    "timestamp": pa.timestamp("us", tz="UTC"),  # aware datetimes only (naive ones are "mixed")
}

TS = pa.timestamp("us", tz="UTC")
#: Parquet's JSON logical type (DuckDB reads it as JSON)
JSON = pa.json_(pa.string())
#: the JSON columns of each kind (the `types` sidecar covers them)
EVENT_JSON = ("data", "before", "after", "changes", "meta")
REL_JSON = ("data",)
ENTITY_JSON = ("state",)
#: plain JSON text and the typed paths in it (codec.plain_dumps)
Encoded = tuple[str, list[codec.TypedPath] | None]
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
        ("data", JSON),  # CREATE: the fields given; UPDATE: the operator document; DELETE: {"hard": bool}
        ("before", JSON),  # the entity's state before the event (null: it did not exist)
        ("after", JSON),  # the state after it (null: hard-deleted)
        ("changes", JSON),  # UPDATE: {field: {"old": v, "new": v}} of the fields it changed
        ("meta", JSON),  # request metadata, null for most events
        ("types", JSON),  # {column: [[path, tag(, name)], ...]} of non-JSON values; null: none
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
        ("data", JSON),
        ("types", JSON),
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
        ("state", JSON),  # the whole entity (null: hard-deleted)
        ("types", JSON),
    ]
)


def encode(value: Any) -> Encoded | None:
    """A value as the archive holds it (None stays None)."""
    return None if value is None else codec.plain_dumps(value)


def _texts(values: list[Encoded | None]) -> pa.Array:
    return pa.array([None if v is None else v[0] for v in values], JSON)


def _types(columns: dict[str, list[Encoded | None]], n: int) -> pa.Array:
    """The `types` column: per row, the typed paths of each JSON column that has some."""
    out: list[str | None] = [None] * n
    encode_row = codec.dumps  # plain JSON (paths of str keys and tags): the prebuilt C encoder
    items = list(columns.items())
    for i in range(n):
        row = {c: v[1] for c, values in items if (v := values[i]) is not None and v[1]}
        if row:
            out[i] = encode_row(row)
    return pa.array(out, JSON)


def _ns_column(ns: str, n: int) -> pa.Array:
    return pa.array([ns] * n, pa.string())


#: store-maintained keys every update moves; their values are the event's own columns
_NOT_CHANGES = frozenset({"$id", "version", "updatedAt", "updatedBy"})


def changes(before: State | None, after: State | None) -> dict[str, Any]:
    """{field: {"old": v, "new": v}} for each top-level field whose value differs between
    the two states (a missing field is null), the store's version/updatedAt/updatedBy aside.
    Compared with their types: 1, 1.0 and True are different values."""
    b = before or {}
    a = after or {}
    out: dict[str, Any] = {}
    for key in dict.fromkeys([*b, *a]):
        if key in _NOT_CHANGES:
            continue
        old, new = b.get(key), a.get(key)
        if type(old) is not type(new) or old != new:
            out[key] = {"old": old, "new": new}
    return out


EventRow = tuple[Event, "Encoded | None", "Encoded | None", "Encoded | None"]


def events_table(ns: str, rows: list[EventRow]) -> pa.Table:
    """(event, state before, state after, changes) rows, each encoded (`encode`) -> an
    events table, sorted by (id, seq) so one entity's events sit in one row group (history)."""
    rows = sorted(rows, key=lambda r: (r[0].id, r[0].seq))
    n = len(rows)
    json_cols: dict[str, list[Encoded | None]] = {
        "data": [encode(r[0].data) for r in rows],
        "before": [r[1] for r in rows],
        "after": [r[2] for r in rows],
        "changes": [r[3] for r in rows],
        "meta": [encode(r[0].meta) for r in rows],
    }
    return pa.table(
        {
            "seq": [r[0].seq for r in rows],
            "ts": pa.array([r[0].ts for r in rows], pa.int64()).cast(TS),
            "op": pa.array([r[0].op for r in rows], pa.string()).dictionary_encode().cast(OP),
            "ns": _ns_column(ns, n),
            "id": [r[0].id for r in rows],
            "version": [r[0].version for r in rows],
            "actor": [r[0].actor for r in rows],
            **{c: _texts(v) for c, v in json_cols.items()},
            "types": _types(json_cols, n),
        },
        schema=EVENTS_SCHEMA,
    )


def bulk_events_table(
    ns: str, ids: list[str], states: list[tuple[str, State]], ts_us: int, jsons: list[Encoded] | None = None
) -> pa.Table:
    """The CREATE events a bulk file stands for (seq 0, version 1, `data` = what the
    CREATE carried, as `bulk_create_events` derives it; `after` = the state, taken from
    `jsons` when the caller already encoded it), sorted by id."""
    order = sorted(range(len(ids)), key=ids.__getitem__)
    n = len(ids)
    nulls: list[Encoded | None] = [None] * n
    json_cols: dict[str, list[Encoded | None]] = {
        "data": [codec.plain_dumps(_create_data(ns, states[i][1])) for i in order],
        "before": nulls,
        "after": [jsons[i] for i in order] if jsons is not None else [encode(states[i][1]) for i in order],
        "changes": nulls,
        "meta": nulls,
    }
    return pa.table(
        {
            "seq": pa.array([0] * n, pa.int64()),
            "ts": pa.array([ts_us] * n, pa.int64()).cast(TS),
            "op": pa.array([CREATE] * n, pa.string()).dictionary_encode().cast(OP),
            "ns": _ns_column(ns, n),
            "id": [ids[i] for i in order],
            "version": pa.array([1] * n, pa.int64()),
            "actor": [states[i][1].get("createdBy") for i in order],
            **{c: _texts(v) for c, v in json_cols.items()},
            "types": _types(json_cols, n),
        },
        schema=EVENTS_SCHEMA,
    )


def rels_table(ns: str, rows: list[RelEvent]) -> pa.Table:
    """Relationship events sorted by (from_id, seq): one entity's links sit together."""
    rows = sorted(rows, key=lambda r: (r.from_id, r.seq))
    data = [encode(r.data) for r in rows]
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
            "data": _texts(data),
            "types": _types({"data": data}, len(rows)),
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
    frozenset({datetime}): "timestamp",
}


def shred(states: Sequence[Mapping[str, Any] | str | None]) -> tuple[dict[str, str], dict[str, pa.Array]]:
    """The `parquedb.fields` map of these states (in row order) and the typed columns
    (states as dicts: a state given as JSON text is read as it is, so its typed values are
    not seen as such).

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
        if kind == "timestamp" and any(v is not None and v.utcoffset() is None for v in values):
            kind = "mixed"  # a naive datetime is no instant: only the JSON (and its tag) knows it
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
    """How a file holds one field: "bool" | "int" | "float" | "string" | "timestamp" (column `f_<key>`),
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
    ns: str, rows: list[tuple[str, int, int, State | None, int]], jsons: list[Encoded | None] | None = None
) -> pa.Table:
    """(id, number, version, state or None, seq) rows -> an entities table (`jsons`: the
    states already encoded, same order), sorted by (number, id), with the shredded
    `f_<k>` columns and the `parquedb.fields` metadata."""
    keyed = [(_number(r[0], r[1]), r[0], i) for i, r in enumerate(rows)]
    keyed.sort()
    rows = [(r[1], r[0], rows[r[2]][2], rows[r[2]][3], rows[r[2]][4]) for r in keyed]
    encoded = [jsons[r[2]] for r in keyed] if jsons is not None else [encode(r[3]) for r in rows]
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
            "state": _texts(encoded),
            "types": _types({"state": encoded}, len(rows)),
        },
        schema=ENTITIES_SCHEMA,
    )
    return _with_fields(table, [r[3] for r in rows])


def bulk_entities_table(
    ns: str, ids: list[str], numbers: list[int], states: list[tuple[str, State]], jsons: list[Encoded], ts_us: int
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
            "state": _texts(list(jsons)),
            "types": _types({"state": list(jsons)}, n),
        },
        schema=ENTITIES_SCHEMA,
    )
    return _with_fields(table, [st for _eid, st in states])


def _micros(col: pa.ChunkedArray) -> list[int]:
    return col.cast(pa.int64()).to_pylist()  # type: ignore[no-any-return]


def load_json(text: str | None, types: str | dict[str, Any] | None, column: str) -> Any:
    """One JSON cell decoded exactly: `types` is the row's `types` cell (text or parsed;
    None for rows without typed values and for files written before the column, whose
    tagged JSON `codec.loads` reads)."""
    if text is None:
        return None
    if types is None:
        return codec.loads(text)
    parsed = json.loads(types) if isinstance(types, str) else types
    return codec.plain_loads(text, parsed.get(column))


def json_columns(table: pa.Table, names: Sequence[str]) -> dict[str, list[Any]]:
    """The decoded values of these JSON columns (a column the file lacks reads as None)."""
    n = table.num_rows
    have = set(table.column_names)
    texts = {c: table.column(c).to_pylist() if c in have else [None] * n for c in names}
    types = table.column("types").to_pylist() if "types" in have else [None] * n
    out: dict[str, list[Any]] = {c: [None] * n for c in names}
    for i, t in enumerate(types):
        parsed = None if t is None else json.loads(t)
        for c in names:
            text = texts[c][i]
            if text is not None:
                out[c][i] = codec.loads(text) if parsed is None else codec.plain_loads(text, parsed.get(c))
    return out


def table_events(table: pa.Table) -> list[Event]:
    cols = table.select(["seq", "op", "id", "actor", "version"]).to_pydict()
    ts = _micros(table.column("ts"))
    values = json_columns(table, ("data", "meta"))  # meta: null in files written before the column
    return [
        Event(
            cols["seq"][i],
            ts[i],
            str(cols["op"][i]),
            cols["id"][i],
            cols["actor"][i],
            values["data"][i],
            cols["version"][i],
            values["meta"][i],
        )
        for i in range(table.num_rows)
    ]


def table_rel_events(table: pa.Table) -> list[RelEvent]:
    cols = table.select(["seq", "op", "from_id", "predicate", "to", "reverse", "actor"]).to_pydict()
    ts = _micros(table.column("ts"))
    data = json_columns(table, ("data",))["data"]
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
            data[i],
        )
        for i in range(table.num_rows)
    ]


def table_states(table: pa.Table) -> dict[str, tuple[int, int, State | None]]:
    """id -> (version, seq, state) keeping the highest version of each id."""
    cols = table.select(["id", "version", "seq"]).to_pydict()
    texts = table.column("state").to_pylist()
    types = table.column("types").to_pylist() if "types" in table.column_names else [None] * table.num_rows
    best: dict[str, int] = {}
    for i, (eid, version) in enumerate(zip(cols["id"], cols["version"], strict=True)):
        old = best.get(eid)
        if old is None or cols["version"][old] <= version:
            best[eid] = i
    return {
        eid: (cols["version"][i], cols["seq"][i], load_json(texts[i], types[i], "state")) for eid, i in best.items()
    }


def bulk_create_events(ns: str, table: pa.Table) -> list[Event]:
    """A bulk file read back as the CREATE events it stands for (history, as_of, replay)."""
    ids = table.column("id").to_pylist()
    states = json_columns(table, ("state",))["state"]
    out = []
    from parquedb_orm.core.events import dt_to_us

    for eid, state in zip(ids, states, strict=True):
        out.append(
            Event(0, dt_to_us(state["createdAt"]), CREATE, eid, state.get("createdBy"), _create_data(ns, state), 1)
        )
    return out


_TAG = r'"\$(?:date|day|decimal|uuid|time|interval|bytes|enum|ext)"'


def upgrade(table: pa.Table, names: Sequence[str]) -> pa.Table:
    """Rows of files written before the plain format (their `types` is null and their JSON
    columns hold codec tags) rewritten as plain JSON with their `types` (compaction's
    output is in the current format). Rows already plain pass unchanged; a batch with no
    tag anywhere is returned as it is, without a row loop."""
    import pyarrow.compute as pc

    if table.num_rows == 0 or not names or "types" not in table.column_names:
        return table
    tagged = None
    for c in names:
        hit = pc.fill_null(pc.match_substring_regex(table.column(c).cast(pa.string()), _TAG), False)
        tagged = hit if tagged is None else pc.or_(tagged, hit)
    assert tagged is not None
    mask = pc.and_(pc.is_null(table.column("types")), tagged)
    if not pc.any(mask).as_py():
        return table
    rows = mask.to_pylist()
    texts = {c: table.column(c).cast(pa.string()).to_pylist() for c in names}
    types = table.column("types").cast(pa.string()).to_pylist()
    for i, redo in enumerate(rows):
        if not redo:
            continue
        found: dict[str, list[codec.TypedPath]] = {}
        for c in names:
            text = texts[c][i]
            if text is not None:
                texts[c][i], paths = codec.untag(text)
                if paths:
                    found[c] = paths
        types[i] = json.dumps(found, separators=(",", ":")) if found else None
    for c in names:
        table = table.set_column(table.schema.get_field_index(c), c, pa.array(texts[c], JSON))
    return table.set_column(table.schema.get_field_index("types"), "types", pa.array(types, JSON))


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
    "JSON",
    "PIECE_ROWS",
    "RELS_SCHEMA",
    "field_type",
    "fields_of",
    "shred",
    "us_to_dt",
]
