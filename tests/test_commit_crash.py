"""A process killed in the middle of a commit or a create_many loses no committed event and
duplicates none, also for a reader that globs the archive's Parquet files directly.

A child process commits a workload, records what is committed, then starts one more write
and is killed (`os._exit`) at a chosen instant: just before the database COMMIT (the
write must vanish) or just after it, before the process folds the commit into its caches
or publishes a create_many file (the write must be there, once). The parent opens the
store anew and checks every entity, every history, and, after a flush, the events
DuckDB reads from `events/**/*.parquet` (each committed event exactly once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from backends import reset_schema, server_url
from sqlalchemy import create_engine, event

import parquedb_orm as pq
from parquedb_orm.archive import compact

TESTS_DIR = Path(__file__).resolve().parent
CRASH_CODE = 17
#: (scenario, instant): before = at the COMMIT statement, after = once it returned
CASES = [
    ("update", "before"),
    ("update", "after"),
    ("transaction", "before"),
    ("transaction", "after"),
    ("create_many", "before"),
    ("create_many", "after"),
    ("link", "before"),
    ("link", "after"),
]


def _open(url: str, archive: str) -> pq.ParqueDB:
    return pq.ParqueDB(url, archive=archive, policy=pq.FlushPolicy(mode="manual"))


def child(url: str, archive: str, out: str, scenario: str, instant: str) -> None:
    """Run in a fresh interpreter: commit a workload, record it, die during one more write."""
    from parquedb_orm.archive.files import Archive
    from parquedb_orm.engine.commit import Committer

    db = _open(url, archive)
    ids = [db.create("items", {"n": i})["$id"].split("/")[1] for i in range(4)]
    db.flush()
    db.update("items", ids[0], {"$inc": {"n": 100}})  # unflushed, committed
    db.link(f"items/{ids[0]}", "refs", f"items/{ids[1]}")
    committed = {"ids": ids, "states": {e: db.get("items", e) for e in ids}}
    Path(out).write_text(json.dumps(committed, default=str))

    def die(*_a: Any, **_k: Any) -> None:
        os._exit(CRASH_CODE)

    if instant == "before":
        event.listen(db.engine, "commit", die)  # the COMMIT has not reached the database
    elif scenario == "create_many":
        Archive.publish_pending = die  # type: ignore[method-assign]  # committed, file still pending
    else:
        Committer.finish = die  # type: ignore[method-assign]  # committed, caches not told
    if scenario == "update":
        db.update("items", ids[2], {"$set": {"late": True}})
    elif scenario == "transaction":
        with db.transaction() as tx:
            tx.update("items", ids[1], {"$inc": {"n": 5}})
            tx.create("items", {"n": 99, "tx": True})
            tx.delete("items", ids[3])
    elif scenario == "create_many":
        db.create_many("items", [{"n": 1000 + i, "bulk": True} for i in range(20)])
    elif scenario == "link":
        db.link(f"items/{ids[2]}", "refs", f"items/{ids[3]}")
    raise SystemExit("the write finished: the crash point was never reached")


def _run_child(url: str, archive: Path, out: Path, scenario: str, instant: str) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); from test_commit_crash import child; child(*sys.argv[1:])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, url, str(archive), str(out), scenario, instant],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS_DIR.parent,
    )
    assert proc.returncode == CRASH_CODE, (
        f"child did not die at the crash point ({proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def _glob_events(archive: Path) -> list[tuple[str, str, int, str]]:
    import duckdb

    con = duckdb.connect()
    try:
        pattern = (archive / "events" / "**" / "*.parquet").as_posix()
        return [
            tuple(r)
            for r in con.sql(
                f"SELECT ns, id, seq, op FROM read_parquet('{pattern}', hive_partitioning=true)"
            ).fetchall()
        ]  # type: ignore[misc]
    finally:
        con.close()


@pytest.fixture(params=["sqlite-file", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite-file":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    url = server_url("postgresql")
    engine = create_engine(url)
    reset_schema(engine)
    engine.dispose()
    yield url
    engine = create_engine(url)
    reset_schema(engine)
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "instant"), CASES, ids=[f"{s}-{i}" for s, i in CASES])
def test_a_crash_mid_commit_loses_and_duplicates_nothing(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, instant: str
) -> None:
    archive, out = tmp_path / "archive", tmp_path / "committed.json"
    _run_child(url, archive, out, scenario, instant)
    before = json.loads(out.read_text())
    ids: list[str] = before["ids"]
    landed = instant == "after"

    db = _open(url, str(archive))
    try:
        states = {e: db.get("items", e) for e in ids}
        # what committed before the crash is intact
        assert states[ids[0]] is not None and states[ids[0]]["n"] == 100 and states[ids[0]]["version"] == 2
        expect_version = {e: before["states"][e]["version"] for e in ids}
        if scenario == "update":
            assert (states[ids[2]] or {}).get("late") is (True if landed else None)
            expect_version[ids[2]] += landed
        elif scenario == "transaction":
            assert states[ids[1]]["n"] == (6 if landed else 1)  # all of the transaction or none of it
            assert (states[ids[3]] is None) is landed
            assert len(db.find("items", {"tx": True})) == (1 if landed else 0)
            expect_version[ids[1]] += landed
        elif scenario == "create_many":
            assert len(db.find("items", {"bulk": True})) == (20 if landed else 0)
        elif scenario == "link":
            assert [r["$id"] for r in db.related(f"items/{ids[2]}", "refs")] == ([f"items/{ids[3]}"] if landed else [])
        assert [r["$id"] for r in db.related(f"items/{ids[0]}", "refs")] == [f"items/{ids[1]}"]
        for e in ids:
            got = db.get("items", e, include_deleted=True)
            assert got is not None and got["version"] == expect_version[e] + (
                scenario == "transaction" and landed and e == ids[3]
            )
            versions = [h["version"] for h in db.history(f"items/{e}") if h["op"] not in ("LINK", "UNLINK")]
            assert versions == list(range(1, len(versions) + 1)), f"history of {e} has gaps or duplicates: {versions}"
        db.flush()
        db.compact(1)
        events = _glob_events(archive)
        assert len(events) == len(set(events)), "a glob reader sees an event twice"
        per_entity: dict[str, int] = {}
        for _ns, eid, _seq, _op in events:
            per_entity[eid] = per_entity.get(eid, 0) + 1
        for e in ids:
            got = db.get("items", e, include_deleted=True)
            assert got is not None and per_entity.get(e) == got["version"], f"{e}: {per_entity.get(e)} archived events"
        bulk = db.find("items", {"bulk": True})
        assert all(per_entity.get(d["$id"].split("/")[1]) == 1 for d in bulk)
        assert len(events) == sum(1 for _ in events)
        hidden = [p for p in archive.rglob("*") if p.is_file() and p.name.startswith(".")]
        assert all(p.name.endswith((".pending", ".tmp")) for p in hidden), hidden
        if hidden:
            # an uncommitted create_many's file (it could be another process's open
            # transaction): hidden from readers, deleted once ORPHAN_GRACE_SECONDS old
            assert scenario == "create_many" and not landed, hidden
            monkeypatch.setattr(compact, "ORPHAN_GRACE_SECONDS", 0.0)
            db.create("items", {"n": -1})
            db.flush()
            left = [p.name for p in archive.rglob("*") if p.is_file() and p.name.startswith(".")]
            assert not left, f"pending files survive the sweep past their grace period: {left}"
    finally:
        db.close()
