"""A process killed at any step of a flush (or a compaction) loses and duplicates nothing.

For every step `parquedb_orm.flush` announces through `CRASH_HOOK`, a child process
(`python -c`, so nothing of the parent's caches is shared) commits one known workload
across three namespaces -- creates, a `create_many` bulk file, operator updates, soft and
hard deletes, a restore, links and unlinks, a multi-namespace transaction, part of it
flushed earlier -- writes what it committed to a JSON file, and calls `flush()` with a
hook that `os._exit(17)`s at that step. The parent then checks the exit code, opens a
fresh `ParqueDB` on the same database and archive, and proves:

- every committed event is in the archive or the WAL tail exactly once (the multiset of
  (ns, id, seq, op) of DuckDB's `events` and `rels` views equals the committed one, both
  right after the crash and after the recovery flush), and after the recovery flush the
  manifest-listed files alone hold all of them and the WAL tail is empty;
- `get` / `get(as_of=v)` / `find` / `history` / `related` (both directions) answer exactly
  what the child read before its flush;
- after more commits and another flush, the answers equal those of a reference run of
  the same workload without a crash (timestamps aside: they differ between runs).

The same for a crash in the middle of a compaction. SQLite file, PostgreSQL, MariaDB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from backends import MY_ADMIN, PG_ADMIN, reset_schema, servers_required
from sqlalchemy import create_engine, text

import parquedb_orm as pq
from parquedb_orm.sql import wal

pytestmark = pytest.mark.slow

FLUSH_STEPS = (
    "wal_read",
    "events_file_written",
    "files_written",
    "manifest_added",
    "snapshots_written",
    "wal_retired",
    "committed",
)
COMPACTION_STEPS = ("compacted_file_written", "compaction_committed")
BACKENDS = ("sqlite-file", "postgresql", "mysql")
CRASH_CODE = 17
TESTS_DIR = Path(__file__).resolve().parent
TIME_KEYS = frozenset({"createdAt", "updatedAt", "deletedAt", "ts"})

Json = Any


# ---------------------------------------------------------------------------- databases
def _server_url(kind: str) -> str:
    """A database of this module's own on the server, so suites running alongside (which
    reset the shared `pqtest` schema) cannot pull tables from under a crash scenario."""
    admin = PG_ADMIN if kind == "postgresql" else MY_ADMIN
    name = "pqcrash" + os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        eng = create_engine(admin, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            if kind == "postgresql":
                if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname=:n"), {"n": name}).first():
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
            else:
                conn.execute(text(f"CREATE DATABASE IF NOT EXISTS `{name}`"))
        eng.dispose()
    except Exception as exc:  # any connection failure means "unreachable"
        msg = f"{kind} unreachable: {exc}"
        if servers_required():
            pytest.fail(msg + " (servers are required under CI)")
        pytest.skip(msg)
    return admin.rsplit("/", 1)[0] + "/" + name


def fresh_url(kind: str, where: Path) -> str:
    """A URL of an empty store database (our tables dropped)."""
    if kind == "sqlite-file":
        return f"sqlite:///{where / 'store.db'}"
    url = _server_url(kind)
    engine = create_engine(url)
    try:
        reset_schema(engine)
    finally:
        engine.dispose()
    return url


# ---------------------------------------------------------------------------- answers
def jsonable(value: Any) -> Json:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def sqid(ref: str) -> str:
    return ref.split("/")[1]


def ns_of(ref: str) -> str:
    return ref.split("/")[0]


def answers(db: pq.ParqueDB, refs: list[str]) -> Json:
    """Everything a reader can ask about the workload's entities, as JSON."""
    out: dict[str, Any] = {}
    for ref in sorted(refs):
        ns, eid = ns_of(ref), sqid(ref)
        full = db.get(ns, eid, include_deleted=True)
        version = full["version"] if full else 0
        out[ref] = {
            "get": db.get(ns, eid),
            "get_deleted": full,
            # the version before the latest: replayed from archive + WAL, not served from cache
            "as_of": db.get(ns, eid, as_of=version - 1, include_deleted=True) if version > 1 else None,
            "history": db.history(ref),
            "out": db.related(ref),
            "out_deleted": db.related(ref, include_deleted=True),
            "in": db.related(ref, direction="inbound"),
            "links_out": db.links(ref),
        }
    for ns in sorted({ns_of(r) for r in refs}):
        out[f"find:{ns}"] = db.find(ns, {"name": {"$exists": True}}, sort={"name": 1})
        out[f"find_deleted:{ns}"] = [e["$id"] for e in db.find(ns, include_deleted=True, sort={"name": -1})]
    return jsonable(out)


