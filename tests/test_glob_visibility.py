"""A reader that globs the archive folders sees committed files only, each row once.

Every writer puts its file under a hidden pending name and publishes it after the commit
that lists it (archive/files.py); the open and every flush publish what a crash left
listed and delete what nobody listed (compact.sweep_orphans). Checked with the readers a
user has: DuckDB `read_parquet` over `**/*.parquet` and `pyarrow.dataset` of a kind's
folder, after a rollback, and after a process killed (os._exit) at each point between a
file's write and its publish: in create_many, in a flush and in a compaction. SQLite
file, PostgreSQL, MariaDB.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
import pytest
from backends import backend_fixtures, url_of
from sqlalchemy import Engine

import parquedb_orm as pq

BACKENDS = ["sqlite-file", "postgresql", "mysql"]
kind, engine = backend_fixtures(BACKENDS)
MANUAL = pq.FlushPolicy(mode="manual")
CRASH = 17


def glob_rows(archive: Path, folder: str, ns: str) -> list[tuple[str, int]]:
    """(id, seq or version) of every row DuckDB's glob of `folder` finds for `ns`."""
    files = list((archive / folder).glob(f"ns={ns}/*.parquet"))
    if not files:
        return []
    key = "seq" if folder == "events" else "version"
    con = duckdb.connect()
    try:
        rows = con.execute(
            f"SELECT id, {key} FROM read_parquet('{archive / folder}/**/*.parquet', hive_partitioning=true)"
            " WHERE ns = ? ORDER BY 1, 2",
            [ns],
        ).fetchall()
    finally:
        con.close()
    return [(str(a), int(b)) for a, b in rows]


def dataset_ids(archive: Path, folder: str, ns: str) -> list[str]:
    """The ids pyarrow.dataset of a kind's folder finds for `ns` (hidden files skipped, as it does)."""
    if not (archive / folder).exists():
        return []
    dataset = ds.dataset(archive / folder, format="parquet", partitioning="hive")
    if not dataset.files:
        return []
    table = dataset.to_table(columns=["id", "ns"])
    return sorted(i for i, n in zip(table["id"].to_pylist(), table["ns"].to_pylist(), strict=True) if n == ns)


def hidden(archive: Path) -> list[str]:
    return sorted(p.name for p in archive.rglob(".*") if p.is_file())


