"""The archive's layers read piece by piece (engine/archived.py, archive/pieces.py).

(a) a point lookup in a file of many row groups reads exactly one row group, of the
    columns id/version/seq/state only, and the footer once per process;
(b) layers: a newer delta shadows an older delta and the base; a tombstone (hard
    delete) wins; a delta that does not hold an id is not read (its id set says so);
    bulk files answer last, found by their id-number range;
(c) files in the old format (unsorted, no `parquedb.fields` metadata, one big row group)
    still give correct answers;
(d) a missing, truncated or corrupt file raises ArchiveError naming it;
(e) history: one entity's events come from the row groups whose `id` range covers it;
    a bulk file's CREATE comes from its `bulk_events` twin, or from its row when it has
    none; relationship events are pruned by `from_id`;
(f) the shredded `f_<k>` columns and the `parquedb.fields` map;
(g) through the public API (create_many, updates, deletes, flush), `lookup` agrees with
    `get`, on a local folder and on S3 (SeaweedFS).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as papq
import pytest

import parquedb_orm as pq
from parquedb_orm.archive import parquet
from parquedb_orm.archive.files import Archive
from parquedb_orm.core import codec
from parquedb_orm.core.events import CREATE, LINK, Event, RelEvent
from parquedb_orm.core.ids import chunk_number, encode_id
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.engine.state import Known
from parquedb_orm.errors import ArchiveError
from parquedb_orm.sql import manifest

NS = "items"
TS = 1_700_000_000_000_000


class Reads:
    """Row groups and footers read by pyarrow, counted."""

    def __init__(self) -> None:
        self.groups: list[tuple[str, tuple[int, ...], tuple[str, ...] | None]] = []
        self.footers = 0
        self.path = ""

    def reset(self) -> None:
        self.groups.clear()
        self.footers = 0

    @property
    def pieces(self) -> int:
        return sum(len(g) for _p, g, _c in self.groups)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    seen = Reads()
    real_read, real_init = papq.ParquetFile.read_row_groups, papq.ParquetFile.__init__

    real_archive_read = Archive.read_row_groups

    def read_row_groups(self: Any, row_groups: Any, columns: Any = None, **kw: Any) -> Any:
        seen.groups.append((seen.path, tuple(row_groups), None if columns is None else tuple(columns)))
        return real_read(self, row_groups, columns=columns, **kw)

    def archive_read(self: Archive, rel: str, *a: Any, **kw: Any) -> Any:
        seen.path = rel
        return real_archive_read(self, rel, *a, **kw)

    def init(self: Any, source: Any, *a: Any, metadata: Any = None, **kw: Any) -> None:
        if metadata is None:
            seen.footers += 1
        real_init(self, source, *a, metadata=metadata, **kw)

    monkeypatch.setattr(papq.ParquetFile, "read_row_groups", read_row_groups)
    monkeypatch.setattr(papq.ParquetFile, "__init__", init)
    monkeypatch.setattr(Archive, "read_row_groups", archive_read)
    yield seen


def state(eid: str, version: int, **fields: Any) -> dict[str, Any]:
    when = codec.loads('{"$date":"2024-01-01T00:00:00+00:00"}')
    return {"$id": f"{NS}/{eid}", "$type": NS, **fields, "version": version, "createdAt": when, "updatedAt": when}


def written(archive: Archive, rel: str, table: Any, **options: Any) -> int:
    """Write a file and publish it, as a writer does once its commit lists it."""
    size = archive.write_table(rel, table, **options).size
    archive.publish_pending(rel)
    return size


def write_entities(
    archive: Archive, name: str, rows: list[tuple[str, int, dict[str, Any] | None, int]], kind: str = "entities"
) -> manifest.Entry:
    """(id, version, state, seq) rows -> a file in the new format; its manifest entry."""
    table = parquet.entities_table(NS, [(eid, chunk_number(eid), v, st, seq) for eid, v, st, seq in rows])
    path = f"entities/ns={NS}/{name}"
    size = written(archive, path, table, row_group_rows=parquet.PIECE_ROWS)
    seqs = [r[3] for r in rows]
    if kind == manifest.BULK:
        numbers = [chunk_number(r[0]) for r in rows]
        return manifest.Entry(kind, NS, min(numbers), max(numbers), path, len(rows), size)
    return manifest.Entry(kind, NS, min(seqs), max(seqs), path, len(rows), size)


def reader(archive: Archive, entries: list[manifest.Entry], **kw: Any) -> ArchivedReads:
    """An ArchivedReads whose manifest lists are given (no SQL needed: a single owner)."""
    ar = ArchivedReads(Known(shared=False), archive, **kw)
    for kind in ("entities", manifest.BULK, "events", "bulk_events", "rels"):
        ar.put_files(kind, sorted((e for e in entries if e.kind == kind), key=lambda e: e.first_seq), [NS])
    return ar


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    return Archive.open(tmp_path / "archive")


def ids(n: int, start: int = 1) -> list[str]:
    return [encode_id(i) for i in range(start, start + n)]


# ---------------------------------------------------------------------- (a) one piece
def test_point_lookup_reads_one_row_group(archive: Archive, reads: Reads) -> None:
    all_ids = ids(10_000)
    base = write_entities(
        archive, "base-000000000001-000000010000.parquet", [(e, 1, state(e, 1, n=i), 5) for i, e in enumerate(all_ids)]
    )
    assert papq.ParquetFile(archive.path(base.path)).metadata.num_row_groups == 10
    ar = reader(archive, [base])
    reads.reset()
    got = ar.lookup(None, NS, [all_ids[4321]])  # type: ignore[arg-type]
    assert got == {all_ids[4321]: (1, 5, state(all_ids[4321], 1, n=4321))}
    assert reads.pieces == 1 and reads.footers == 1
    assert reads.groups[0][2] == ("id", "number", "version", "seq", "state", "types")
    # footer cached: the next read is one piece, no footer
    reads.reset()
    got = ar.lookup(None, NS, [all_ids[9999], all_ids[9998], "nothere"])  # type: ignore[arg-type]
    assert set(got) == {all_ids[9999], all_ids[9998]}
    assert reads.pieces == 1 and reads.footers == 0
    # several ids in several pieces: each piece read once, in one call per file; the piece
    # of 4321 (4,096-5,119, where 5000 and 5001 are too) comes from the piece cache
    reads.reset()
    got = ar.lookup(None, NS, [all_ids[0], all_ids[1], all_ids[5000], all_ids[5001]])  # type: ignore[arg-type]
    assert len(got) == 4 and reads.pieces == 1 and len(reads.groups) == 1
    assert got[all_ids[5001]] == (1, 5, state(all_ids[5001], 1, n=5001))
    # a neighbour in a cached piece: no read at all
    reads.reset()
    assert ar.lookup(None, NS, [all_ids[4500]])[all_ids[4500]] == (1, 5, state(all_ids[4500], 1, n=4500))  # type: ignore[arg-type]
    assert reads.pieces == 0


def test_piece_cache_is_bounded(archive: Archive, reads: Reads) -> None:
    all_ids = ids(3_000)
    base = write_entities(
        archive, "base-000000000001-000000003000.parquet", [(e, 1, state(e, 1, n=i), 5) for i, e in enumerate(all_ids)]
    )
    none = reader(archive, [base], max_piece_bytes=0)  # no room: every get reads its piece
    for _ in range(2):
        reads.reset()
        assert none.lookup(None, NS, [all_ids[10]])  # type: ignore[arg-type]
        assert reads.pieces == 1
    one = reader(archive, [base])
    one.lookup(None, NS, [all_ids[10]])  # type: ignore[arg-type]
    size = one._piece_bytes
    assert size > 0
    small = reader(archive, [base], max_piece_bytes=size)  # room for one piece: the oldest goes
    for i in (10, 1500, 2500):
        small.lookup(None, NS, [all_ids[i]])  # type: ignore[arg-type]
        assert small._piece_bytes <= size and len(small._piece_cache) == 1
    reads.reset()
    small.lookup(None, NS, [all_ids[2600]])  # type: ignore[arg-type]
    assert reads.pieces == 0  # the newest piece stayed
    small.lookup(None, NS, [all_ids[11]])  # type: ignore[arg-type]
    assert reads.pieces == 1  # the first was evicted


def test_footer_cache_is_bounded(archive: Archive, reads: Reads) -> None:
    entries = [
        write_entities(archive, f"base-{i:012d}-{i:012d}.parquet", [(e, 1, state(e, 1), i)])
        for i, e in enumerate(ids(5), start=1)
    ]
    ar = reader(archive, entries, max_footers=2, max_footer_bytes=0)
    for e in ids(5):
        ar.lookup(None, NS, [e])  # type: ignore[arg-type]
    assert len(ar._ranges) == 2 and len(ar._footers) == 0


# ---------------------------------------------------------------------- (b) layers
def test_delta_shadows_base_and_a_tombstone_wins(archive: Archive, reads: Reads) -> None:
    all_ids = ids(3000)
    a, b, c, d = all_ids[10], all_ids[1500], all_ids[2999], all_ids[7]
    base = write_entities(
        archive, "base-000000000001-000000000100.parquet", [(e, 1, state(e, 1, v="base"), 100) for e in all_ids]
    )
    old = write_entities(
        archive,
        "000000000101-000000000200.parquet",
        [(a, 2, state(a, 2, v="old"), 200), (b, 2, state(b, 2, v="old"), 200)],
    )
    new = write_entities(
        archive, "000000000201-000000000300.parquet", [(a, 3, state(a, 3, v="new"), 300), (c, 4, None, 300)]
    )
    ar = reader(archive, [base, old, new])
    got = ar.lookup(None, NS, [a, b, c, d])  # type: ignore[arg-type]
    assert got[a] == (3, 300, state(a, 3, v="new"))
    assert got[b] == (2, 200, state(b, 2, v="old"))
    assert got[c] == (4, 300, None)  # hard-deleted: the tombstone, not the base row
    assert got[d] == (1, 100, state(d, 1, v="base"))
    # an id no delta holds: the deltas' id sets say so, only the base is read
    reads.reset()
    assert ar.lookup(None, NS, [all_ids[2000]])[all_ids[2000]][2]["v"] == "base"  # type: ignore[arg-type,index]
    assert {p.rsplit("/", 1)[-1] for p, _g, _c in reads.groups} <= {"base-000000000001-000000000100.parquet"}
    assert reads.pieces == 1
    assert ar.bulk_base(None, NS, a) == (3, state(a, 3, v="new"))  # type: ignore[arg-type]
    assert ar.bulk_base(None, NS, "zzzzzz") == (0, None)  # type: ignore[arg-type]


def test_delta_written_installs_its_id_set_without_reading(archive: Archive, reads: Reads) -> None:
    all_ids = ids(2000)
    delta = write_entities(archive, "000000000001-000000000009.parquet", [(e, 2, state(e, 2), 9) for e in all_ids])
    ar = reader(archive, [])
    ar.changed([delta], [])
    ar.delta_written(NS, delta, all_ids)
    reads.reset()
    assert ar.lookup(None, NS, ["nope1"]) == {}  # type: ignore[arg-type]
    assert reads.groups == [] and reads.footers == 0
    assert ar.lookup(None, NS, [all_ids[1999]])[all_ids[1999]][0] == 2  # type: ignore[arg-type]
    assert reads.pieces == 1 and reads.footers == 1


def test_delta_id_sets_beyond_the_budget_probe_by_ranges(archive: Archive, reads: Reads) -> None:
    all_ids = ids(3000)
    base = write_entities(archive, "base-000000000001-000000000001.parquet", [(e, 1, state(e, 1), 1) for e in all_ids])
    delta = write_entities(
        archive, "000000000002-000000000002.parquet", [(e, 2, state(e, 2), 2) for e in all_ids[:2000]]
    )
    ar = reader(archive, [base, delta], max_delta_ids=100)
    got = ar.lookup(None, NS, [all_ids[5], all_ids[2500]])  # type: ignore[arg-type]
    assert got[all_ids[5]][0] == 2 and got[all_ids[2500]][0] == 1
    assert ar._delta_ids == {} and delta.path in ar._no_ids


def test_bulk_files_answer_last_by_number_range(archive: Archive, reads: Reads) -> None:
    first, second = ids(3000, 1), ids(3000, 3001)
    bulk1 = write_entities(
        archive, "bulk-000000000001-000000003000.parquet", [(e, 1, state(e, 1, b=1), 0) for e in first], manifest.BULK
    )
    bulk2 = write_entities(
        archive, "bulk-000000003001-000000006000.parquet", [(e, 1, state(e, 1, b=2), 0) for e in second], manifest.BULK
    )
    delta = write_entities(archive, "000000000001-000000000005.parquet", [(second[7], 2, state(second[7], 2, b=3), 5)])
    ar = reader(archive, [bulk1, bulk2, delta])
    reads.reset()
    got = ar.lookup(None, NS, [first[2999], second[7], second[100]])  # type: ignore[arg-type]
    assert got[first[2999]] == (1, 0, state(first[2999], 1, b=1))
    assert got[second[7]][0] == 2 and got[second[100]][2]["b"] == 2  # type: ignore[index]
    point = [(p, g) for p, g, c in reads.groups if c == ("id", "number", "version", "seq", "state", "types")]
    assert sorted((p.rsplit("/", 1)[-1][:8], len(g)) for p, g in point) == [
        ("00000000", 1),
        ("bulk-000", 1),
        ("bulk-000", 1),
    ]
    assert [c for _p, _g, c in reads.groups if c != ("id", "number", "version", "seq", "state", "types")] == [
        ("id",)
    ]  # the delta's id set


def test_lookup_through_the_manifest_seek(tmp_path: Path, archive: Archive) -> None:
    """Without a cached list, a bulk file is found by one seek (manifest.covering)."""
    db = pq.ParqueDB(
        f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual")
    )
    try:
        made = db.create_many(NS, [{"n": i} for i in range(3000)])
        eid = str(made[1234]["$id"]).split("/")[1]
        ar = ArchivedReads(Known(shared=False), Archive.open(tmp_path / "archive"))
        with db.engine.connect() as conn:
            got = ar.lookup(conn, NS, [eid])
            assert got[eid][2]["n"] == 1234  # type: ignore[index]
            assert (manifest.BULK, NS) not in ar._manifest  # the list was never read
    finally:
        db.close()


# ---------------------------------------------------------------------- (c) old format
def test_old_format_files_still_answer(archive: Archive) -> None:
    all_ids = ids(3000)
    # old flushes: rows in any order, number 0 for key ids, no metadata, one big row group
    rows = [(e, chunk_number(e), 1, state(e, 1, n=i), 3) for i, e in enumerate(all_ids)]
    rows.reverse()
    rows.append(("_a2V5", 0, 2, {**state("_a2V5", 2)}, 3))
    table = parquet.entities_table(NS, rows)
    order = list(range(table.num_rows))[::-1]
    table = table.select(list(parquet.ENTITIES_SCHEMA.names)).take(order).replace_schema_metadata(None)
    table = table.set_column(
        1,
        "number",
        pa.array([chunk_number(e) if e != "_a2V5" else 0 for e in table.column("id").to_pylist()], pa.int64()),
    )
    path = f"entities/ns={NS}/000000000001-000000000003.parquet"
    Path(archive.path(path)).parent.mkdir(parents=True, exist_ok=True)
    papq.write_table(table, archive.path(path), row_group_size=700)
    entry = manifest.Entry("entities", NS, 1, 3, path, table.num_rows, 0)
    assert parquet.fields_of(papq.ParquetFile(archive.path(path)).schema_arrow) is None
    ar = reader(archive, [entry])
    got = ar.lookup(None, NS, [all_ids[0], all_ids[2999], "_a2V5", "_bm9wZQ"])  # type: ignore[arg-type]
    assert got[all_ids[0]] == (1, 3, state(all_ids[0], 1, n=0))
    assert got[all_ids[2999]][2]["n"] == 2999  # type: ignore[index]
    assert got["_a2V5"][0] == 2 and "_bm9wZQ" not in got
    # old events files: sorted by seq, ids interleaved
    evs = [
        Event(s, TS + s, CREATE if s <= 3 else "UPDATE", all_ids[s % 3], None, {"s": s}, s // 3 + 1)
        for s in range(1, 3001)
    ]
    ev_table = parquet.events_table(NS, [(e, None, None, None) for e in evs]).sort_by("seq")
    ev_path = f"events/ns={NS}/000000000001-000000003000.parquet"
    Path(archive.path(ev_path)).parent.mkdir(parents=True, exist_ok=True)
    papq.write_table(ev_table, archive.path(ev_path), row_group_size=500)
    ar = reader(archive, [entry, manifest.Entry("events", NS, 1, 3000, ev_path, 3000, 0)])
    history = ar.events(None, NS, all_ids[1])  # type: ignore[arg-type]
    assert [e.seq for e in history] == list(range(1, 3001, 3))


# ---------------------------------------------------------------------- (d) bad files
@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_a_damaged_file_raises_archive_error_naming_it(archive: Archive, damage: str) -> None:
    all_ids = ids(3000)
    base = write_entities(archive, "base-000000000001-000000000001.parquet", [(e, 1, state(e, 1), 1) for e in all_ids])
    target = Path(archive.path(base.path))
    data = target.read_bytes()
    if damage == "missing":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(b"PAR1" + b"\x00" * 100 + b"PAR1")
    ar = reader(archive, [base])
    with pytest.raises(ArchiveError, match=base.path.replace(".", r"\.")):
        ar.lookup(None, NS, [all_ids[3]])  # type: ignore[arg-type]


def test_a_piece_damaged_after_its_footer_was_read(archive: Archive) -> None:
    all_ids = ids(3000)
    base = write_entities(archive, "base-000000000001-000000000001.parquet", [(e, 1, state(e, 1), 1) for e in all_ids])
    ar = reader(archive, [base])
    ar.lookup(None, NS, [all_ids[3]])  # type: ignore[arg-type]
    target = Path(archive.path(base.path))
    target.write_bytes(b"\x00" * target.stat().st_size)  # same size, pieces gone
    with pytest.raises(ArchiveError, match="base-000000000001"):
        ar.lookup(None, NS, [all_ids[2500]])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- (e) history
def test_history_reads_the_row_groups_of_one_id(archive: Archive, reads: Reads) -> None:
    all_ids = ids(2000)
    evs = [Event(i + 1, TS + i, CREATE, e, None, {"i": i}, 1) for i, e in enumerate(all_ids)]
    evs += [Event(5000 + i, TS + 5000 + i, "UPDATE", e, None, {"$set": {"i": -i}}, 2) for i, e in enumerate(all_ids)]
    table = parquet.events_table(NS, [(e, None, None, None) for e in reversed(evs)])
    assert table.column("id").to_pylist() == sorted(table.column("id").to_pylist())
    path = f"events/ns={NS}/000000000001-000000006999.parquet"
    size = written(archive, path, table, row_group_rows=parquet.PIECE_ROWS)
    entry = manifest.Entry("events", NS, 1, 6999, path, table.num_rows, size)
    ar = reader(archive, [entry])
    reads.reset()
    target = all_ids[777]
    history = ar.events(None, NS, target)  # type: ignore[arg-type]
    assert [(e.seq, e.op, e.data) for e in history] == [
        (778, CREATE, {"i": 777}),
        (5777, "UPDATE", {"$set": {"i": -777}}),
    ]
    assert 1 <= reads.pieces <= 2  # an id's rows may straddle two pieces, never more here
    # relationship events by from_id
    rels = [
        RelEvent(i + 1, TS + i, LINK, all_ids[i % 500], "tags", f"tags/t{i}", "items", None, None) for i in range(3000)
    ]
    rel_path = f"rels/ns={NS}/000000000001-000000003000.parquet"
    size = written(archive, rel_path, parquet.rels_table(NS, rels), row_group_rows=parquet.PIECE_ROWS)
    ar = reader(archive, [entry, manifest.Entry("rels", NS, 1, 3000, rel_path, 3000, size)])
    reads.reset()
    mine = ar.rel_events_of(None, NS, all_ids[3])  # type: ignore[arg-type]
    assert [r.seq for r in mine] == [4, 504, 1004, 1504, 2004, 2504]
    assert reads.pieces == 1
    assert len(ar.rel_events(None, NS)) == 3000  # type: ignore[arg-type]


def test_history_of_bulk_entities_with_and_without_their_create_events(archive: Archive) -> None:
    first, second = ids(3000, 1), ids(3000, 3001)
    states = [(e, state(e, 1, n=i, createdBy="me")) for i, e in enumerate(first)]
    jsons = [codec.plain_dumps(s) for _e, s in states]
    table = parquet.bulk_entities_table(NS, first, list(range(1, 3001)), states, jsons, TS)
    path = f"entities/ns={NS}/bulk-000000000001-000000003000.parquet"
    bulk1 = manifest.Entry(
        manifest.BULK, NS, 1, 3000, path, 3000, written(archive, path, table, row_group_rows=parquet.PIECE_ROWS)
    )
    ev = parquet.bulk_events_table(NS, first, states, TS)
    assert ev.schema == parquet.EVENTS_SCHEMA and ev.column("id").to_pylist() == sorted(first)
    ev_path = f"events/ns={NS}/bulk-000000000001-000000003000.parquet"
    twin = manifest.Entry(
        "bulk_events", NS, 1, 3000, ev_path, 3000, written(archive, ev_path, ev, row_group_rows=parquet.PIECE_ROWS)
    )
    # the second bulk file predates bulk_events: its CREATE is derived from its row
    old = write_entities(
        archive,
        "bulk-000000003001-000000006000.parquet",
        [(e, 1, state(e, 1, n=-i), 0) for i, e in enumerate(second)],
        manifest.BULK,
    )
    ar = reader(archive, [bulk1, twin, old])
    h1 = ar.events(None, NS, first[42])  # type: ignore[arg-type]
    derived = parquet.bulk_create_events(NS, table.filter(pa.compute.equal(table.column("id"), first[42])))
    key = [(e.seq, e.op, e.id, e.version, e.actor, e.data) for e in derived]
    assert (
        [(e.seq, e.op, e.id, e.version, e.actor, e.data) for e in h1]
        == key
        == [(0, CREATE, first[42], 1, "me", {"n": 42})]
    )
    assert h1[0].op == CREATE and h1[0].version == 1 and h1[0].seq == 0
    h2 = ar.events(None, NS, second[9])  # type: ignore[arg-type]
    assert len(h2) == 1 and h2[0].data == {"n": -9} and h2[0].op == CREATE
    row = ev.filter(pa.compute.equal(ev.column("id"), first[42]))
    after, types = row.column("after")[0].as_py(), row.column("types")[0].as_py()
    assert parquet.load_json(after, types, "after") == states[42][1]
    assert '"$date"' not in after and json.loads(types)["after"] == [[["createdAt"], "$date"], [["updatedAt"], "$date"]]


# ---------------------------------------------------------------------- (f) shredding
def test_shredded_fields_and_their_types() -> None:
    rows = [
        {
            "$id": "x/a",
            "$type": "x",
            "b": True,
            "i": 1,
            "f": 1.5,
            "fi": 1,
            "s": "x",
            "m": [1],
            "n": None,
            "big": 2**60,
            "version": 1,
        },
        {
            "$id": "x/b",
            "$type": "x",
            "b": False,
            "i": 2,
            "f": None,
            "fi": 2.5,
            "s": "y",
            "m": "z",
            "big": 0.5,
            "bad-name": 1,
        },
        None,
        {"$id": "x/c", "$type": "x", "i": None},
    ]
    fields, columns = parquet.shred(rows)
    assert fields == {
        "b": "bool",
        "i": "int",
        "f": "float",
        "fi": "float",
        "s": "string",
        "m": "mixed",
        "n": "mixed",
        "big": "mixed",
        "version": "mixed",
        "bad-name": "mixed",
    }
    assert list(columns) == ["f_b", "f_i", "f_f", "f_fi", "f_s"]
    assert columns["f_i"].to_pylist() == [1, 2, None, None]
    assert columns["f_fi"].type == pa.float64() and columns["f_fi"].to_pylist() == [1.0, 2.5, None, None]
    assert parquet.shred([codec.dumps(r) if r else None for r in rows])[0] == fields  # JSON texts too
    wide = {f"k{i}": i for i in range(70)}
    fields, columns = parquet.shred([wide])
    assert len(columns) == parquet.MAX_FIELDS and fields["k69"] == "mixed" and fields["k0"] == "int"
    assert parquet.field_type(fields, "k1") == "int" and parquet.field_type(fields, "zz") is None
    assert parquet.field_type(None, "k1") == "mixed"


def test_entities_files_are_sorted_and_carry_the_fields_map(archive: Archive) -> None:
    all_ids = ids(50)[::-1]
    rows = [(e, 0, 1, state(e, 1, score=i, tag="t"), 1) for i, e in enumerate(all_ids)]  # number 0: recomputed
    table = parquet.entities_table(NS, rows)
    assert table.column("number").to_pylist() == sorted(chunk_number(e) for e in all_ids)
    assert parquet.fields_of(table.schema) == {
        "score": "int",
        "tag": "string",
        "createdAt": "mixed",
        "updatedAt": "mixed",
        "version": "mixed",
    }
    path = f"entities/ns={NS}/000000000001-000000000001.parquet"
    written(archive, path, table, row_group_rows=parquet.PIECE_ROWS)
    md = papq.ParquetFile(archive.path(path)).metadata
    assert parquet.fields_of(md)["score"] == "int"  # type: ignore[index]
    schema = md.schema.to_arrow_schema()
    assert "f_score" in schema.names and schema.field("f_score").type == pa.int64()
    state_col = schema.names.index("state")
    assert md.row_group(0).column(state_col).statistics is None  # JSON text: no min/max in the footer
    assert md.row_group(0).column(schema.names.index("number")).statistics.has_min_max


# ---------------------------------------------------------------------- (g) public API
def build(db: pq.ParqueDB) -> tuple[list[str], dict[str, Any]]:
    made = db.create_many(NS, [{"n": i, "tag": "a" if i % 2 else "b"} for i in range(2500)])
    refs = [str(m["$id"]).split("/")[1] for m in made]
    for eid in refs[:40]:
        db.update(NS, eid, {"$set": {"n": -1}})
    db.flush()
    for eid in refs[20:30]:
        db.update(NS, eid, {"$inc": {"n": 5}})
    db.delete(NS, refs[100], hard=True) if _has_hard(db) else db.delete(NS, refs[100])
    one = db.create(NS, {"n": 99999})
    db.flush()
    refs.append(str(one["$id"]).split("/")[1])
    return refs, {eid: db.get(NS, eid, include_deleted=True) for eid in refs}


def _has_hard(db: pq.ParqueDB) -> bool:
    import inspect

    return "hard" in inspect.signature(db.delete).parameters


def check_lookup(db: pq.ParqueDB, archive: Archive, refs: list[str], expected: dict[str, Any]) -> None:
    ar = ArchivedReads(Known(shared=False), archive)
    with db.engine.connect() as conn:
        got = ar.lookup(conn, NS, refs)
    for eid in refs:
        want = expected[eid]
        if want is None:
            assert eid not in got or got[eid][2] is None
            continue
        version, _seq, st = got[eid]
        assert version == want["version"] and st is not None
        assert {k: st[k] for k in ("n", "version")} == {k: want[k] for k in ("n", "version")}


def test_public_api_lookup_agrees_with_get(tmp_path: Path) -> None:
    url, where = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "archive"
    db = pq.ParqueDB(url, archive=where, policy=pq.FlushPolicy(mode="manual"))
    try:
        refs, expected = build(db)
    finally:
        db.close()
    db = pq.ParqueDB(url, archive=where, policy=pq.FlushPolicy(mode="manual"))
    try:
        check_lookup(db, Archive.open(where), refs, expected)
        ar = ArchivedReads(Known(shared=False), Archive.open(where))
        with db.engine.connect() as conn:
            history = ar.events(conn, NS, refs[25])
        assert [e.version for e in history] == [1, 2, 3] and history[0].op == CREATE
    finally:
        db.close()


def test_public_api_lookup_on_s3(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("s3")
    import secrets

    uri = server.uri(f"layers-{secrets.token_hex(3)}")
    url = f"sqlite:///{tmp_path / 's.db'}"
    db = pq.ParqueDB(url, archive=uri, archive_options=server.options(), policy=pq.FlushPolicy(mode="manual"))
    try:
        refs, expected = build(db)
        check_lookup(db, Archive.open(uri, **server.options()), refs, expected)
    finally:
        db.close()


from test_s3 import s3  # noqa: E402,F401  (the SeaweedFS fixture)


def test_shared_mode_rereads_lists_but_keeps_footers(tmp_path: Path, reads: Reads) -> None:
    url, where = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "archive"
    db = pq.ParqueDB(url, archive=where, policy=pq.FlushPolicy(mode="manual"))
    try:
        refs, expected = build(db)
        ar = ArchivedReads(Known(shared=True), Archive.open(where))
        with db.engine.connect() as conn:
            first = ar.lookup(conn, NS, refs[:50])
            reads.reset()
            again = ar.lookup(conn, NS, refs[:50])
        assert first == again and reads.footers == 0
        assert again[refs[25]][0] == expected[refs[25]]["version"]
    finally:
        db.close()
