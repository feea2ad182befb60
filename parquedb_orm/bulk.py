"""`create_many` bypass: >= 5 entities go straight to one Parquet file and ONE manifest row.

Ids still come from the counters, reserved as one contiguous block, so the manifest row's
range (first..last id number) maps any of these ids to its file: `get` decodes the sqid,
finds the range, reads the file with a filter on `id`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from . import manifest, parquet
from .archive import Archive
from .counters import reserve, reserve_autonomous
from .events import CREATE, Event, State, apply_event, now_us
from .ids import encode_id
from .runtime import Runtime

BULK_MIN = 5


def reserve_contiguous(rt: Runtime, conn: Connection | None, ns: str, count: int) -> range:
    """A fresh contiguous block of ids (the pool's leftovers are not contiguous)."""
    from . import dialects

    if conn is not None and dialects.family(conn) == "sqlite" and dialects.in_write_transaction(conn):
        return reserve(conn, f"id:{ns}", count)
    return reserve_autonomous(rt.engine, f"id:{ns}", count)


def write_bulk(
    rt: Runtime, archive: Archive, ns: str, numbers: range, datas: list[dict[str, Any]], actor: str | None
) -> tuple[manifest.Entry, list[tuple[str, State]]]:
    """Build the entities and write their file; the caller commits the manifest row."""
    ts = now_us()
    states: list[tuple[str, State]] = []
    rows: list[tuple[str, int, int, State | None, int]] = []
    for number, data in zip(numbers, datas, strict=True):
        eid = encode_id(number)
        state = apply_event(ns, None, Event(0, ts, CREATE, eid, actor, data, 1))
        assert state is not None
        states.append((eid, state))
        rows.append((eid, number, 1, state, 0))
    path = Archive.file_name("entities", ns, numbers[0], numbers[-1], prefix="bulk-")
    size = archive.write_table(path, parquet.entities_table(rows))
    return manifest.Entry("entities", ns, numbers[0], numbers[-1], path, len(rows), size), states


def created_at(state: State) -> datetime:
    value = state["createdAt"]
    assert isinstance(value, datetime)
    return value