def run_child(url: str, archive: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in a fresh interpreter with `db` open on the store; it may os._exit."""
    code = (
        "import os, sys, json\n"
        "import parquedb_orm as pq\n"
        "from parquedb_orm.archive import files, flush\n"
        f"db = pq.ParqueDB({url!r}, archive={str(archive)!r}, policy=pq.FlushPolicy(mode='manual', compact_after=2))\n"
        + body
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_rolled_back_create_many_is_never_visible(engine: Engine, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    db = pq.ParqueDB(engine, archive=archive, policy=MANUAL)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.create_many("items", [{"n": i} for i in range(10)])
        raise RuntimeError("the app changes its mind")
    assert glob_rows(archive, "entities", "items") == []
    assert glob_rows(archive, "events", "items") == []
    assert dataset_ids(archive, "entities", "items") == []
    assert db.find("items", {}) == []
    made = db.create_many("items", [{"n": i} for i in range(10)])
    ids = sorted(m["$id"].split("/")[1] for m in made)
    # committed: visible at once, to both readers, once
    assert [i for i, _v in glob_rows(archive, "entities", "items")] == ids
    assert [i for i, _s in glob_rows(archive, "events", "items")] == ids
    assert dataset_ids(archive, "entities", "items") == ids
    assert [p for p in hidden(archive) if p.endswith(".pending")]  # the rolled-back one, invisible
    db.close()


def test_a_crash_in_create_many_before_its_commit_stays_invisible(kind: str, engine: Engine, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    url = url_of(kind, tmp_path)
    pq.ParqueDB(engine, archive=archive, policy=MANUAL).close()
    proc = run_child(
        url,
        archive,
        "with db.transaction() as tx:\n"
        "    tx.create_many('items', [{'n': i} for i in range(10)])\n"
        f"    os._exit({CRASH})\n",
    )
    assert proc.returncode == CRASH, proc.stderr
    assert any(p.endswith(".pending") for p in hidden(archive))
    assert glob_rows(archive, "entities", "items") == []
    db = pq.ParqueDB(url, archive=archive, policy=MANUAL)
    assert glob_rows(archive, "entities", "items") == []
    assert glob_rows(archive, "events", "items") == []
    assert db.find("items", {}) == []
    db.close()


@pytest.mark.parametrize("where", ["create_many", "flush", "compaction"])
def test_a_crash_after_the_commit_is_published_at_the_next_open(
    kind: str, engine: Engine, tmp_path: Path, where: str
) -> None:
    """Killed between the commit that lists a file and its publish: the open publishes it,
    and every committed row is in the globbed folders exactly once."""
    archive = tmp_path / "archive"
    url = url_of(kind, tmp_path)
    pq.ParqueDB(engine, archive=archive, policy=MANUAL).close()
    kill = f"def kill(*_a, **_k):\n    os._exit({CRASH})\n"
    if where == "create_many":
        body = kill + (
            "files.Archive.publish_pending = kill\nmade = db.create_many('items', [{'n': i} for i in range(10)])\n"
        )
    elif where == "flush":
        body = kill + (
            "for i in range(5):\n    db.create('items', {'n': i})\nfiles.Archive.publish_pending = kill\ndb.flush()\n"
        )
    else:
        body = kill + (
            "for r in range(3):\n"
            "    for i in range(4):\n"
            "        db.create('items', {'n': r * 10 + i})\n"
            "    if r == 2:\n"
            "        flush.CRASH_HOOK = lambda step: kill() if step == 'compaction_committed' else None\n"
            "    db.flush()\n"
        )
    body += "print('unreachable')\n"
    proc = run_child(url, archive, body)
    assert proc.returncode == CRASH, proc.stderr + proc.stdout
    db = pq.ParqueDB(url, archive=archive, policy=MANUAL)
    states = db.find("items", {})
    ids = sorted(s["$id"].split("/")[1] for s in states)
    expected = {"create_many": 10, "flush": 5, "compaction": 12}[where]
    assert len(ids) == expected
    db.flush()  # whatever the WAL still held goes to the archive too
    bases = [i for i, _v in glob_rows(archive, "entities", "items")]
    assert len(bases) == len(set(bases))  # entities/: one row per entity
    assert sorted(set(bases) | {i for i, _v in glob_rows(archive, "entity_deltas", "items")}) == ids
    events = glob_rows(archive, "events", "items")
    assert sorted(i for i, _s in events) == ids  # one CREATE each, none twice
    assert (
        sorted(set(dataset_ids(archive, "entities", "items")) | set(dataset_ids(archive, "entity_deltas", "items")))
        == ids
    )
    assert not [p for p in hidden(archive) if p.endswith(".pending")]
    db.close()


def test_a_flush_with_nothing_pending_sweeps(engine: Engine, tmp_path: Path) -> None:
    """An unlisted visible file (what an older version's crash left) goes at the next flush,
    even one with nothing to flush; a listed pending file is published by it."""
    archive = tmp_path / "archive"
    db = pq.ParqueDB(engine, archive=archive, policy=MANUAL)
    for i in range(3):
        db.create("items", {"n": i})
    db.flush()
    folder = archive / "events" / "ns=items"
    (listed,) = folder.glob("*.parquet")
    stray = folder / "000000000100-000000000200.parquet"
    shutil.copy(listed, stray)  # unlisted, visible: the rows twice for a glob reader
    listed.rename(folder / f".{listed.name}.pending")  # committed, not yet published
    assert len(glob_rows(archive, "events", "items")) == 3  # the stray copy only
    result = db.flush()
    assert result.events == 0
    assert sorted(p.name for p in folder.iterdir()) == [listed.name]
    assert len(glob_rows(archive, "events", "items")) == 3
    assert len(db.history(db.find("items", {})[0]["$id"])) == 1
    db.close()


def test_reads_publish_a_listed_pending_file(engine: Engine, tmp_path: Path) -> None:
    """A reader that finds a listed file still under its pending name (its writer committed
    and has not renamed it yet, or crashed) publishes it and reads on."""
    archive = tmp_path / "archive"
    db = pq.ParqueDB(engine, archive=archive, policy=MANUAL)
    made = db.create_many("items", [{"n": i} for i in range(6)])
    db.close()
    fresh = pq.ParqueDB(engine, archive=archive, policy=MANUAL)  # the open's sweep has nothing to do
    folder = archive / "entities" / "ns=items"
    (listed,) = folder.glob("bulk-*.parquet")
    listed.rename(folder / f".{listed.name}.pending")
    assert fresh.get("items", made[3]["$id"].split("/")[1])["n"] == 3
    assert listed.exists()
    fresh.close()
