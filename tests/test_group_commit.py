"""Group commit: concurrent single-operation calls through the facade share WAL rows,
and every call returns only once its events are committed."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from parquedb_meter import meter

import parquedb_orm as pq

THREADS = 16
PER_THREAD = 60


def _hammer(db: pq.ParqueDB, results: list[str], errors: list[BaseException]) -> None:
    start = threading.Barrier(THREADS)

    def work() -> None:
        try:
            start.wait()
            for i in range(PER_THREAD):
                e = db.create("posts", {"name": f"p{i}"})
                # returned => committed: a fresh connection must see it
                results.append(e["$id"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_threads_share_wal_rows(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 'g.db'}")
    db.create("posts", {"name": "warm"})
    results: list[str] = []
    errors: list[BaseException] = []
    with meter(db.engine) as m:
        _hammer(db, results, errors)
    assert errors == []
    assert len(results) == len(set(results)) == THREADS * PER_THREAD
    rows = m.inserted_rows("events_wal")
    assert rows < THREADS * PER_THREAD  # some calls were committed together
    db2 = pq.ParqueDB(f"sqlite:///{tmp_path / 'g.db'}")
    db.close()
    assert len(db2.find("posts")) == THREADS * PER_THREAD + 1
    db2.close()


def test_conflicting_updates_in_one_group_lose_nothing(tmp_path: Path) -> None:
    """16 threads increment one counter: grouped units that clash are retried, none lost."""
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 'c.db'}")
    e = db.create("stats", {"name": "hits", "n": 0})
    sid = e["$id"].split("/")[1]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work() -> None:
        try:
            start.wait()
            for _ in range(25):
                db.update("stats", sid, {"$inc": {"n": 1}})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = db.get("stats", sid)
    assert got is not None and got["n"] == 200 and got["version"] == 201
    db.close()
    cold = pq.ParqueDB(f"sqlite:///{tmp_path / 'c.db'}")
    assert cold.get("stats", sid)["n"] == 200  # type: ignore[index]
    cold.close()


def test_expected_version_conflict_in_group_is_reported(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 'v.db'}")
    e = db.create("docs", {"name": "d"})
    sid = e["$id"].split("/")[1]
    outcomes: list[str] = []
    start = threading.Barrier(6)

    def work(i: int) -> None:
        start.wait()
        try:
            db.update("docs", sid, {"$set": {"by": i}}, expected_version=1)
            outcomes.append("ok")
        except pq.VersionConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 5 + ["ok"]
    assert db.get("docs", sid)["version"] == 2  # type: ignore[index]
    db.close()


@pytest.mark.parametrize("group_commit", [True, False])
def test_failed_transaction_writes_nothing(tmp_path: Path, group_commit: bool) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 'f.db'}", group_commit=group_commit)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        made = tx.create("posts", {"name": "never"})
        raise RuntimeError("boom")
    assert db.get("posts", made["$id"].split("/")[1]) is None
    assert db.find("posts") == []
    db.close()
