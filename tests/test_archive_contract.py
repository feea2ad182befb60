"""The archive contract (docs/archive.md): what a reader globbing the archive folders sees,
and that the store's own reads stay exact, on SQLite, PostgreSQL and MariaDB.

One workload with every codec type, creates (create and create_many), updates ($set, $inc,
$unset, $push), deletes (soft and hard) and links; flushed. Then:
(a) DuckDB `read_parquet` globs and `pyarrow.dataset` see typed columns as documented, an
    `ns` column equal to the hive key, plain JSON (no codec tag anywhere but the `types`
    sidecar), UPDATE `changes` with the old and new values, typed timestamps;
(b) get / history / find / db.duckdb() give the exact Python values (types included)
    before the flush, after it and after compaction;
(c) an archive written in the format before this one (string JSON with codec tags, no
    ns/types/changes columns) still reads exactly, and compacts into the current format.
"""

from __future__ import annotations

import enum
import json
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as papq
import pytest
from backends import backend_fixtures
from sqlalchemy import Engine, text

import parquedb_orm as pq
from parquedb_orm.archive import parquet
from parquedb_orm.core import codec
from parquedb_orm.core.filters import matches

BACKENDS = ["sqlite-file", "postgresql", "mysql"]
NS = "items"
MANUAL = pq.FlushPolicy(mode="manual", compact_after=1000)
PLUS2 = timezone(timedelta(hours=2))
#: a codec tag as a JSON key: what the archive's data columns must never hold
TAG = re.compile(r'"\$(?:date|day|decimal|uuid|time|interval|bytes|enum|ext)"')
#: store-maintained keys (compared apart: their values are the store's, not the test's)
STORE_KEYS = {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}

kind, engine = backend_fixtures(BACKENDS)


class Mood(enum.Enum):
    CALM = "calm"
    ANGRY = "angry"


def given(i: int) -> dict[str, Any]:
    """What the workload stores for entity i: every codec type, nested too."""
    return {
        "name": f"n{i}",
        "aware": datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=PLUS2) + timedelta(days=i),
        "naive": datetime(2020, 1, 1, 12, 30),
        "day": date(2024, 2, 29),
        "at": time(1, 2, 3, 4),
        "span": timedelta(days=1, microseconds=5),
        "price": Decimal("1.10"),
        "uid": uuid.UUID(int=i + 1),
        "blob": b"\x00\xff",
        "mood": Mood.CALM,
        "nested": {"list": [1, {"when": date(2020, 1, 1 + i % 28)}], "deep": {"n": Decimal("0.5")}},
        "tags": ["a"],
        "count": i,
    }


def stored(value: Any) -> Any:
    """A value as storage gives it back: aware datetimes in UTC, tuples as lists."""
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [stored(v) for v in value]
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value.astimezone(UTC)
    return value


