"""The Parquet archive as files: layout, types, what DuckDB reads, the bulk path, the flush
policy, compaction, and bad archive locations.

(a) after a flush the files sit at `events|entities|rels/ns=<ns>/<first>-<last>.parquet`
    (12-digit zero-padded sequence numbers), typed (seq int64, ts timestamp[us, UTC], op
    dictionary) and zstd-compressed;
(b) DuckDB reads the archive as it is (`read_parquet(..., hive_partitioning=true)`) and
    finds exactly the flushed events in sequence order; `db.duckdb()` has the views
    `events`, `rels` and `entities` (current state: bulk-created and unflushed included);
(c) `create_many` of 10,000 entities writes at most 3 SQL rows and ONE manifest row, and
    the entities are at once readable by get (warm and cold), find, related and history;
(d) the flush policy: manual, inline at max_events, background worker, timer at
    min_events + max_interval, a start that flushes what a previous process left;
(e) compaction merges a namespace's files and changes no answer;
(f) bad archive locations and escaping paths raise typed errors.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as papq
import pytest
from parquedb_meter import meter
from sqlalchemy import Engine, text

import parquedb_orm as pq
import parquedb_orm.archive.flush as flush_module
from parquedb_orm.archive.files import Archive
from parquedb_orm.sql import dialects

FILE_NAME = r"^\d{12}-\d{12}\.parquet$"
Opener = Callable[..., pq.ParqueDB]


def sqid(entity: dict[str, Any]) -> str:
    return str(entity["$id"]).split("/")[1]


def manifest_rows(engine: Engine) -> list[tuple[str, str, int, int, str, int, int]]:
    with engine.connect() as conn:
        return [
            (r[0], r[1], r[2], r[3], r[4], r[5], r[6])
            for r in conn.execute(
                text("SELECT kind, ns, first_seq, last_seq, path, row_count, bytes FROM archive_manifest")
            ).all()
        ]


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def started(db: pq.ParqueDB, hook: list[tuple[str, str]]) -> pq.ParqueDB:
    """Wait for the flush a non-manual store runs at start (nothing pending here), so the
    test's own commits are the only thing the policy reacts to afterwards."""
    assert wait_until(lambda: db.stats()["flushes"] >= 1)
    hook.clear()
    return db


@pytest.fixture
def open_db(tmp_path: Path) -> Iterator[Opener]:
    """`open_db(policy=..., archive=...)`: a ParqueDB on one SQLite file; closed at the end."""
    opened: list[pq.ParqueDB] = []

    def factory(policy: pq.FlushPolicy | None = None, archive: Any = "default", url: str | None = None) -> pq.ParqueDB:
        db = pq.ParqueDB(
            url or f"sqlite:///{tmp_path / 'store.db'}",
            archive=tmp_path / "archive" if archive == "default" else archive,
            policy=policy or pq.FlushPolicy(mode="manual"),
        )
        opened.append(db)
        return db

    yield factory
    for db in opened:
        db.close()


@pytest.fixture
def hook() -> Iterator[list[tuple[str, str]]]:
    """Record (step, thread name) of every flush step through the test hook."""
    seen: list[tuple[str, str]] = []
    flush_module.CRASH_HOOK = lambda step: seen.append((step, threading.current_thread().name))
    try:
        yield seen
    finally:
        flush_module.CRASH_HOOK = None


