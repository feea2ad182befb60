"""Compaction of a namespace's entity layers (archive/compact.py): deltas, bulk files and
the previous base become ONE base file; events and rels files merge sorted. Nothing any
read answers changes, bulk CREATE events stay in history and in db.duckdb(), a crash at
any step loses and duplicates nothing, and the merge holds no Python object per row.
SQL behaviour on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as ppq
import pytest
from backends import backend_engine, backend_fixtures
from sqlalchemy import Engine, create_engine, text

import parquedb_orm as pq
import parquedb_orm.archive.flush as flush_module
from parquedb_orm.archive import compact, parquet
from parquedb_orm.engine.setup import flushing
from parquedb_orm.sql import manifest

BACKENDS = ["sqlite-file", "postgresql", "mysql"]
MANUAL = pq.FlushPolicy(mode="manual", compact_after=1000)
TESTS_DIR = Path(__file__).resolve().parent
CRASH_CODE = 17


kind, engine = backend_fixtures(BACKENDS)


def run_compaction(db: pq.ParqueDB, threshold: int = 1, **kw: Any) -> list[manifest.Entry]:
    """compact.compact_due as the store's flusher runs it (its lock, its crash hook)."""
    running = flushing(db.runtime)
    assert running is not None
    fl = running.flusher
    with fl._lock:
        return compact.compact_due(
            fl.rt.engine, fl.archive, fl.rt.manifest_changed, threshold, step=flush_module._step, **kw
        )


def sqid(ref: str) -> str:
    return ref.split("/")[1]


def listed(engine: Engine, ns: str) -> Counter[str]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, path FROM archive_manifest WHERE ns = :ns"), {"ns": ns}).all()
    return Counter(k if k != "entities" else ("base" if "/base-" in p else "delta") for k, p in rows)


def workload(db: pq.ParqueDB) -> list[str]:
    """Bulk files, flushed deltas (updates of bulk entities among them), deletes, links,
    and a pending WAL tail."""
    refs: list[str] = []
    for i in range(3):
        made = db.create_many(
            "posts", [{"name": f"b{i}-{j}", "views": j, "tag": "x" if j % 2 else j} for j in range(7)]
        )
        refs += [e["$id"] for e in made]
    solo = db.create("posts", {"name": "solo", "views": 1.5})
    u = db.create("users", {"name": "u"})
    refs += [solo["$id"], u["$id"]]
    db.flush()
    db.update("posts", sqid(refs[0]), {"$set": {"views": 100, "extra": True}})
    db.delete("posts", sqid(refs[1]))
    db.delete("posts", sqid(refs[2]), hard=True)
    db.link(refs[3], "author", u["$id"])
    db.flush()
    db.update("posts", sqid(refs[4]), {"$inc": {"views": 1}})
    db.update("posts", sqid(refs[0]), {"$inc": {"views": 1}})
    db.flush()
    db.update("posts", sqid(refs[5]), {"$set": {"late": "tail"}})  # stays in the WAL tail
    return refs


def answers(db: pq.ParqueDB, refs: list[str]) -> Any:
    out: list[Any] = []
    for ref in refs:
        ns, eid = ref.split("/")
        full = db.get(ns, eid, include_deleted=True)
        out.append((ref, db.get(ns, eid), full, db.history(ref), db.related(ref)))
        if full and full["version"] > 1:
            out.append(db.get(ns, eid, as_of=1, include_deleted=True))
    out.append(db.find("posts", sort={"name": 1}))
    out.append(db.find("posts", {"views": {"$gte": 3}}, sort={"views": -1}, limit=3))
    out.append(db.find("posts", include_deleted=True, sort={"name": -1}))
    out.append(duck(db))
    return out


def duck(db: pq.ParqueDB) -> Any:
    con = db.duckdb()
    try:
        return (
            con.sql(
                "SELECT ns, id, version, type, name, deleted_at IS NULL, state FROM entities ORDER BY ns, id"
            ).fetchall(),
            con.sql("SELECT ns, id, seq, op, version, data, after FROM events ORDER BY ns, id, seq").fetchall(),
            con.sql("SELECT ns, from_id, seq, op FROM rels ORDER BY ns, from_id, seq").fetchall(),
        )
    finally:
        con.close()