def untimed(value: Json) -> Json:
    """`value` without timestamps, history lists in a canonical order: what two runs of
    the same workload at different times must agree on."""
    if isinstance(value, dict):
        if set(value) == {"$dt"}:
            return "<time>"
        return {k: untimed(v) for k, v in value.items() if k not in TIME_KEYS}
    if isinstance(value, list):
        items = [untimed(v) for v in value]
        if items and all(isinstance(i, dict) and "op" in i and "seq" in i for i in items):
            items.sort(key=lambda i: json.dumps(i, sort_keys=True))
        return items
    return value


# ---------------------------------------------------------------------------- workload
class Recorder:
    """Runs the workload on a ParqueDB and keeps, independently of the store, the
    (ns, id, seq, op) of every event it commits: sequences count per namespace from 1,
    one per event, in commit order; relationship events have their own per-namespace
    sequence (filed under the source's namespace); bulk creates carry seq 0."""

    def __init__(self, db: pq.ParqueDB, state: dict[str, Any] | None = None) -> None:
        self.db = db
        st = state or {}
        self.events: list[list[Any]] = st.get("events", [])
        self.rels: list[list[Any]] = st.get("rels", [])
        self.seq: dict[str, int] = st.get("seq", {})
        self.rseq: dict[str, int] = st.get("rseq", {})
        self.refs: dict[str, str] = st.get("refs", {})

    def state(self) -> dict[str, Any]:
        return {"events": self.events, "rels": self.rels, "seq": self.seq, "rseq": self.rseq, "refs": self.refs}

    def _ev(self, ns: str, eid: str, op: str) -> None:
        self.seq[ns] = self.seq.get(ns, 0) + 1
        self.events.append([ns, eid, self.seq[ns], op])

    def _rel(self, from_ref: str, op: str) -> None:
        ns = ns_of(from_ref)
        self.rseq[ns] = self.rseq.get(ns, 0) + 1
        self.rels.append([ns, sqid(from_ref), self.rseq[ns], op])

    def create(self, name: str, ns: str, data: dict[str, Any]) -> None:
        e = self.db.create(ns, {"name": name, **data}, actor="users/root")
        self.refs[name] = e["$id"]
        self._ev(ns, sqid(e["$id"]), "CREATE")

    def create_many(self, names: list[str], ns: str) -> None:
        made = self.db.create_many(ns, [{"name": n, "rank": i} for i, n in enumerate(names)])
        for name, e in zip(names, made, strict=True):
            self.refs[name] = e["$id"]
            self.events.append([ns, sqid(e["$id"]), 0, "CREATE"])

    def update(self, name: str, doc: dict[str, Any]) -> None:
        ref = self.refs[name]
        self.db.update(ns_of(ref), sqid(ref), doc, actor="users/ed")
        self._ev(ns_of(ref), sqid(ref), "UPDATE")

    def delete(self, name: str, hard: bool = False) -> None:
        ref = self.refs[name]
        assert self.db.delete(ns_of(ref), sqid(ref), hard=hard) is True
        self._ev(ns_of(ref), sqid(ref), "DELETE")

    def restore(self, name: str) -> None:
        ref = self.refs[name]
        self.db.restore(ns_of(ref), sqid(ref))
        self._ev(ns_of(ref), sqid(ref), "RESTORE")

    def link(self, a: str, pred: str, b: str, reverse: str | None = None) -> None:
        self.db.link(self.refs[a], pred, self.refs[b], reverse=reverse, data={"w": len(self.rels)})
        self._rel(self.refs[a], "LINK")

    def unlink(self, a: str, pred: str, b: str) -> None:
        self.db.unlink(self.refs[a], pred, self.refs[b])
        self._rel(self.refs[a], "UNLINK")