def assert_exact(got: Any, want: Any, path: str = "") -> None:
    """Same value, same type, recursively; aware stays aware (in UTC), naive stays naive."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} {got!r} != {type(want).__name__} {want!r}"
    if isinstance(want, dict):
        assert set(got) == set(want), (path, sorted(got), sorted(want))
        for k in want:
            assert_exact(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_exact(g, w, f"{path}[{i}]")
    else:
        assert got == want, (path, got, want)
        if isinstance(want, datetime):
            assert (got.utcoffset() is None) == (want.utcoffset() is None), (path, got, want)


def body(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in STORE_KEYS}


class Workload:
    """Runs the operations and keeps what each entity must hold, what each UPDATE changed
    and each entity's event data, as the store must give them back."""

    def __init__(self, db: pq.ParqueDB) -> None:
        self.db = db
        self.expected: dict[str, dict[str, Any] | None] = {}  # id -> user fields (None: hard-deleted)
        self.deleted: set[str] = set()
        self.changes: dict[tuple[str, int], dict[str, Any]] = {}  # (id, version) -> changes
        self.data: dict[str, list[tuple[str, Any]]] = {}  # id -> [(op, data)] of its entity events

    def run(self) -> list[str]:
        db = self.db
        solo = [db.create(NS, given(i)) for i in range(3)]
        many = db.create_many(NS, [given(10 + i) for i in range(6)])
        ids = [e["$id"].split("/")[1] for e in [*solo, *many]]
        for eid, i in zip(ids, [0, 1, 2, *range(10, 16)], strict=True):
            self.expected[eid] = stored(given(i))
            self.data[eid] = [("CREATE", stored(given(i)))]
        a, b, c, m0, m1 = ids[0], ids[1], ids[2], ids[3], ids[4]
        new_aware = datetime(2027, 1, 1, 9, tzinfo=PLUS2)
        self._update(a, {"$set": {"aware": new_aware, "price": Decimal("2.50")}})
        self._update(a, {"$inc": {"count": 5}})
        self._update(b, {"$unset": {"naive": ""}})
        self._update(m0, {"$push": {"tags": "z"}, "$set": {"nested.deep.n": Decimal("7")}})
        self._update(m1, {"$set": {"fresh": date(2030, 12, 31)}})
        db.delete(NS, c)
        self.deleted.add(c)
        self.data[c].append(("DELETE", {"hard": False}))
        gone = db.create(NS, {"name": "gone", "when": datetime(2001, 1, 1, tzinfo=UTC)})["$id"].split("/")[1]
        db.delete(NS, gone, hard=True)
        self.expected[gone] = None
        self.data[gone] = [("CREATE", {"name": "gone", "when": datetime(2001, 1, 1, tzinfo=UTC)})]
        self.data[gone].append(("DELETE", {"hard": True}))
        db.link(f"{NS}/{a}", "friend", f"{NS}/{b}")
        db.link(f"{NS}/{m1}", "likes", f"{NS}/{a}", data={"since": date(2020, 1, 1), "w": Decimal("0.25")})
        return ids

    def _update(self, eid: str, doc: dict[str, Any]) -> None:
        before = self.expected[eid]
        assert before is not None
        after = self.db.update(NS, eid, doc)
        self.data[eid].append(("UPDATE", stored(doc)))
        new = stored(body(after))
        self.changes[(eid, after["version"])] = {
            k: {"old": before.get(k), "new": new.get(k)}
            for k in dict.fromkeys([*before, *new])
            if type(before.get(k)) is not type(new.get(k)) or before.get(k) != new.get(k)
        }
        self.expected[eid] = new


@pytest.fixture
def store(engine: Engine, tmp_path: Path) -> Iterator[tuple[pq.ParqueDB, Workload]]:
    db = pq.ParqueDB(engine, archive=str(tmp_path / "archive"), policy=MANUAL)
    w = Workload(db)
    w.run()
    try:
        yield db, w
    finally:
        db.close()


FILTERS: list[dict[str, Any]] = [
    {"price": Decimal("2.50")},
    {"price": {"$gte": Decimal("1.10")}},
    {"aware": {"$gt": datetime(2026, 3, 8, tzinfo=UTC)}},
    {"naive": datetime(2020, 1, 1, 12, 30)},
    {"day": date(2024, 2, 29)},
    {"uid": uuid.UUID(int=2)},
    {"blob": b"\x00\xff"},
    {"mood": Mood.CALM},
    {"fresh": {"$lte": date(2031, 1, 1)}},
    {"count": {"$gte": 5}},
]