class Workload:
    """Known events over two namespaces; sequences counted here, not read from the store."""

    def __init__(self, db: pq.ParqueDB) -> None:
        self.db = db
        self.events: list[tuple[str, str, int, str, int, str | None]] = []  # ns, id, seq, op, version, actor
        self.rels: list[tuple[str, str, int, str, str, str]] = []  # ns, from_id, seq, op, predicate, to
        self.seq: Counter[str] = Counter()
        self.rseq: Counter[str] = Counter()

    def ev(self, ns: str, eid: str, op: str, version: int, actor: str | None) -> None:
        self.seq[ns] += 1
        self.events.append((ns, eid, self.seq[ns], op, version, actor))

    def rel(self, from_ref: str, op: str, predicate: str, to: str) -> None:
        ns, eid = from_ref.split("/")
        self.rseq[ns] += 1
        self.rels.append((ns, eid, self.rseq[ns], op, predicate, to))

    def run(self) -> dict[str, dict[str, Any]]:
        db = self.db
        made: dict[str, dict[str, Any]] = {}
        for i in range(3):
            e = db.create("users", {"name": f"u{i}", "age": 30 + i}, actor="users/root")
            self.ev("users", sqid(e), "CREATE", 1, "users/root")
            made[f"u{i}"] = e
        for i in range(4):
            e = db.create("posts", {"name": f"p{i}", "views": i})
            self.ev("posts", sqid(e), "CREATE", 1, None)
            made[f"p{i}"] = e
        db.update("posts", sqid(made["p0"]), {"$inc": {"views": 10}}, actor="users/ed")
        self.ev("posts", sqid(made["p0"]), "UPDATE", 2, "users/ed")
        db.delete("posts", sqid(made["p1"]))
        self.ev("posts", sqid(made["p1"]), "DELETE", 2, None)
        db.restore("posts", sqid(made["p1"]))
        self.ev("posts", sqid(made["p1"]), "RESTORE", 3, None)
        db.delete("users", sqid(made["u2"]), hard=True)
        self.ev("users", sqid(made["u2"]), "DELETE", 2, None)
        db.link(made["p0"]["$id"], "author", made["u0"]["$id"], reverse="posts")
        self.rel(made["p0"]["$id"], "LINK", "author", made["u0"]["$id"])
        db.link(made["p2"]["$id"], "author", made["u1"]["$id"])
        self.rel(made["p2"]["$id"], "LINK", "author", made["u1"]["$id"])
        db.unlink(made["p2"]["$id"], "author", made["u1"]["$id"])
        self.rel(made["p2"]["$id"], "UNLINK", "author", made["u1"]["$id"])
        return made