def phase_flushed_earlier(r: Recorder) -> None:
    for i in range(3):
        r.create(f"u{i}", "users", {"age": 20 + i})
    for i in range(4):
        r.create(f"p{i}", "posts", {"views": i, "tags": ["a"]})
    r.create("c0", "comments", {"text": "first"})
    r.create("c1", "comments", {"text": "second"})
    # a plain create first: the bulk block then starts above the namespace's first id block
    r.create("t-first", "tags", {"rank": -1})
    r.create_many([f"t{i}" for i in range(6)], "tags")
    r.link("p0", "author", "u0", reverse="posts")
    r.link("p1", "author", "u1", reverse="posts")
    r.link("c0", "on", "p0")
    r.update("p0", {"$set": {"title": "T0"}})
    r.db.flush()


def phase_pending(r: Recorder) -> None:
    r.update("p0", {"$inc": {"views": 5}, "$push": {"tags": {"$each": ["b", "c"]}}})
    r.update("u1", {"$set": {"age": 99, "nick": "bo"}, "$unset": {"missing": ""}})
    r.update("t0", {"$set": {"color": "red"}})  # an entity of the bulk file
    r.delete("u2")
    r.delete("p3")
    r.restore("p3")
    r.delete("c1", hard=True)
    r.create("u3", "users", {"age": 31})
    r.create("p4", "posts", {"views": 0, "tags": []})
    r.link("p4", "author", "u3", reverse="posts")
    r.link("p1", "tagged", "t1")
    r.unlink("p0", "author", "u0")
    r.link("c0", "by", "u1")
    # one commit over three namespaces
    with r.db.transaction() as tx:
        e = tx.create("comments", {"name": "c2", "text": "tx"}, actor="users/root")
        tx.update("posts", sqid(r.refs["p2"]), {"$addToSet": {"tags": "z"}, "$max": {"views": 50}})
        tx.link(e["$id"], "on", r.refs["p2"])
    r.refs["c2"] = e["$id"]
    r._ev("comments", sqid(e["$id"]), "CREATE")
    r._ev("posts", sqid(r.refs["p2"]), "UPDATE")
    r._rel(e["$id"], "LINK")


def phase_more(r: Recorder, tag: str) -> None:
    """Commits after the crash (parent) or between flushes (compaction scenario)."""
    r.update("p1", {"$inc": {"views": 2}})
    r.create(f"c-{tag}", "comments", {"text": tag})
    r.link(f"c-{tag}", "on", "p1")
    r.update("t1", {"$mul": {"rank": 10}})


# ---------------------------------------------------------------------------- the child
def child(url: str, archive: str, out: str, step: str, scenario: str) -> None:
    """Run in a fresh interpreter: commit the workload, record it, crash at `step`."""
    import parquedb_orm.archive.flush as flush_module

    db = pq.ParqueDB(url, archive=archive, policy=pq.FlushPolicy(mode="manual"))
    r = Recorder(db)
    phase_flushed_earlier(r)
    phase_pending(r)
    if scenario == "compact":
        db.flush()
        phase_more(r, "between")
        db.flush()
    state = r.state()
    state["answers"] = answers(db, list(r.refs.values()))
    Path(out).write_text(json.dumps(state))

    def crash(name: str) -> None:
        if name == step:
            os._exit(CRASH_CODE)

    flush_module.CRASH_HOOK = crash
    if scenario == "compact":
        db.compact(1)
    else:
        db.flush()
    db.close()