def check_store(db: pq.ParqueDB, w: Workload, monkeypatch: pytest.MonkeyPatch, *, changes: bool = True) -> None:
    """get / history / find / db.duckdb() give exactly what the workload stored (`changes`:
    and the UPDATE events' changes, which events archived in the older format lack)."""
    live = {eid: want for eid, want in w.expected.items() if want is not None and eid not in w.deleted}
    for eid, want in w.expected.items():
        got = db.get(NS, eid, include_deleted=True)
        if want is None:
            assert got is None, eid
            continue
        assert got is not None, eid
        assert_exact(body(got), want, eid)
        assert ("deletedAt" in got) == (eid in w.deleted)
        events = [h for h in db.history(f"{NS}/{eid}") if h["op"] in ("CREATE", "UPDATE", "DELETE")]
        assert [h["op"] for h in events] == [op for op, _d in w.data[eid]], eid
        for h, (_op, data) in zip(events, w.data[eid], strict=True):
            assert_exact(h["data"], data, f"{eid} history")
    store_module = sys.modules["parquedb_orm.engine.store"]
    for flt in FILTERS:
        want_ids = sorted(eid for eid, st in live.items() if matches(st, flt))
        assert want_ids, flt  # each filter matches something: it checks a typed value
        for above in (None, 0):  # the in-memory path, then DuckDB with pushdown
            if above is not None:
                monkeypatch.setattr(store_module, "PUSHDOWN_ABOVE", above)
            found = db.find(NS, flt)
            monkeypatch.undo()
            assert sorted(d["$id"].split("/")[1] for d in found) == want_ids, (flt, above)
            for d in found:
                assert_exact(body(d), live[d["$id"].split("/")[1]], str(flt))
    con = db.duckdb()
    try:
        rows = con.execute("SELECT id, state, types FROM entities WHERE deleted_at IS NULL").fetchall()
        assert sorted(r[0] for r in rows) == sorted(live)
        for eid, state, types in rows:
            assert_exact(body(parquet.load_json(state, types, "state")), live[eid], f"duckdb {eid}")
        flushed = con.execute("SELECT count(*) FROM events WHERE changes IS NOT NULL").fetchone()
        assert flushed is not None
        if flushed[0] and changes:  # the WAL tail's events carry no changes yet
            got = con.execute("SELECT id, version, changes, types FROM events WHERE op = 'UPDATE'").fetchall()
            assert {(eid, v): parquet.load_json(c, t, "changes") for eid, v, c, t in got} == w.changes
    finally:
        con.close()


def json_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if f.type == parquet.JSON or f.name in ("data", "before", "after", "state")]


def files(root: Path, folder: str) -> list[Path]:
    return sorted((root / folder).rglob("*.parquet"))