# ---------------------------------------------------------------------------- (a) layout, types
def test_layout_names_types_and_compression(open_db: Opener, tmp_path: Path) -> None:
    db = open_db()
    w = Workload(db)
    w.run()
    result = db.flush()
    arch = tmp_path / "archive"
    expected = {
        "events/ns=posts/000000000001-000000000007.parquet",
        "entity_deltas/ns=posts/000000000001-000000000007.parquet",
        "rels/ns=posts/000000000001-000000000003.parquet",
        "events/ns=users/000000000001-000000000004.parquet",
        "entity_deltas/ns=users/000000000001-000000000004.parquet",
    }
    assert set(result.paths) == expected
    assert {p.relative_to(arch).as_posix() for p in arch.rglob("*") if p.is_file()} == expected, "stray files"
    assert {r[4] for r in manifest_rows(db.engine)} == expected
    assert Archive.file_name("events", "posts", 1, 7) == "events/ns=posts/000000000001-000000000007.parquet"
    assert Archive.file_name("rels", "a", 12, 3456, prefix="c-") == "rels/ns=a/c-000000000012-000000003456.parquet"
    for row in manifest_rows(db.engine):
        kind, ns, first, last, path, count, size = row
        folder = "entity_deltas" if kind == "entities" else kind  # a flush's entities file is a delta
        assert path == Archive.file_name(folder, ns, first, last)
        assert (arch / path).stat().st_size == size
        meta = papq.ParquetFile(arch / path).metadata
        assert meta.num_rows == count
        for rg in range(meta.num_row_groups):
            for col in range(meta.num_columns):
                assert meta.row_group(rg).column(col).compression == "ZSTD", (path, col)

    events = papq.read_table(arch / "events/ns=posts/000000000001-000000000007.parquet")
    assert events.schema.field("seq").type == pa.int64()
    assert events.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    # op is dictionary-encoded in the file; it reads back as string: files with JSON columns
    # do not store the Arrow schema (archive/files.py keeps_arrow_schema: pyiceberg reads them)
    assert events.schema.field("op").type == pa.string()
    footer = papq.ParquetFile(arch / "events/ns=posts/000000000001-000000000007.parquet").metadata
    assert "RLE_DICTIONARY" in footer.row_group(0).column(events.schema.get_field_index("op")).encodings
    assert events.schema.field("version").type == pa.int64()
    # the namespace is a column too, equal to the hive partition of the path
    assert events.schema.field("ns").type == pa.string() and set(events.column("ns").to_pylist()) == {"posts"}
    # sorted by (id, seq), so one entity's events sit in one piece (history reads that piece)
    pairs = list(zip(events.column("id").to_pylist(), events.column("seq").to_pylist(), strict=True))
    assert pairs == sorted(pairs) and sorted(s for _i, s in pairs) == list(range(1, 8))
    events_meta = papq.ParquetFile(arch / "events/ns=posts/000000000001-000000000007.parquet").metadata
    id_col = events.schema.get_field_index("id")
    assert events_meta.row_group(0).column(id_col).statistics  # `id`: what prunes pieces
    rels = papq.read_table(arch / "rels/ns=posts/000000000001-000000000003.parquet")
    assert rels.schema.field("seq").type == pa.int64() and rels.schema.field("op").type == pa.string()
    # sorted by (from_id, seq)
    by_seq = sorted(zip(rels.column("seq").to_pylist(), rels.column("op").to_pylist(), strict=True))
    assert [str(o) for _s, o in by_seq] == ["LINK", "LINK", "UNLINK"]
    froms = list(zip(rels.column("from_id").to_pylist(), rels.column("seq").to_pylist(), strict=True))
    assert froms == sorted(froms)
    ents = papq.read_table(arch / "entity_deltas/ns=users/000000000001-000000000004.parquet")
    assert ents.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert ents.schema.field("version").type == pa.int64()
    # the hard-deleted user is a tombstone row (state null), the others their latest state
    states = dict(zip(ents.column("id").to_pylist(), ents.column("state").to_pylist(), strict=True))
    assert sum(1 for s in states.values() if s is None) == 1 and len(states) == 3


# ---------------------------------------------------------------------------- (b) DuckDB
def test_duckdb_reads_the_archive_directly(open_db: Opener, tmp_path: Path) -> None:
    db = open_db()
    w = Workload(db)
    made = w.run()
    db.flush()
    # unflushed events are not in the files, only in the WAL tail
    db.update("posts", sqid(made["p3"]), {"$set": {"late": True}})
    glob = (tmp_path / "archive").as_posix()
    con = duckdb.connect()
    rows = con.execute(
        f"""SELECT ns, id, seq, op, version, actor FROM read_parquet('{glob}/events/**/*.parquet',
            hive_partitioning = true, filename = true, file_row_number = true)
            ORDER BY ns, seq"""
    ).fetchall()
    assert [tuple(r) for r in rows] == sorted(w.events, key=lambda e: (e[0], e[2]))
    for ns in ("posts", "users"):
        seqs = [r[2] for r in rows if r[0] == ns]
        assert seqs == list(range(1, len(seqs) + 1)), f"{ns}: a sequence is missing or twice"
    types = dict(
        (r[0], r[1])
        for r in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet('{glob}/events/**/*.parquet', hive_partitioning = true)"
        ).fetchall()
    )
    assert types["seq"] == "BIGINT" and types["version"] == "BIGINT"
    assert types["ts"] == "TIMESTAMP WITH TIME ZONE"
    assert types["op"] == "VARCHAR" and types["ns"] == "VARCHAR"
    rels = con.execute(
        f"""SELECT ns, from_id, seq, op, predicate, "to" FROM read_parquet('{glob}/rels/**/*.parquet',
            hive_partitioning = true) ORDER BY ns, seq"""
    ).fetchall()
    assert [tuple(r) for r in rels] == w.rels
    # each event's JSON payload and states are there too
    before, after, data = con.execute(
        f"""SELECT before, after, data FROM read_parquet('{glob}/events/**/*.parquet', hive_partitioning = true)
            WHERE ns = 'posts' AND op = 'UPDATE'"""
    ).fetchone()  # type: ignore[misc]
    assert '"views":0' in before and '"views":10' in after and data == '{"$inc":{"views":10}}'
    con.close()