def run_child(url: str, archive: Path, out: Path, step: str, scenario: str) -> int:
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); from test_flush_crash import child; child(*sys.argv[1:])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, url, str(archive), str(out), step, scenario],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS_DIR.parent,
    )
    assert proc.returncode in (0, CRASH_CODE), f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc.returncode


# ---------------------------------------------------------------------------- checks
def archived_multisets(db: pq.ParqueDB) -> tuple[Counter[tuple[Any, ...]], Counter[tuple[Any, ...]]]:
    con = db.duckdb()
    try:
        ev = Counter(tuple(r) for r in con.sql("SELECT ns, id, seq, op FROM events").fetchall())
        rel = Counter(tuple(r) for r in con.sql("SELECT ns, from_id, seq, op FROM rels").fetchall())
    finally:
        con.close()
    return ev, rel


def manifest_only_multisets(db: pq.ParqueDB) -> tuple[Counter[tuple[Any, ...]], Counter[tuple[Any, ...]]]:
    """The events of the files the manifest lists, read by DuckDB from the files themselves."""
    import duckdb

    arch = db.runtime.archive
    assert arch is not None and arch.local
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, ns, path FROM archive_manifest")).all()
    con = duckdb.connect()
    ev: Counter[tuple[Any, ...]] = Counter()
    rel: Counter[tuple[Any, ...]] = Counter()
    try:
        twins = {path for kind, _ns, path in rows if kind == "bulk_events"}
        for kind, ns, path in rows:
            full = f"{arch.root}/{path}"
            if kind in ("events", "bulk_events"):
                q = "SELECT id, seq, CAST(op AS VARCHAR) FROM read_parquet(?)"
                ev.update((ns, *r) for r in con.execute(q, [full]).fetchall())
            elif kind == "rels":
                q = "SELECT from_id, seq, CAST(op AS VARCHAR) FROM read_parquet(?)"
                rel.update((ns, *r) for r in con.execute(q, [full]).fetchall())
            elif kind == "bulk" and path.replace("entities/", "events/", 1) not in twins:  # archives before bulk_events
                ids = con.execute("SELECT id FROM read_parquet(?)", [full]).fetchall()
                ev.update((ns, r[0], 0, "CREATE") for r in ids)
    finally:
        con.close()
    return ev, rel


def wal_tail_size(db: pq.ParqueDB) -> int:
    with db.engine.connect() as conn:
        names = [n.split(":", 1)[1] for n in conn.execute(text("SELECT name FROM counters")).scalars() if ":" in n]
        return sum(
            len(recs)
            for ns in set(names)
            for table, mark in ((wal.EVENTS, "seq"), (wal.RELS, "rseq"))
            for _f, _l, recs in wal.read_unflushed(conn, table, ns, f"{mark}:{ns}")
        )


def assert_exactly_once(db: pq.ParqueDB, state: dict[str, Any], *, flushed: bool) -> None:
    want_ev = Counter(tuple(e) for e in state["events"])
    want_rel = Counter(tuple(e) for e in state["rels"])
    assert max(want_ev.values()) == 1 and max(want_rel.values()) == 1
    ev, rel = archived_multisets(db)
    assert_same_multiset(ev, want_ev, "events view")
    assert_same_multiset(rel, want_rel, "rels view")
    if flushed:
        assert wal_tail_size(db) == 0, "a flush left committed events in the WAL tail"
        ev, rel = manifest_only_multisets(db)
        assert_same_multiset(ev, want_ev, "archive files (manifest)")
        assert_same_multiset(rel, want_rel, "archive rel files (manifest)")


