"""A read that listed archive files just before a compaction committed and deleted them
(the soak benchmark's readers hit this under background flushes) reads again against the
new manifest instead of failing with "listed in the manifest is missing"."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import parquedb_orm as pq
from parquedb_orm.archive.files import Archive

MANUAL = pq.FlushPolicy(mode="manual")


def _store(tmp_path: Path) -> tuple[pq.ParqueDB, list[str]]:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    ids = [db.create("items", {"n": i})["$id"].split("/")[1] for i in range(6)]
    db.flush()
    for round_ in range(3):  # three flushes: several events / delta files to merge
        for eid in ids:
            db.update("items", eid, {"$inc": {"n": 10}, "$set": {"round": round_}})
        db.link(f"items/{ids[0]}", "refs", f"items/{ids[round_ + 1]}")
        db.flush()
    return db, ids


def _compact_before_first_read(monkeypatch: pytest.MonkeyPatch, db: pq.ParqueDB) -> dict[str, int]:
    """The first archive file read of the call under test runs a whole compaction first, in
    another thread (as a background flush would): the read then opens files the compaction
    has just deleted."""
    state = {"compactions": 0}
    armed = threading.Event()
    armed.set()

    def first_read() -> None:
        if armed.is_set() and threading.current_thread() is threading.main_thread():
            armed.clear()
            worker = threading.Thread(target=lambda: state.__setitem__("compactions", db.compact(1)))
            worker.start()
            worker.join()

    real_reading, real_verify = Archive.reading, Archive.verify

    def reading(self: Archive, rel: str) -> Any:
        first_read()
        return real_reading(self, rel)

    def verify(self: Archive, rel: str, *args: Any, **kwargs: Any) -> Any:
        first_read()  # DuckDB's scans (find) check each file first
        return real_verify(self, rel, *args, **kwargs)

    monkeypatch.setattr(Archive, "reading", reading)
    monkeypatch.setattr(Archive, "verify", verify)
    return state


@pytest.mark.parametrize("call", ["get", "history", "related", "find"])
def test_a_read_racing_a_compaction_reads_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    db, ids = _store(tmp_path)
    try:
        expected = {
            "get": db.get("items", ids[2]),
            "history": db.history(f"items/{ids[2]}"),
            "related": db.related(f"items/{ids[0]}", "refs"),
            "find": db.find("items", {"round": 2}, sort={"n": 1}),
        }[call]
        db.runtime.known.restart_all()  # cold caches: the call must read the archive
        db.runtime.archived._footers.clear()
        db.runtime.archived._ranges.clear()
        db.runtime.archived._archived_states.clear()
        state = _compact_before_first_read(monkeypatch, db)
        got = {
            "get": lambda: db.get("items", ids[2]),
            "history": lambda: db.history(f"items/{ids[2]}"),
            "related": lambda: db.related(f"items/{ids[0]}", "refs"),
            "find": lambda: db.find("items", {"round": 2}, sort={"n": 1}),
        }[call]()
        assert state["compactions"] >= 1, "the compaction did not run: the race was not exercised"
        assert got == expected
    finally:
        db.close()


def test_a_file_that_stays_missing_is_still_an_error(tmp_path: Path) -> None:
    db, ids = _store(tmp_path)
    try:
        db.runtime.known.restart_all()
        for f in (tmp_path / "archive" / "events" / "ns=items").glob("*.parquet"):
            f.unlink()
        with pytest.raises(pq.ArchiveFileMissingError, match="listed in the manifest is missing"):
            db.history(f"items/{ids[2]}")
    finally:
        db.close()