def test_duckdb_views(open_db: Opener) -> None:
    db = open_db()
    w = Workload(db)
    made = w.run()
    db.flush()
    bulk = db.create_many("tags", [{"name": f"t{i}", "rank": i} for i in range(6)])
    # unflushed: an update of a flushed post, a new user, an update of a bulk entity
    db.update("posts", sqid(made["p0"]), {"$set": {"title": "new"}})
    w.ev("posts", sqid(made["p0"]), "UPDATE", 3, None)
    u = db.create("users", {"name": "late"})
    w.ev("users", sqid(u), "CREATE", 1, None)
    db.link(u["$id"], "likes", bulk[0]["$id"])
    w.rel(u["$id"], "LINK", "likes", bulk[0]["$id"])
    con = db.duckdb()
    events = Counter(tuple(r) for r in con.sql("SELECT ns, id, seq, op, version, actor FROM events").fetchall())
    want = Counter(w.events) + Counter(("tags", sqid(t), 0, "CREATE", 1, None) for t in bulk)
    assert events == want
    rels = con.sql('SELECT ns, from_id, seq, op, predicate, "to" FROM rels ORDER BY ns, seq').fetchall()
    assert [tuple(r) for r in rels] == w.rels
    ents = con.sql("SELECT ns, id, version, name, deleted_at IS NOT NULL FROM entities").fetchall()
    keys = [(r[0], r[1]) for r in ents]
    assert len(keys) == len(set(keys)), "entities view: more than one row for an id"
    current = {(r[0], r[1]): (r[2], r[3], r[4]) for r in ents}
    expected: dict[tuple[str, str], tuple[int, str, bool]] = {}
    for ns in ("users", "posts", "tags"):
        for e in db.find(ns, include_deleted=True):
            expected[(ns, sqid(e))] = (e["version"], e["name"], "deletedAt" in e)
    assert current == expected
    assert current[("posts", sqid(made["p0"]))][0] == 3  # the unflushed update
    assert ("users", sqid(u)) in current  # created after the flush
    assert ("users", sqid(made["u2"])) not in current  # hard-deleted
    assert all(("tags", sqid(t)) in current for t in bulk)
    types = dict((r[0], r[1]) for r in con.sql("DESCRIBE events").fetchall())
    assert types["seq"] == "BIGINT" and types["ts"] == "TIMESTAMP WITH TIME ZONE" and types["op"] == "VARCHAR"
    con.close()