def test_compaction_leaves_one_base_and_changes_no_answer(engine: Engine, tmp_path: Path) -> None:
    db = pq.ParqueDB(engine, archive=tmp_path / "archive", policy=MANUAL)
    try:
        refs = workload(db)
        assert listed(engine, "posts") == {"bulk": 3, "bulk_events": 3, "delta": 3, "events": 3, "rels": 1}
        before = answers(db, refs)
        bulk_creates = [r for r in before[-1][1] if r[2] == 0]
        assert len(bulk_creates) == 21 and {r[3] for r in bulk_creates} == {"CREATE"}
        merged = run_compaction(db)
        assert {(e.kind, e.ns) for e in merged} == {("entities", "posts"), ("events", "posts")}  # users: one file
        # the bulk files are folded, so their twins merged into the events file
        assert listed(engine, "posts") == {"base": 1, "events": 1, "rels": 1}
        base = next(e for e in merged if e.kind == "entities")
        assert base.path == "entities/ns=posts/base-000000000001-000000000006.parquet"
        assert base.row_count == 22  # 21 bulk entities + solo, each once (the hard-deleted one too)
        on_disk = sorted(p.name for p in (tmp_path / "archive" / "entities" / "ns=posts").iterdir())
        assert on_disk == [Path(base.path).name]
        assert answers(db, refs) == before
    finally:
        db.close()
    fresh = pq.ParqueDB(create_engine(url_of_engine(engine, tmp_path)), archive=tmp_path / "archive", policy=MANUAL)
    try:
        assert answers(fresh, refs) == before
        fresh.flush()  # the tail: one more delta (its events now carry their after-state)
        flushed = answers(fresh, refs)
        assert sorted(e.kind for e in run_compaction(fresh)) == ["entities", "events"]
        assert answers(fresh, refs) == flushed
    finally:
        fresh.close()
        fresh.engine.dispose()


def url_of_engine(engine: Engine, tmp_path: Path) -> str:
    return engine.url.render_as_string(hide_password=False)