def files_per_kind(db: pq.ParqueDB) -> Counter[tuple[str, str]]:
    """Manifest-listed files per (kind, ns), bulk files aside."""
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, ns, path FROM archive_manifest")).all()
    return Counter((kind, ns) for kind, ns, path in rows if "/bulk-" not in path)


def assert_same_multiset(got: Counter[tuple[Any, ...]], want: Counter[tuple[Any, ...]], what: str) -> None:
    dup = sorted(k for k, n in got.items() if n > 1)
    missing = sorted(want - got)
    extra = sorted(got - want)
    assert not dup and not missing and not extra, f"{what}: duplicated {dup}, missing {missing}, unexpected {extra}"


def manual(url: str, archive: Path) -> pq.ParqueDB:
    return pq.ParqueDB(url, archive=archive, policy=pq.FlushPolicy(mode="manual"))


#: crash steps after which the archive holds files the manifest does not list (orphans):
#: written under their hidden pending names, so no reader globbing the folders sees them
ORPHANING_STEPS = frozenset(
    {"events_file_written", "files_written", "manifest_added", "snapshots_written", "wal_retired", COMPACTION_STEPS[0]}
)


def pending_files(archive: Path) -> set[str]:
    return {p.relative_to(archive).as_posix() for p in archive.rglob(".*.pending")}


def unlisted_files(db: pq.ParqueDB, archive: Path) -> set[str]:
    with db.engine.connect() as conn:
        listed = set(conn.execute(text("SELECT path FROM archive_manifest")).scalars())
    on_disk = {p.relative_to(archive).as_posix() for p in archive.rglob("*.parquet")}
    assert listed <= on_disk, f"the manifest lists missing files: {sorted(listed - on_disk)}"
    # a base's scan file (archive/compact.py) is listed with its base
    scans = {f"_scan/{p.split('/', 1)[1]}" for p in listed if p.startswith("entities/") and "/base-" in p}
    assert scans <= on_disk, f"bases without their scan file: {sorted(scans - on_disk)}"
    return on_disk - listed - scans


def recover(url: str, archive: Path, state: dict[str, Any], scenario: str, step: str) -> Json:
    """The parent's side: check a crashed (or not) child's store; returns the final answers."""
    refs = list(state["refs"].values())
    db = manual(url, archive)
    try:
        # the crash left the store where the step says (else this test would test nothing);
        # after the open, a reader globbing the folders sees exactly the listed files (what
        # a commit listed is published, what it unlisted is gone) and the orphans are hidden
        assert not unlisted_files(db, archive)
        assert bool(pending_files(archive)) == (step in ORPHANING_STEPS)
        assert_exactly_once(db, state, flushed=False)
        assert answers(db, refs) == state["answers"], "answers changed across the crash"
        if scenario == "compact":
            db.compact(1)  # finish (or redo) the interrupted compaction
            assert max(files_per_kind(db).values()) == 1, files_per_kind(db)
            assert answers(db, refs) == state["answers"], "answers changed across the compaction"
        result = db.flush()
        assert not result.skipped
        assert_exactly_once(db, state, flushed=True)
        assert answers(db, refs) == state["answers"], "answers changed across the recovery"
        # life goes on: more commits (sequences continue, no id is reused) and a flush
        r = Recorder(db, state)
        phase_more(r, "after")
        db.flush()
    finally:
        db.close()
    db = manual(url, archive)  # every cache cold
    try:
        assert_exactly_once(db, r.state(), flushed=True)
        return answers(db, list(r.refs.values()))
    finally:
        db.close()


def scenario_run(kind: str, where: Path, step: str, scenario: str) -> tuple[int, Json]:
    where.mkdir(parents=True, exist_ok=True)
    url = fresh_url(kind, where)
    archive = where / "archive"
    out = where / "committed.json"
    code = run_child(url, archive, out, step, scenario)
    state = json.loads(out.read_text())
    return code, recover(url, archive, state, scenario, step)