# ---------------------------------------------------------------------------- (c) bulk path
def test_create_many_10k_costs_three_rows_and_one_manifest_row(open_db: Opener) -> None:
    db = open_db()
    owner = db.create("users", {"name": "owner"})
    before = manifest_rows(db.engine)
    pending = db.stats()["unflushed_events"]
    items = [{"name": f"item{i:05d}", "rank": i, "even": i % 2 == 0} for i in range(10_000)]
    with meter(db.engine) as m:
        made = db.create_many("items", items, actor="users/bulk")
    written = sum(
        max(r.rows_affected, r.inserted_rows) for r in m.records if r.kind in ("INSERT", "UPDATE", "DELETE", "REPLACE")
    )
    assert written <= 3, [(r.sql, r.rows_affected) for r in m.records]
    if m.faithful:
        assert m.rows_written is not None and m.rows_written <= 3
    added = [r for r in manifest_rows(db.engine) if r not in before]
    # the bulk entities file and its twin holding the 10,000 CREATE events (for history and
    # readers of events/): two manifest rows
    assert sorted(r[0] for r in added) == ["bulk", "bulk_events"] and all(r[5] == 10_000 for r in added)
    assert all("/bulk-" in r[4] for r in added)
    assert db.stats()["unflushed_events"] == pending  # nothing went to the WAL
    assert len(made) == 10_000 and len({e["$id"] for e in made}) == 10_000

    probe = [made[0], made[4_999], made[9_999]]
    for e in probe:
        assert db.get("items", sqid(e)) == e
    db.link(made[42]["$id"], "owner", owner["$id"], reverse="items")
    db.link(owner["$id"], "likes", made[4_999]["$id"])

    def check(d: pq.ParqueDB) -> None:
        for e in probe:
            assert d.get("items", sqid(e)) == e
            assert d.get("items", sqid(e), as_of=1) == e
        hits = d.find("items", {"rank": {"$gte": 9_995}}, sort={"rank": -1})
        assert [h["rank"] for h in hits] == [9_999, 9_998, 9_997, 9_996, 9_995]
        assert hits[0] == made[9_999]
        assert [x["$id"] for x in d.related(made[42]["$id"], "owner")] == [owner["$id"]]
        assert [x["$id"] for x in d.related(owner["$id"], "items", direction="inbound")] == [made[42]["$id"]]
        assert d.related(owner["$id"], "likes") == [made[4_999]]
        hist = d.history(made[42]["$id"])
        assert [(h["op"], h["version"]) for h in hist] == [("CREATE", 1), ("LINK", None)]
        assert hist[0]["actor"] == "users/bulk" and hist[0]["ts"] == made[42]["createdAt"]

    check(db)
    db.close()
    check(open_db())  # cold: a fresh process's view


def test_bulk_file_and_flushed_entities_file_share_a_namespace(open_db: Opener) -> None:
    """Regression: bulk files are keyed by id-number range, flushed files by sequence range;
    a bulk file of ids 1..5 and a flush of sequences 1..1 of the same namespace coexist."""
    db = open_db()
    made = db.create_many("tags", [{"name": f"t{i}"} for i in range(5)])  # ids 1..5
    db.update("tags", sqid(made[0]), {"$set": {"color": "red"}})  # event seq 1
    result = db.flush()
    assert "entity_deltas/ns=tags/000000000001-000000000001.parquet" in result.paths
    assert db.stats()["unflushed_events"] == 0
    db.close()
    again = open_db()
    assert again.get("tags", sqid(made[0]))["color"] == "red"  # type: ignore[index]
    assert again.get("tags", sqid(made[1])) == made[1]


def test_bulk_create_history_data_is_what_the_caller_passed(open_db: Opener) -> None:
    db = open_db()
    one = db.create("tags", {"name": "solo", "rank": 0})
    many = db.create_many("tags", [{"name": f"t{i}", "rank": i} for i in range(5)])
    assert db.history(one["$id"])[0]["data"] == {"name": "solo", "rank": 0}
    assert db.history(many[1]["$id"])[0]["data"] == {"name": "t1", "rank": 1}


# ---------------------------------------------------------------------------- (d) flush policy
def test_manual_mode_never_flushes_by_itself(open_db: Opener, hook: list[tuple[str, str]]) -> None:
    db = open_db(pq.FlushPolicy(mode="manual", min_events=1, max_events=5, max_interval=0.05))
    with db.transaction() as tx:
        for i in range(20):
            tx.create("posts", {"name": f"p{i}"})
    db.create("posts", {"name": "one more"})
    time.sleep(0.4)
    assert hook == [] and manifest_rows(db.engine) == []
    assert db.stats()["unflushed_events"] == 21
    db.close()
    db = open_db(pq.FlushPolicy(mode="manual", min_events=1, max_events=5, max_interval=0.05))
    time.sleep(0.3)  # a manual store does not flush what a previous process left either
    assert hook == [] and manifest_rows(db.engine) == []
    result = db.flush()
    assert result.events == 21 and result.files == 2