def check_globs(root: Path, w: Workload) -> None:
    """What a reader that globs the folders sees (docs/archive.md)."""
    events_glob = f"{root}/events/**/*.parquet"
    entities_glob = f"{root}/entities/**/*.parquet"
    deltas_glob = f"{root}/entity_deltas/**/*.parquet"
    # the current state: both entity folders (after a compaction there may be no delta)
    current = [entities_glob, *([deltas_glob] if any((root / "entity_deltas").glob("*/*.parquet")) else [])]
    described = {
        name: typ
        for name, typ, *_ in duckdb.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{events_glob}', hive_partitioning = true)"
        ).fetchall()
    }
    assert described == {
        "seq": "BIGINT",
        "ts": "TIMESTAMP WITH TIME ZONE",
        "op": "VARCHAR",
        "ns": "VARCHAR",
        "id": "VARCHAR",
        "version": "BIGINT",
        "actor": "VARCHAR",
        "data": "JSON",
        "before": "JSON",
        "after": "JSON",
        "changes": "JSON",
        "meta": "JSON",
        "types": "JSON",
    }
    ent = dict(
        (name, typ)
        for name, typ, *_ in duckdb.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{entities_glob}', hive_partitioning = true, union_by_name = true)"
        ).fetchall()
    )
    for name, typ in {
        "id": "VARCHAR",
        "ns": "VARCHAR",
        "number": "BIGINT",
        "version": "BIGINT",
        "seq": "BIGINT",
        "type": "VARCHAR",
        "name": "VARCHAR",
        "created_at": "TIMESTAMP WITH TIME ZONE",
        "updated_at": "TIMESTAMP WITH TIME ZONE",
        "deleted_at": "TIMESTAMP WITH TIME ZONE",
        "state": "JSON",
        "types": "JSON",
        "f_aware": "TIMESTAMP WITH TIME ZONE",  # every row holds an aware datetime: a typed column
        "f_count": "BIGINT",
        "f_name": "VARCHAR",
    }.items():
        assert ent[name] == typ, (name, ent[name])
    assert "f_naive" not in ent and "f_price" not in ent  # only the JSON (and its types) knows those
    # `ns` is the hive key of every file's path, in DuckDB, pyarrow and the file itself
    for folder in ("events", "entities", "rels"):
        glob = f"{root}/{folder}/**/*.parquet"
        pairs = duckdb.execute(
            f"SELECT DISTINCT ns, filename FROM read_parquet('{glob}', hive_partitioning = true,"
            " union_by_name = true, filename = true)"
        ).fetchall()
        assert pairs and all(f"/{folder}/ns={ns}/" in fn for ns, fn in pairs), pairs
        table = ds.dataset(root / folder, format="parquet", partitioning="hive").to_table(columns=["ns"])
        assert set(table.column("ns").to_pylist()) == {NS}
        for path in files(root, folder):
            own = papq.read_table(path, partitioning=None)
            assert set(own.column("ns").to_pylist()) == {path.parent.name.split("=", 1)[1]}, path
            # JSON columns: Parquet's JSON logical type, plain JSON, no codec tag in any cell
            for column in json_columns(own.schema):
                assert own.schema.field(column).type == parquet.JSON, (path, column)
                if column == "types":
                    continue
                for cell in own.column(column).to_pylist():
                    assert cell is None or TAG.search(cell) is None, (path, column, cell)
    # UPDATE events carry their changes, in plain JSON
    got = duckdb.execute(
        f"SELECT id, version, changes, types FROM read_parquet('{events_glob}') WHERE op = 'UPDATE'"
    ).fetchall()
    assert {(eid, v): parquet.load_json(c, t, "changes") for eid, v, c, t in got} == w.changes
    a_price = duckdb.execute(
        f"SELECT changes->>'$.price.old', changes->>'$.price.new', changes->>'$.aware.new'"
        f" FROM read_parquet('{events_glob}') WHERE op = 'UPDATE' AND (changes->'$.price') IS NOT NULL"
    ).fetchall()
    assert a_price == [("1.10", "2.50", "2027-01-01T07:00:00+00:00")]
    others = duckdb.execute(
        f"SELECT count(*) FROM read_parquet('{events_glob}') WHERE op <> 'UPDATE' AND changes IS NOT NULL"
    ).fetchone()
    assert others == (0,)
    # every committed event is in events/ (bulk CREATEs in their bulk- files)
    ops = duckdb.execute(f"SELECT op, count(*) FROM read_parquet('{events_glob}') GROUP BY op ORDER BY op").fetchall()
    assert ops == [("CREATE", 10), ("DELETE", 2), ("UPDATE", 5)]
    # entities/: one row per entity (bases and bulk files are disjoint; deltas live apart)
    (dups,) = duckdb.execute(
        f"SELECT count(*) - count(DISTINCT (ns, id)) FROM read_parquet('{entities_glob}', union_by_name = true)"
    ).fetchone() or (None,)
    assert dups == 0
    # timestamps are timestamps: an instant compares as one
    (when,) = duckdb.execute(f"SELECT max(f_aware) FROM read_parquet({current}, union_by_name = true)").fetchone() or (
        None,
    )
    assert when == max(st["aware"] for st in w.expected.values() if st is not None and "aware" in st)


