"""`create_many` bypass: >= 5 entities go straight to one Parquet file and ONE manifest row.

Ids still come from the counters, reserved as one contiguous block, so the manifest row's
range (first..last id number) maps any of these ids to its file: `get` decodes the sqid,
finds the range, reads the file with a filter on `id`.
"""

from __future__ import annotations

from typing import Any

from parquedb_orm.archive import parquet
from parquedb_orm.archive.files import Archive
from parquedb_orm.core import codec
from parquedb_orm.core.events import State, dt_to_us, now_us, us_to_dt
from parquedb_orm.core.ids import encode_id
from parquedb_orm.errors import SerializationError
from parquedb_orm.sql import manifest

BULK_MIN = 5


def write_bulk(
    archive: Archive, ns: str, numbers: range, datas: list[dict[str, Any]], actor: str | None
) -> tuple[manifest.Entry, list[tuple[str, State]]]:
    """Build the entities and write their file; the caller commits the manifest row.

    The hot loop builds each state once (the same dict a replay of its CREATE event gives)
    and encodes it once; the shared timestamps are encoded once for the whole batch."""
    when = us_to_dt(now_us())
    # the store-maintained fields are the same for the whole batch: encode them once
    when_json, actor_json = codec.dumps(when), codec.dumps(actor)
    meta = (
        f'"version":1,"createdAt":{when_json},"updatedAt":{when_json},'
        f'"createdBy":{actor_json},"updatedBy":{actor_json}}}'
    )
    states: list[tuple[str, State]] = []
    ids: list[str] = []
    jsons: list[str] = []
    for number, data in zip(numbers, datas, strict=True):
        eid = encode_id(number)
        type_ = data.pop("$type", ns)
        state: State = {"$id": f"{ns}/{eid}", "$type": type_}
        state.update(data)
        state["version"] = 1
        state["createdAt"] = state["updatedAt"] = when
        state["createdBy"] = state["updatedBy"] = actor
        states.append((eid, state))
        ids.append(eid)
        body = codec.dumps(data)  # the same text codec.dumps(state) gives, without the shared part
        if '"$' in body and _nested_dollar(data):
            raise SerializationError("keys starting with '$' are reserved inside values")
        head = f'{{"$id":"{ns}/{eid}","$type":{codec.dumps(type_)},'
        jsons.append(head + (body[1:-1] + "," if len(body) > 2 else "") + meta)
    table = parquet.bulk_entities_table(ids, list(numbers), states, jsons, dt_to_us(when))
    path = Archive.file_name("entities", ns, numbers[0], numbers[-1], prefix="bulk-")
    size = archive.write_table(path, table)
    return manifest.Entry(manifest.BULK, ns, numbers[0], numbers[-1], path, len(ids), size), states


def _nested_dollar(data: dict[str, Any]) -> bool:
    try:
        for value in data.values():
            codec.check_serialisable(value)
    except SerializationError:
        return True
    return False