def test_inline_flushes_in_the_committing_call_at_max_events(open_db: Opener, hook: list[tuple[str, str]]) -> None:
    db = started(open_db(pq.FlushPolicy(mode="inline", min_events=50, max_events=50, max_interval=60)), hook)
    with db.transaction() as tx:
        for i in range(49):
            tx.create("posts", {"name": f"p{i}"})
    assert hook == [] and db.stats()["unflushed_events"] == 49
    db.create("posts", {"name": "the 50th"})
    # flushed before create() returned, on this thread
    assert ("committed", threading.current_thread().name) in hook
    assert db.stats()["unflushed_events"] == 0
    assert sum(r[5] for r in manifest_rows(db.engine) if r[0] == "events") == 50
    assert db.stats()["last_flush"]["events"] == 50


def test_background_flushes_from_a_worker_thread(open_db: Opener, hook: list[tuple[str, str]]) -> None:
    db = started(open_db(pq.FlushPolicy(mode="background", min_events=50, max_events=50, max_interval=60)), hook)
    with db.transaction() as tx:
        for i in range(50):
            tx.create("posts", {"name": f"p{i}"})
    assert wait_until(lambda: db.stats()["unflushed_events"] == 0 and any(s == "committed" for s, _ in hook))
    threads = {name for step, name in hook if step == "committed"}
    assert threads == {"parquedb-flush"}
    assert sum(r[5] for r in manifest_rows(db.engine) if r[0] == "events") == 50


def test_commits_during_a_background_flush_are_flushed_without_another_commit(
    open_db: Opener, hook: list[tuple[str, str]]
) -> None:
    db = started(open_db(pq.FlushPolicy(mode="background", min_events=10, max_events=10, max_interval=60)), hook)
    entered, release = threading.Event(), threading.Event()

    def hold_first(step: str) -> None:
        hook.append((step, threading.current_thread().name))
        if step == "events_file_written" and not entered.is_set():
            entered.set()
            release.wait(10)  # the first flush has read the WAL and waits here

    flush_module.CRASH_HOOK = hold_first
    db.create_many("posts", [{"n": i} for i in range(4)])  # below BULK_MIN: events in the WAL
    with db.transaction() as tx:
        for i in range(10):
            tx.create("posts", {"n": i})
    assert entered.wait(10)
    with db.transaction() as tx:  # >= max_events again while that flush runs
        for i in range(10):
            tx.create("posts", {"n": i})
    release.set()
    # no further commit: the worker runs once more for what arrived meanwhile
    assert wait_until(lambda: db.stats()["unflushed_events"] == 0, timeout=10)
    assert sum(r[5] for r in manifest_rows(db.engine) if r[0] == "events") == 24


def test_timer_flushes_after_max_interval_at_min_events(open_db: Opener, hook: list[tuple[str, str]]) -> None:
    db = started(open_db(pq.FlushPolicy(mode="inline", min_events=5, max_events=1000, max_interval=0.2)), hook)
    for i in range(4):
        db.create("posts", {"name": f"p{i}"})
    time.sleep(0.4)
    assert hook == [], "flushed below min_events"
    t0 = time.monotonic()
    db.create("posts", {"name": "fifth"})
    assert db.stats()["unflushed_events"] == 5  # not in the committing call
    assert wait_until(lambda: db.stats()["unflushed_events"] == 0, timeout=5)
    assert time.monotonic() - t0 >= 0.15
    assert {name for step, name in hook if step == "committed"} != {threading.current_thread().name}
    assert sum(r[5] for r in manifest_rows(db.engine) if r[0] == "events") == 5


def test_restart_flushes_pending_events_at_start(open_db: Opener, hook: list[tuple[str, str]]) -> None:
    db = open_db(pq.FlushPolicy(mode="manual"))
    w = Workload(db)
    w.run()
    db.close()
    assert manifest_rows(db.engine) == []
    db = open_db(pq.FlushPolicy(mode="inline"))  # defaults: min 100, max 10,000, 60 s
    assert wait_until(lambda: len(manifest_rows(db.engine)) == 5, timeout=10)
    con = db.duckdb()
    assert con.execute("SELECT count(*) FROM events").fetchone() == (len(w.events),)
    con.close()
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT name, value FROM counters WHERE name LIKE '%seq:%'")).all()
    marks: dict[str, int] = {name: value for name, value in rows}
    assert marks == {"seq:posts": 7, "seq:users": 4, "rseq:posts": 3}