def test_the_archive_is_typed_plain_and_exact(
    store: tuple[pq.ParqueDB, Workload], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, w = store
    root = tmp_path / "archive"
    check_store(db, w, monkeypatch)  # WAL tail (and the bulk file)
    result = db.flush()
    assert result.events == 11 and result.rel_events == 2  # the 6 bulk CREATEs are already archived
    check_globs(root, w)
    run_doc_examples(tmp_path, monkeypatch)
    check_store(db, w, monkeypatch)
    fresh = pq.ParqueDB(db.engine, archive=str(root), policy=MANUAL)  # nothing cached
    try:
        check_store(fresh, w, monkeypatch)
        assert fresh.compact(threshold=1) >= 2  # entities (delta + bulk -> base), events
        check_globs(root, w)
        check_store(fresh, w, monkeypatch)
    finally:
        fresh.close()


DOC = Path(__file__).resolve().parent.parent / "docs" / "archive.md"


def run_doc_examples(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SQL block of docs/archive.md returns rows, every Python block runs, from the
    folder that holds `archive/`."""
    blocks = re.findall(r"```(sql|python)\n(.*?)```", DOC.read_text(), re.S)
    assert sum(1 for lang, _ in blocks if lang == "sql") == 5 and sum(1 for lang, _ in blocks if lang == "python") == 2
    monkeypatch.chdir(folder)
    for lang, code in blocks:
        if lang == "sql":
            assert duckdb.execute(code).fetchall(), code
        else:
            scope: dict[str, Any] = {}
            exec(compile(code, str(DOC), "exec"), scope)
            assert any(isinstance(v, (list, pa.Table)) and len(v) for v in scope.values()), code
    monkeypatch.undo()


# ---------------------------------------------------------------------- (c) older files
def to_old_format(path: Path) -> None:
    """Rewrite one archive file as the format before this one wrote it: string JSON with
    codec tags, no ns / types / changes columns, no timestamp `f_<k>` columns."""
    table = papq.read_table(path, partitioning=None)
    names = json_columns(table.schema)
    decoded = parquet.json_columns(table, [c for c in names if c != "types"])
    cols: dict[str, Any] = {}
    for field in table.schema:
        if field.name in ("ns", "types", "changes") or (field.type == parquet.TS and field.name.startswith("f_")):
            continue
        if field.name in decoded:
            cols[field.name] = pa.array(
                [None if v is None else codec.dumps(v) for v in decoded[field.name]], pa.string()
            )
        else:
            cols[field.name] = table.column(field.name)
    meta = dict(table.schema.metadata or {})
    if parquet.FIELDS_KEY in meta:
        fields = json.loads(meta[parquet.FIELDS_KEY])
        meta[parquet.FIELDS_KEY] = json.dumps(
            {k: "mixed" if t == "timestamp" else t for k, t in fields.items()}
        ).encode()
    old = pa.table(cols).replace_schema_metadata(meta)
    papq.write_table(old, path, row_group_size=parquet.PIECE_ROWS, compression="zstd")


def test_an_archive_in_the_older_format_still_reads(
    store: tuple[pq.ParqueDB, Workload], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, w = store
    root = tmp_path / "archive"
    db.flush()
    db.close()
    rewritten = 0
    for folder in ("events", "entities", "entity_deltas", "rels"):
        for path in files(root, folder):
            if folder == "entity_deltas":  # the older format kept deltas in entities/
                moved = root / "entities" / path.relative_to(root / folder)
                moved.parent.mkdir(parents=True, exist_ok=True)
                path = path.rename(moved)
                with db.engine.begin() as conn:
                    conn.execute(
                        text("UPDATE archive_manifest SET path = :new WHERE path = :old"),
                        {
                            "new": moved.relative_to(root).as_posix(),
                            "old": f"{folder}/{moved.relative_to(root / 'entities').as_posix()}",
                        },
                    )
            to_old_format(path)
            rewritten += 1
            old = papq.read_schema(path)
            assert (
                "types" not in old.names
                and "ns" not in old.names
                and old.field(json_columns(old)[0]).type == pa.string()
            )
    assert rewritten == 5  # events, bulk events, entities delta, bulk entities, rels
    with db.engine.begin() as conn:  # rows of that time had no checksums (pq0005): NULL, not verified
        conn.execute(text("UPDATE archive_manifest SET checksum = NULL"))
    with db.engine.connect() as conn:  # the manifest still lists them all (sizes are not re-read)
        assert conn.execute(text("SELECT count(*) FROM archive_manifest")).scalar() == rewritten
    fresh = pq.ParqueDB(db.engine, archive=str(root), policy=MANUAL)
    try:
        check_store(fresh, w, monkeypatch, changes=False)
        # a new flush writes new-format files beside the old ones; readers take both
        m1 = next(eid for eid, st in w.expected.items() if st is not None and st.get("fresh"))
        fresh.update(NS, m1, {"$set": {"late": datetime(2040, 1, 1, tzinfo=UTC)}})
        w.expected[m1] = {**(w.expected[m1] or {}), "late": datetime(2040, 1, 1, tzinfo=UTC)}
        w.data[m1].append(("UPDATE", {"$set": {"late": datetime(2040, 1, 1, tzinfo=UTC)}}))
        fresh.flush()
        check_store(fresh, w, monkeypatch, changes=False)
        con = fresh.duckdb()
        try:
            got = con.execute("SELECT id, changes, types FROM events WHERE changes IS NOT NULL").fetchall()
        finally:
            con.close()
        assert [(eid, parquet.load_json(c, t, "changes")) for eid, c, t in got] == [
            (m1, {"late": {"old": None, "new": datetime(2040, 1, 1, tzinfo=UTC)}})
        ]
        # compaction's output is in the current format: plain, typed, with ns
        fresh.compact(threshold=1)
        for folder in ("events", "entities"):
            for path in files(root, folder):
                table = papq.read_table(path, partitioning=None)
                assert "types" in table.column_names and set(table.column("ns").to_pylist()) == {NS}, path
                for column in json_columns(table.schema):
                    if column != "types":
                        assert not any(TAG.search(c) for c in table.column(column).to_pylist() if c), (path, column)
        check_store(fresh, w, monkeypatch, changes=False)
    finally:
        fresh.close()


def test_find_on_timestamp_columns_equals_the_memory_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A field holding aware datetimes in every row of a file is a TIMESTAMPTZ `f_<k>`
    column; find's pushdown on it returns what the in-memory path returns, for filter
    values of every kind (aware, naive, None, other types) and every operator."""
    with pq.ParqueDB(f"sqlite:///{tmp_path / 'p.db'}", archive=str(tmp_path / "a"), policy=MANUAL) as db:
        base = datetime(2026, 1, 1, tzinfo=UTC)
        docs = [{"i": i, "at": base + timedelta(hours=i)} if i % 4 else {"i": i} for i in range(12)]
        db.create_many(NS, docs)
        db.flush()
        got = papq.read_schema(next((tmp_path / "a" / "entities").rglob("bulk-*.parquet")))
        assert got.field("f_at").type == parquet.TS
        values: list[Any] = [
            base + timedelta(hours=5),
            (base + timedelta(hours=5)).astimezone(PLUS2),  # the same instant, another offset
            datetime(2026, 1, 1, 5),  # naive: never equal to an aware one in Python
            None,
            "2026-01-01T05:00:00+00:00",
            5,
        ]
        store_module = sys.modules["parquedb_orm.engine.store"]
        checked = 0
        for value in values:
            for flt in [{"at": value}, *({"at": {op: value}} for op in ("$gt", "$gte", "$lt", "$lte", "$ne"))]:
                try:
                    expected = sorted(d["i"] for d in db.find(NS, flt))
                except pq.ParqueDBError:
                    continue  # a filter Python refuses is refused on both paths
                monkeypatch.setattr(store_module, "PUSHDOWN_ABOVE", 0)
                pushed = sorted(d["i"] for d in db.find(NS, flt))
                monkeypatch.undo()
                assert pushed == expected, (flt, pushed, expected)
                checked += 1
        assert checked >= 30
        assert sorted(d["i"] for d in db.find(NS, {"at": {"$gt": base + timedelta(hours=5)}})) == [6, 7, 9, 10, 11]