def test_the_base_file_is_sorted_deduplicated_and_typed(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        refs = workload(db)
        db.flush()
        run_compaction(db)
        path = next((tmp_path / "archive" / "entities" / "ns=posts").glob("base-*.parquet"))
        f = ppq.ParquetFile(path)
        assert all(f.metadata.row_group(i).num_rows <= parquet.ENTITY_ROW_GROUP_ROWS for i in range(f.num_row_groups))
        table = f.read()
        keys = list(zip(table.column("number").to_pylist(), table.column("id").to_pylist(), strict=True))
        assert keys == sorted(keys) and len({k[1] for k in keys}) == len(keys)
        fields = parquet.fields_of(f.schema_arrow)
        assert fields is not None
        # name: a string everywhere; views: ints in bulk files, a float in a delta: mixed
        assert fields["name"] == "string" and fields["views"] == "mixed" and fields["tag"] == "mixed"
        assert fields["extra"] == "bool" and fields["late"] == "string"
        assert "f_name" in table.column_names and "f_views" not in table.column_names
        by_id = dict(zip(table.column("id").to_pylist(), table.column("version").to_pylist(), strict=True))
        assert by_id[sqid(refs[0])] == 3 and by_id[sqid(refs[5])] == 2
        extra = dict(zip(table.column("id").to_pylist(), table.column("f_extra").to_pylist(), strict=True))
        assert extra[sqid(refs[0])] is True and extra[sqid(refs[6])] is None
    finally:
        db.close()


def test_bulk_files_without_twins_get_them_at_compaction(tmp_path: Path) -> None:
    """An archive written before bulk_events existed: its bulk files have no twin. db.duckdb()
    derives their CREATEs; compaction writes the twins, so history keeps them."""
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        made = db.create_many("tags", [{"name": f"t{i}"} for i in range(6)])
        db.create_many("tags", [{"name": f"s{i}"} for i in range(6)])
        db.flush()
        with db.engine.begin() as conn:  # the old layout: no twins
            paths = conn.execute(text("SELECT path FROM archive_manifest WHERE kind = 'bulk_events'")).scalars().all()
            conn.execute(text("DELETE FROM archive_manifest WHERE kind = 'bulk_events'"))
        for p in paths:
            (tmp_path / "archive" / p).unlink()
        db.close()
        db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
        before = duck(db)
        assert len([r for r in before[1] if r[2] == 0]) == 12
        merged = run_compaction(db)
        assert [e.kind for e in merged] == ["entities", "events"]  # the twins written, then merged
        assert listed(db.engine, "tags") == {"base": 1, "events": 1}
        assert duck(db) == before
        assert [h["op"] for h in db.history(made[0]["$id"])] == ["CREATE"]
    finally:
        db.close()


def test_delta_rows_bound_triggers_compaction(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        made = db.create_many("posts", [{"name": f"p{i}", "n": i} for i in range(200)])
        db.create("posts", {"name": "x"})
        db.flush()
        run_compaction(db)  # two files: more than threshold 1
        assert listed(db.engine, "posts")["base"] == 1
        bound = compact.DeltaBound(fraction=0.05, min_rows=10)
        # a flush touching 15 entities: one delta, 2 files, fewer than threshold 32 ...
        for e in made[:15]:
            db.update("posts", sqid(e["$id"]), {"$inc": {"n": 1}})
        db.flush()
        with db.engine.connect() as conn:
            assert compact.due(conn, "entities", "posts", 32, bound)  # ... but 15 > max(10, 201 * 0.05)
            assert not compact.due(conn, "entities", "posts", 32, compact.DeltaBound(fraction=0.05, min_rows=100))
        assert [e.kind for e in run_compaction(db, 32, bound=bound)] == ["entities"]
        assert listed(db.engine, "posts")["base"] == 1 and listed(db.engine, "posts")["delta"] == 0
        assert db.get("posts", sqid(made[3]["$id"]))["n"] == 4
    finally:
        db.close()


def test_only_new_bulk_files_since_the_last_base(tmp_path: Path) -> None:
    """The base name is taken by the previous base (no new delta): the new one is named by
    the bulk files too, and never overwrites a listed file."""
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        db.create_many("posts", [{"name": f"a{i}"} for i in range(5)])
        db.create_many("posts", [{"name": f"b{i}"} for i in range(5)])
        first, _events = run_compaction(db)
        assert first.path == "entities/ns=posts/base-000000000000-000000000000.parquet"
        db.create_many("posts", [{"name": f"c{i}"} for i in range(5)])
        second, _events = run_compaction(db)
        assert second.path.startswith("entities/ns=posts/base-000000000000-000000000000-")
        assert second.row_count == 15
        assert len(db.find("posts")) == 15
    finally:
        db.close()


# ---------------------------------------------------------------------------- tiers
def test_a_delta_merge_leaves_the_base_and_changes_no_answer(engine: Engine, tmp_path: Path) -> None:
    db = pq.ParqueDB(engine, archive=tmp_path / "archive", policy=MANUAL)
    try:
        refs = workload(db)
        db.flush()
        run_compaction(db)
        ((base,),) = [[p for k, p in paths(engine, "posts") if "/base-" in p]]
        for i in range(5):  # five deltas: updates of bulk and flushed entities, a create, a delete
            db.update("posts", sqid(refs[3 + i]), {"$set": {"round": i, "name": f"r{i}"}})
            db.update("posts", sqid(refs[20]), {"$inc": {"views": 1}})
            refs.append(db.create("posts", {"name": f"new{i}", "views": i})["$id"])
            db.flush()
        db.delete("posts", sqid(refs[6]))
        db.flush()
        assert listed(engine, "posts") == {"base": 1, "delta": 6, "events": 7, "rels": 1}
        (big,) = [p for k, p in paths(engine, "posts") if k == "events" and "/c-" in p]  # the first pass's
        before = answers(db, refs)
        merged = run_compaction(db, 4)
        assert [e.kind for e in merged] == ["entities", "events"]
        delta = merged[0]
        assert delta.path == f"entity_deltas/ns=posts/d-{delta.first_seq:012d}-{delta.last_seq:012d}.parquet"
        assert [p for k, p in paths(engine, "posts") if "/base-" in p] == [base]  # untouched
        # the events files are tiered alike: the six new ones merged, the largest stayed
        assert merged[1].row_count == 16 and big in [p for _k, p in paths(engine, "posts")]
        assert listed(engine, "posts") == {"base": 1, "delta": 1, "events": 2, "rels": 1}
        assert delta.row_count == 11  # refs[3..7] (one deleted since), refs[20], 5 created: each once
        assert answers(db, refs) == before
        f = ppq.ParquetFile(tmp_path / "archive" / delta.path)
        table = f.read()
        keys = list(zip(table.column("number").to_pylist(), table.column("id").to_pylist(), strict=True))
        assert keys == sorted(keys) and len(set(keys)) == len(keys) == 11
        fields = parquet.fields_of(f.schema_arrow)
        assert fields is not None and fields["round"] == "int" and "f_round" in table.column_names
        # more deltas: the merged delta merges again with them, the base still stands
        db.update("posts", sqid(refs[3]), {"$set": {"round": 9}})
        db.flush()
        db.update("posts", sqid(refs[0]), {"$set": {"round": 8}})
        db.flush()
        again = answers(db, refs)
        assert [e.kind for e in run_compaction(db, 2)] == ["entities", "events"]
        assert [p for k, p in paths(engine, "posts") if "/base-" in p] == [base]
        assert listed(engine, "posts")["delta"] == 1
        assert answers(db, refs) == again
    finally:
        db.close()
    fresh = pq.ParqueDB(create_engine(url_of_engine(engine, tmp_path)), archive=tmp_path / "archive", policy=MANUAL)
    try:
        assert answers(fresh, refs) == again
        # past the delta bound the base is rewritten: one base, no delta
        (rewritten,) = run_compaction(fresh, 2, bound=compact.DeltaBound(min_rows=5))
        assert rewritten.path.startswith("entities/ns=posts/base-") and rewritten.path != base
        assert listed(fresh.engine, "posts") == {"base": 1, "events": 2, "rels": 1}  # 2 events files: not due
        assert answers(fresh, refs) == again
    finally:
        fresh.close()
        fresh.engine.dispose()


def creates_once(db: pq.ParqueDB, made: list[str]) -> None:
    """Each bulk entity's CREATE exactly once: history, as_of and db.duckdb()."""
    for ref in made:
        ops = [h["op"] for h in db.history(ref)]
        assert ops.count("CREATE") == 1 and ops[0] == "CREATE", (ref, ops)
        ns, eid = ref.split("/")
        assert db.get(ns, eid, as_of=1, include_deleted=True)["version"] == 1
    con = db.duckdb()
    try:
        creates = Counter(
            f"{ns}/{eid}" for ns, eid in con.sql("SELECT ns, id FROM events WHERE op = 'CREATE'").fetchall()
        )
    finally:
        con.close()
    assert all(creates[ref] == 1 for ref in made) and max(creates.values()) == 1


def test_bulk_creates_once_in_every_state_of_their_files(engine: Engine, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    db = pq.ParqueDB(engine, archive=archive, policy=MANUAL)
    try:
        made = [e["$id"] for i in range(3) for e in db.create_many("tags", [{"name": f"t{i}-{j}"} for j in range(6)])]
        for ref in made[::4]:
            db.update("tags", sqid(ref), {"$set": {"seen": True}})
        db.flush()
        creates_once(db, made)  # bulk files listed, twins listed

        def one(kind: str, threshold: int = 1) -> manifest.Entry | None:
            running = flushing(db.runtime)
            assert running is not None
            fl = running.flusher
            return compact.compact(fl.rt.engine, fl.archive, fl.rt.manifest_changed, kind, "tags", threshold)

        assert one("entities") is not None
        assert listed(engine, "tags") == {"base": 1, "bulk_events": 3, "events": 1}
        creates_once(db, made)  # bulk files folded, twins listed
        with engine.connect() as conn:
            assert compact.due(conn, "events", "tags", 1)  # 1 events file + 3 mergeable twins
        merged = one("events")
        assert merged is not None and merged.path.startswith("events/ns=tags/c-")
        assert listed(engine, "tags") == {"base": 1, "events": 1}
        creates_once(db, made)  # bulk files folded, twins merged
        # a new bulk file's twin stays while the bulk file is listed, whatever is due
        later = [e["$id"] for e in db.create_many("tags", [{"name": f"u{j}"} for j in range(5)])]
        db.update("tags", sqid(made[1]), {"$set": {"seen": False}})
        db.flush()
        assert one("events", 0) is not None
        assert listed(engine, "tags") == {"base": 1, "bulk": 1, "bulk_events": 1, "events": 1, "delta": 1}
        creates_once(db, made + later)
    finally:
        db.close()
    fresh = pq.ParqueDB(create_engine(url_of_engine(engine, tmp_path)), archive=archive, policy=MANUAL)
    try:
        creates_once(fresh, made + later)
        run_compaction(fresh)
        assert listed(fresh.engine, "tags") == {"base": 1, "events": 1}
        creates_once(fresh, made + later)
        fresh.create("tags", {"name": "after"})
        fresh.flush()
    finally:
        fresh.close()
        fresh.engine.dispose()
    events = folder_rows(archive, "events")
    assert max(events.values()) == 1 and sum(1 for k in events if k[2] == 0) == len(made) + len(later)


def test_the_file_count_stays_bounded(tmp_path: Path) -> None:
    """100 flushes, then 100 create_many calls, a compaction pass after each: the files of
    every kind stay bounded, a flush's small delta never rewrites the base, every answer
    stays right, and a glob reader sees each event once."""
    threshold = 8
    archive = tmp_path / "archive"
    url = f"sqlite:///{tmp_path / 's.db'}"
    db = pq.ParqueDB(url, archive=archive, policy=MANUAL)
    most: Counter[str] = Counter()
    on_disk = 0
    try:
        made = [e["$id"] for e in db.create_many("posts", [{"name": f"p{i}", "n": 0} for i in range(300)])]
        made.append(db.create("posts", {"name": "first", "n": 0})["$id"])
        expect = dict.fromkeys(made, 0)
        db.flush()
        run_compaction(db)  # a base to start from
        bases = {p for _k, p in paths(db.engine, "posts") if "/base-" in p}

        def settle() -> None:
            nonlocal on_disk
            run_compaction(db, threshold)
            now = listed(db.engine, "posts")
            for k, n in now.items():
                most[k] = max(most[k], n)
            most["entity files"] = max(most["entity files"], now["delta"] + now["base"] + now["bulk"])
            most["events folder"] = max(most["events folder"], now["events"] + now["bulk_events"])
            bases.update(p for _k, p in paths(db.engine, "posts") if "/base-" in p)
            on_disk = max(on_disk, *(len(list((archive / f / "ns=posts").iterdir())) for f in ("entities", "events")))

        for i in range(100):  # phase 1: flushes of 3 updates, a create and a link
            for j in range(3):
                ref = made[(7 * i + j) % len(made)]
                db.update("posts", sqid(ref), {"$inc": {"n": 1}})
                expect[ref] += 1
            ref = db.create("posts", {"name": f"c{i}", "n": 0})["$id"]
            expect[ref] = 0
            db.link(ref, "parent", made[i])
            db.flush()
            settle()
        assert len(bases) == 1  # the deltas stayed under the bound: the base was never rewritten
        for i in range(100):  # phase 2: create_many calls, an update of one of them
            batch = [e["$id"] for e in db.create_many("posts", [{"name": f"b{i}-{j}", "n": 0} for j in range(5)])]
            expect.update(dict.fromkeys(batch, 0))
            db.update("posts", sqid(batch[0]), {"$inc": {"n": 2}})
            expect[batch[0]] += 2
            db.flush()
            settle()
        assert most["entity files"] <= threshold and most["rels"] <= threshold
        # twins of listed bulk files stay (at most threshold of them), the others merge
        assert most["events folder"] <= 2 * threshold and most["bulk"] <= threshold
        assert on_disk <= 2 * threshold
    finally:
        db.close()
    fresh = pq.ParqueDB(url, archive=archive, policy=MANUAL)
    try:
        got = {ref: fresh.get("posts", sqid(ref)) for ref in expect}
        assert {ref: s["n"] for ref, s in got.items()} == expect
        assert len(fresh.find("posts", {"n": {"$gte": 1}}, limit=10_000)) == sum(1 for v in expect.values() if v)
        hist = fresh.history(made[0])
        assert [h["op"] for h in hist] == ["CREATE"] + ["UPDATE"] * expect[made[0]]
        assert duck(fresh)[0] and len(duck(fresh)[0]) == len(expect)
        fresh.create("posts", {"name": "last", "n": 0})
        fresh.flush()
    finally:
        fresh.close()
    events = folder_rows(archive, "events")
    assert max(events.values()) == 1
    assert sum(1 for k in events if k[2] == 0) == 300 + 500  # every bulk CREATE once
    # the creates (bulk, single), the updates of both phases, the last create
    assert len(events) == 300 + 500 + (1 + 100) + (300 + 100) + 1


# ---------------------------------------------------------------------------- crashes
#: the extra flushes of the "deltas" scenario: 4 flushes of 2 updates (posts seqs 8..15)
DELTA_FLUSHES, DELTA_UPDATES = 4, 2


def delta_flushes(db: pq.ParqueDB, refs: list[str]) -> None:
    for i in range(DELTA_FLUSHES):
        for ref in refs[7 + 2 * i : 9 + 2 * i]:
            db.update("posts", sqid(ref), {"$inc": {"views": 10}})
        db.flush()


def crash_child(url: str, archive: str, out: str, scenario: str, step: str, nth: str) -> None:
    """In a fresh interpreter: the workload, then a compaction that exits at the nth
    `step`. Scenario "base": one pass rewrites the base, then merges events with the bulk
    twins; "deltas": after a first base, a pass at threshold 3 merges only the deltas,
    then the events files."""
    db = pq.ParqueDB(url, archive=archive, policy=MANUAL)
    refs = workload(db)
    db.flush()
    if scenario == "deltas":
        run_compaction(db)
        delta_flushes(db, refs)
    Path(out).write_text("\n".join(refs))
    seen = Counter[str]()

    def crash(name: str) -> None:
        seen[name] += 1
        if name == step and seen[name] == int(nth):
            os._exit(CRASH_CODE)

    flush_module.CRASH_HOOK = crash
    run_compaction(db, 3 if scenario == "deltas" else 1)
    db.close()
    os._exit(0)  # the step was never reached: the parent fails on the exit code


def folder_rows(archive: Path, folder: str, pattern: str = "*") -> Counter[tuple[Any, ...]]:
    """(ns, id, seq) of every row of the folder's files, read straight from the files."""
    con = duckdb.connect()
    try:
        rows = con.sql(
            f"""SELECT ns, id, seq FROM read_parquet('{archive.as_posix()}/{folder}/**/{pattern}.parquet',
                hive_partitioning = true, union_by_name = true)"""
        ).fetchall()
    finally:
        con.close()
    return Counter(tuple(r) for r in rows)


CRASHES = [
    (scenario, step, nth)
    for scenario in ("base", "deltas")
    for nth in ("1", "2")  # the entities compaction, then the events one
    for step in ("compacted_file_written", "compaction_committed")
]


@pytest.mark.parametrize(("scenario", "step", "nth"), CRASHES)
def test_a_crash_during_compaction_loses_and_duplicates_nothing(
    kind: str, tmp_path: Path, scenario: str, step: str, nth: str
) -> None:
    with backend_engine(kind, tmp_path) as engine:
        url = engine.url.render_as_string(hide_password=False)
        archive, out = tmp_path / "archive", tmp_path / "refs.txt"
        code = (
            f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); "
            "from test_compaction_layers import crash_child; crash_child(*sys.argv[1:])"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, url, str(archive), str(out), scenario, step, nth],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == CRASH_CODE, proc.stderr[-3000:]
        refs = out.read_text().split("\n")
        last = 7 + (DELTA_FLUSHES * DELTA_UPDATES if scenario == "deltas" else 0)  # posts' last flushed seq
        db = pq.ParqueDB(url, archive=archive, policy=MANUAL)
        try:
            base_before = [p for k, p in paths(db.engine, "posts") if k == "entities" and "/base-" in p]
            # every committed event once: 21 bulk CREATEs (seq 0) and posts 1..last, users 1
            ents, ev, _rels = duck(db)
            assert Counter((r[0], r[2]) for r in ev) == Counter(
                {("posts", 0): 21, **{("posts", s): 1 for s in range(1, last + 1)}, ("users", 1): 1}
            )
            assert len(ents) == 21 + 2 - 1  # the hard-deleted one is gone
            before = answers(db, refs)
            run_compaction(db, 3 if scenario == "deltas" else 1)  # finish (or redo) the interrupted pass
            assert answers(db, refs) == before
            if scenario == "deltas":  # a delta merge never touches the base
                assert [p for k, p in paths(db.engine, "posts") if k == "entities" and "/base-" in p] == base_before
                assert listed(db.engine, "posts")["delta"] == 1
            db.create("posts", {"name": "after"})
            db.flush()  # its sweep takes what the crash left: a glob reader sees each row once
            events = folder_rows(archive, "events")
            assert max(events.values()) == 1
            assert sum(n for (ns, _i, seq), n in events.items() if ns == "posts" and seq == 0) == 21
            assert sorted(seq for ns, _i, seq in events if ns == "posts" and seq) == list(range(1, last + 2))
            assert max(folder_rows(archive, "entities").values()) == 1
            run_compaction(db)  # a base rewrite; its commit sweeps too
            assert answers(db, refs)[:-4] == before[:-4]  # the finds and views now hold "after" too
            assert listed(db.engine, "posts") == {"base": 1, "events": 1, "rels": 1}
        finally:
            db.close()
        # a reader globbing the folders sees each row once
        events = folder_rows(archive, "events")
        assert max(events.values()) == 1
        assert sum(n for (ns, _i, seq), n in events.items() if ns == "posts" and seq == 0) == 21
        assert sorted(seq for ns, _i, seq in events if ns == "posts" and seq) == list(range(1, last + 2))
        entities = folder_rows(archive, "entities")
        assert sorted(p.name[:5] for p in (archive / "entities" / "ns=posts").iterdir()) == ["base-"]
        assert max(entities.values()) == 1 and len([k for k in entities if k[0] == "posts"]) == 23


def paths(engine: Engine, ns: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT kind, path FROM archive_manifest WHERE ns = :ns ORDER BY kind, path"), {"ns": ns}
        ).all()
    return [(k, p) for k, p in rows]


# ---------------------------------------------------------------------------- memory
def test_compaction_of_200k_entities_holds_no_python_object_per_row(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        for chunk in range(20):
            db.create_many("big", [{"name": f"n{chunk}-{i}", "v": i, "s": "x" * 20} for i in range(10_000)])
        db.create("big", {"name": "delta"})
        db.flush()
        tracemalloc.start()
        try:
            merged = run_compaction(db, 1)
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert [e.row_count for e in merged if e.kind == "entities"] == [200_001]
        # a Python object per row would be >= 200k x ~100 bytes = 20 MB; the merge stays far below
        assert peak < 8 * 2**20, peak
    finally:
        db.close()


def timeless(value: Any) -> Any:
    """`value` with every timestamp (two runs differ only in them) replaced by "T"."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [timeless(v) for v in value]
    if isinstance(value, datetime.datetime) or (isinstance(value, int) and value > 10**15):
        return "T"
    if isinstance(value, str):
        return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+(\+00:00|Z)?", "T", value)
    return value


def test_a_merge_in_many_key_ranges_writes_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compaction sorts and deduplicates one key range at a time (compact._windows, bounded
    memory); cut into one range per row group, it writes exactly what one range writes."""
    out: dict[int, list[Any]] = {}
    ranges: dict[int, list[int]] = {}
    real = compact._windows
    default = compact.WINDOW_ROWS
    for window in (default, 1):
        monkeypatch.setattr(compact, "WINDOW_ROWS", window)
        seen = ranges[window] = []
        monkeypatch.setattr(compact, "_windows", lambda *a, _s=seen: _s.append(len(r := real(*a))) or r)
        root = tmp_path / str(window)
        root.mkdir()
        db = pq.ParqueDB(f"sqlite:///{root / 's.db'}", archive=root / "archive", policy=MANUAL)
        try:
            refs = workload(db)
            db.flush()
            merged = run_compaction(db)
            assert {e.kind for e in merged} >= {"entities", "events"}
            files = sorted(root / "archive" / e.path for e in merged)
            out[window] = timeless([ppq.read_table(p).to_pylist() for p in files] + [answers(db, refs)])
        finally:
            db.close()
    assert set(ranges[default]) == {1} and max(ranges[1]) >= 4  # the posts entities: 3 bulk files + deltas
    assert out[1] == out[default]