def test_flush_result(open_db: Opener, tmp_path: Path) -> None:
    db = open_db()
    empty = db.flush()
    assert (empty.files, empty.events, empty.rel_events, empty.bytes, empty.paths) == (0, 0, 0, 0, [])
    w = Workload(db)
    w.run()
    result = db.flush()
    assert result.files == len(result.paths) == 5
    assert result.events == len(w.events) and result.rel_events == len(w.rels)
    assert result.bytes == sum((tmp_path / "archive" / p).stat().st_size for p in result.paths) > 0
    assert result.seconds > 0 and not result.skipped
    assert result.namespaces == ["posts", "users"]
    assert result.as_dict()["files"] == 5
    again = db.flush()
    assert again.files == 0 and again.events == 0


# ---------------------------------------------------------------------------- (e) compaction
def answers(db: pq.ParqueDB, refs: list[str]) -> list[Any]:
    out: list[Any] = []
    for ref in refs:
        ns, eid = ref.split("/")
        out.append((db.get(ns, eid, include_deleted=True), db.history(ref), db.related(ref), db.get(ns, eid, as_of=1)))
        out.append(db.related(ref, direction="inbound"))
    out.append(db.find("posts", sort={"views": -1}))
    return out


def files_of(tmp_path: Path, kind: str, ns: str) -> list[str]:
    return sorted(p.name for p in (tmp_path / "archive" / kind / f"ns={ns}").glob("*.parquet"))


def test_compaction_merges_files_and_changes_no_answer(open_db: Opener, tmp_path: Path) -> None:
    db = open_db(pq.FlushPolicy(mode="manual", compact_after=3))
    u = db.create("users", {"name": "u"})
    p = db.create("posts", {"name": "p", "views": 0})
    refs = [u["$id"], p["$id"]]
    db.flush()
    for i in range(3):
        db.update("posts", sqid(p), {"$inc": {"views": 1}})
        q = db.create("posts", {"name": f"q{i}", "views": i})
        db.link(q["$id"], "author", u["$id"])
        refs.append(q["$id"])
        if i < 2:
            db.flush()
            assert len(files_of(tmp_path, "events", "posts")) == i + 2
    before = answers(db, refs)
    db.flush()  # the 4th events file of posts: more than compact_after=3
    # tiered: the largest events file (the first of the 2-event ones) stays, the others merge
    assert files_of(tmp_path, "events", "posts") == [
        "000000000002-000000000003.parquet",
        "c-000000000001-000000000007.parquet",
    ]
    assert len(files_of(tmp_path, "entities", "posts")) + len(files_of(tmp_path, "entity_deltas", "posts")) == 1
    assert len(files_of(tmp_path, "rels", "posts")) == 3  # 3 files: not more than compact_after
    assert files_of(tmp_path, "events", "users") == ["000000000001-000000000001.parquet"]
    assert answers(db, refs) == before
    db.close()
    db = open_db(pq.FlushPolicy(mode="manual", compact_after=3))
    assert answers(db, refs) == before
    assert db.compact(1) == 1  # the rels files of posts
    assert len(files_of(tmp_path, "rels", "posts")) == 1
    assert answers(db, refs) == before
    con = db.duckdb()
    assert con.execute("SELECT count(*), count(DISTINCT seq) FROM events WHERE ns = 'posts'").fetchone() == (7, 7)
    con.close()


def test_compact_right_after_a_restart(open_db: Opener, tmp_path: Path) -> None:
    db = open_db()
    for i in range(3):
        db.create("posts", {"name": f"p{i}"})
        db.flush()
    db.close()
    db = open_db()
    assert db.compact(1) == 2  # events and entities of posts
    assert len(files_of(tmp_path, "events", "posts")) == 1


