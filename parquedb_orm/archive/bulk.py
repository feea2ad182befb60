"""`create_many` bypass: >= 5 entities go straight to Parquet, with TWO manifest rows.

Ids still come from the counters, reserved as one contiguous block, so the manifest row's
range (first..last id number) maps any of these ids to its file: `get` decodes the sqid,
finds the range, reads the file with a filter on `id`.

Next to the entities file (`entities/ns=<ns>/bulk-<first>-<last>.parquet`, kind `bulk`)
goes its twin `events/ns=<ns>/bulk-<first>-<last>.parquet` (kind `bulk_events`, same
range): the CREATE events the entities stand for (seq 0). History reads them there, and
they stay when compaction folds the entities file into the namespace's base file.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from parquedb_orm.archive import parquet
from parquedb_orm.archive.files import Archive, Check
from parquedb_orm.core import codec
from parquedb_orm.core.events import State, dt_to_us, now_us, us_to_dt
from parquedb_orm.core.ids import encode_id
from parquedb_orm.errors import SerializationError
from parquedb_orm.sql import manifest

BULK_MIN = 5


def write_bulk(
    archive: Archive, ns: str, numbers: range, datas: list[dict[str, Any]], actor: str | None
) -> tuple[manifest.Entry, manifest.Entry, list[tuple[str, State]]]:
    """Build the entities and write their file and its CREATE events' twin; the caller
    commits both manifest rows (entities entry, events entry) in one transaction.

    The hot loop builds each state once (the same dict a replay of its CREATE event gives)
    and encodes it once (plain JSON + typed paths); the shared timestamps are encoded once
    for the whole batch."""
    when = us_to_dt(now_us())
    # the store-maintained fields are the same for the whole batch: encode them once
    when_json, actor_json = codec.plain_dumps(when)[0], codec.dumps(actor)
    meta = (
        f'"version":1,"createdAt":{when_json},"updatedAt":{when_json},'
        f'"createdBy":{actor_json},"updatedBy":{actor_json}}}'
    )
    meta_paths: list[codec.TypedPath] = [[["createdAt"], "$date"], [["updatedAt"], "$date"]]
    states: list[tuple[str, State]] = []
    ids: list[str] = []
    jsons: list[parquet.Encoded] = []
    for number, data in zip(numbers, datas, strict=True):
        eid = encode_id(number, remember=False)
        type_ = data.pop("$type", ns)
        state: State = {"$id": f"{ns}/{eid}", "$type": type_}
        state.update(data)
        state["version"] = 1
        state["createdAt"] = state["updatedAt"] = when
        state["createdBy"] = state["updatedBy"] = actor
        states.append((eid, state))
        ids.append(eid)
        # the same text codec.plain_dumps(state) gives, without the shared part
        body, paths = codec.plain_dumps(data)
        # a user's {"$date": ...} would have been taken for a tag: typed rows are checked too
        if (paths or '"$' in body) and _nested_dollar(data):
            raise SerializationError("keys starting with '$' are reserved inside values")
        head = f'{{"$id":"{ns}/{eid}","$type":{codec.dumps(type_)},'
        jsons.append((head + (body[1:-1] + "," if len(body) > 2 else "") + meta, [*(paths or ()), *meta_paths]))
    ts_us = dt_to_us(when)
    table = parquet.bulk_entities_table(ns, ids, list(numbers), states, jsons, ts_us)
    path = Archive.file_name("entities", ns, numbers[0], numbers[-1], prefix="bulk-")
    check = archive.write_table(path, table, row_group_rows=parquet.ENTITY_ROW_GROUP_ROWS)
    entry = manifest.Entry(manifest.BULK, ns, numbers[0], numbers[-1], path, len(ids), check.size, check.text())
    twin = _write_twin(archive, entry, parquet.bulk_events_table(ns, ids, states, ts_us, jsons))
    return entry, twin, states


def twin_path(entry: manifest.Entry) -> str:
    """Where a bulk entities file's CREATE events live (same range, `events/` folder)."""
    return Archive.file_name("events", entry.ns, entry.first_seq, entry.last_seq, prefix="bulk-")


def _write_twin(archive: Archive, entry: manifest.Entry, table: Any) -> manifest.Entry:
    path = twin_path(entry)
    check = archive.write_table(path, table, row_group_rows=parquet.PIECE_ROWS)
    return manifest.Entry(
        manifest.BULK_EVENTS, entry.ns, entry.first_seq, entry.last_seq, path, table.num_rows, check.size, check.text()
    )


def write_twin_of(archive: Archive, entry: manifest.Entry) -> manifest.Entry:
    """Write the CREATE events' twin of a bulk file made before twins existed (compaction
    does, before folding the bulk file away)."""
    return _write_twin(archive, entry, twin_table(archive, entry))


def twin_table(archive: Archive, entry: manifest.Entry) -> pa.Table:
    """The CREATE events of a bulk file, derived from its rows (for files without a twin).
    One file's rows in memory: a bulk file is one create_many call."""
    table = archive.read_table(entry.path, columns=["id", "state", "types"], check=Check.of(entry))
    ids: list[str] = table.column("id").to_pylist()
    with archive.decoding(entry.path):
        states = list(zip(ids, parquet.json_columns(table, ("state",))["state"], strict=True))
        stamps = {eid: dt_to_us(st["createdAt"]) for eid, st in states}
    out = parquet.bulk_events_table(entry.ns, ids, states, stamps[ids[0]] if ids else 0)
    if len(set(stamps.values())) > 1:  # one create_many shares one timestamp; be exact anyway
        column = pa.array([stamps[eid] for eid in out.column("id").to_pylist()], pa.int64()).cast(parquet.TS)
        out = out.set_column(out.schema.get_field_index("ts"), "ts", column)
    return out


def _nested_dollar(data: dict[str, Any]) -> bool:
    try:
        for value in data.values():
            codec.check_serialisable(value)
    except SerializationError:
        return True
    return False