# ---------------------------------------------------------------------------- tests
@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    kind: str = request.param
    if kind != "sqlite-file":
        _server_url(kind)  # skip (or fail under CI) early when the server is down
    yield kind
    if kind != "sqlite-file":
        fresh_url(kind, tmp_path_factory.getbasetemp())  # leave no tables behind on the server


_REFERENCE: dict[str, Json] = {}


def reference_answers(tmp: Path, scenario: str) -> Json:
    """Final answers of the workload run without a crash (on SQLite, once per session:
    ids and contents do not depend on the backend, so every backend must match it)."""
    if scenario not in _REFERENCE:
        code, final = scenario_run("sqlite-file", tmp / f"reference-{scenario}", "never", scenario)
        assert code == 0
        _REFERENCE[scenario] = untimed(final)
    return _REFERENCE[scenario]


@pytest.mark.parametrize("step", FLUSH_STEPS)
def test_crash_during_flush(backend: str, step: str, tmp_path: Path) -> None:
    expected = reference_answers(tmp_path, "flush")
    code, final = scenario_run(backend, tmp_path / "crash", step, "flush")
    assert code == CRASH_CODE, f"the flush never reached step {step!r}"
    assert untimed(final) == expected


@pytest.mark.parametrize("step", COMPACTION_STEPS)
def test_crash_during_compaction(backend: str, step: str, tmp_path: Path) -> None:
    expected = reference_answers(tmp_path, "compact")
    code, final = scenario_run(backend, tmp_path / "crash", step, "compact")
    assert code == CRASH_CODE, f"the compaction never reached step {step!r}"
    assert untimed(final) == expected


def test_reference_run_is_consistent(tmp_path: Path) -> None:
    """The workload without any crash hook, in this process, on SQLite: the checks hold."""
    url = fresh_url("sqlite-file", tmp_path)
    db = manual(url, tmp_path / "archive")
    try:
        r = Recorder(db)
        phase_flushed_earlier(r)
        phase_pending(r)
        before = answers(db, list(r.refs.values()))
        assert_exactly_once(db, r.state(), flushed=False)
        db.flush()
        assert_exactly_once(db, r.state(), flushed=True)
        assert answers(db, list(r.refs.values())) == before
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT name, value FROM counters WHERE name LIKE '%seq:%'")).all()
        marks: dict[str, int] = {name: value for name, value in rows}
        assert marks == {
            **{f"seq:{ns}": n for ns, n in r.seq.items()},
            **{f"rseq:{ns}": n for ns, n in r.rseq.items()},
        }
    finally:
        db.close()


@pytest.mark.parametrize(("step", "scenario"), [("files_written", "flush"), ("compaction_committed", "compact")])
def test_archive_read_directly_after_a_crash_has_no_duplicates(tmp_path: Path, step: str, scenario: str) -> None:
    import duckdb

    if scenario == "compact":
        code, _final = scenario_run("sqlite-file", tmp_path, step, scenario)
    else:
        url = fresh_url("sqlite-file", tmp_path)
        code = run_child(url, tmp_path / "archive", tmp_path / "committed.json", step, scenario)
        db = manual(url, tmp_path / "archive")
        try:
            # one more commit before the recovery flush: its files cover a longer range
            Recorder(db, json.loads((tmp_path / "committed.json").read_text())).update("p0", {"$inc": {"views": 1}})
            db.flush()
        finally:
            db.close()
    assert code == CRASH_CODE
    con = duckdb.connect()
    try:
        dup = con.execute(
            # bulk CREATEs all have seq 0: an event is (ns, seq, id)
            f"""SELECT ns, seq, id, count(*)
                FROM read_parquet('{(tmp_path / "archive").as_posix()}/events/**/*.parquet', hive_partitioning = true)
                GROUP BY ns, seq, id HAVING count(*) > 1"""
        ).fetchall()
    finally:
        con.close()
    assert dup == []