def test_a_flush_elsewhere_during_a_compaction_loses_nothing(open_db: Opener, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db = open_db()
    made = []
    for i in range(3):
        made.append(db.create("posts", {"name": f"p{i}"}))
        db.flush()
    made.append(db.create("posts", {"name": "pending"}))
    before = [db.history(e["$id"]) for e in made]
    other = open_db(url=url)  # another engine: another process's store on the same database and archive

    def interleave(step: str) -> None:
        if step == "compacted_file_written":  # the merged file is written, the manifest not yet swapped
            flush_module.CRASH_HOOK = None
            other.flush()

    flush_module.CRASH_HOOK = interleave
    try:
        db.compact(1)
    finally:
        flush_module.CRASH_HOOK = None
    db.close()
    other.close()
    fresh = open_db()
    assert [fresh.history(e["$id"]) for e in made] == before
    listed = {r[4] for r in manifest_rows(fresh.engine)}
    assert all((tmp_path / "archive" / p).exists() for p in listed)


# ---------------------------------------------------------------------------- (f) bad locations
@pytest.mark.parametrize(
    "rel", ["../escape.parquet", "/etc/passwd", "events/../../x.parquet", "events\\x.parquet", "events/./x", "a//b"]
)
def test_paths_escaping_the_archive_are_refused(tmp_path: Path, rel: str) -> None:
    arch = Archive.open(tmp_path / "archive")
    with pytest.raises(pq.ArchiveError):
        arch.path(rel)
    with pytest.raises(pq.ArchiveError):
        arch.write_table(rel, pa.table({"x": [1]}))
    assert not (tmp_path / "escape.parquet").exists() and not (tmp_path / "x.parquet").exists()


def test_file_names_are_validated(tmp_path: Path) -> None:
    with pytest.raises(pq.ArchiveError):
        Archive.file_name("secrets", "posts", 1, 2)
    with pytest.raises(pq.InvalidNamespaceError):
        Archive.file_name("events", "../posts", 1, 2)
    arch = Archive.open(tmp_path / "archive")
    with pytest.raises(pq.ArchiveError, match="missing"):
        arch.read_table("events/ns=posts/000000000001-000000000002.parquet")
    (tmp_path / "archive" / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(pq.ArchiveError):
        arch.read_table("junk.parquet")


def test_namespaces_that_would_escape_are_refused_before_writing(open_db: Opener, tmp_path: Path) -> None:
    db = open_db()
    for ns in ("../up", "a/b", ".hidden", "ns=x", ""):
        with pytest.raises(pq.InvalidNamespaceError):
            db.create(ns, {"name": "x"})
        with pytest.raises(pq.InvalidNamespaceError):
            db.create_many(ns, [{"name": "x"}] * 5)
    assert db.flush().files == 0
    assert [p for p in (tmp_path / "archive").rglob("*") if p.is_file()] == []


def test_unknown_archive_scheme_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(pq.ConfigurationError):
        pq.ParqueDB(f"sqlite:///{tmp_path / 'a.db'}", archive="nosuchscheme://bucket/x")


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_archive_location_that_is_a_file(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    location = blocker if where == "file" else blocker / "archive"
    with pytest.raises((pq.ConfigurationError, pq.ArchiveError)):
        pq.ParqueDB(f"sqlite:///{tmp_path / 'a.db'}", archive=location)


def test_empty_archive_location_is_refused(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(pq.ConfigurationError):
            pq.ParqueDB(f"sqlite:///{tmp_path / 'a.db'}", archive="").close()
    finally:
        os.chdir(cwd)


def test_flush_and_compact_without_an_archive_are_configuration_errors() -> None:
    db = pq.ParqueDB(dialects.create_engine_for("sqlite://"))
    try:
        db.create("posts", {"name": "x"})
        with pytest.raises(pq.ConfigurationError, match="archive"):
            db.flush()
        with pytest.raises(pq.ConfigurationError):
            db.compact()
        made = db.create_many("posts", [{"name": f"p{i}"} for i in range(5)])  # no bulk file: WAL events
        assert db.stats()["unflushed_events"] == 6 and len(made) == 5
    finally:
        db.close()
