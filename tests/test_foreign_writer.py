"""A single owner numbers its commits from memory and reads nothing to do so. When another
writer appears, its first INSERT finds the numbers taken (the other's WAL row, or the
other's flushed mark after a flush) and it switches to shared mode: no event is lost or
numbered twice, on every backend."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from backends import backend_fixtures, url_of
from sqlalchemy import Engine, create_engine

import parquedb_orm as pq

BACKENDS = ["sqlite-file", "postgresql", "mysql"]


kind, engine = backend_fixtures(BACKENDS)


def seqs(db: pq.ParqueDB) -> list[int]:
    """Every committed event's sequence number, archived or not, as a glob reader counts them."""
    return sorted(int(s) for (s,) in db.duckdb().execute("SELECT seq FROM events WHERE ns = 'posts'").fetchall())


def two_writers(kind: str, engine: Engine, tmp_path: Path) -> tuple[pq.ParqueDB, pq.ParqueDB, Engine]:
    """Two stores on one database and archive, each with its own engine (as two processes
    have): a on the fixture's engine, b on a new one (dispose it after)."""
    policy = pq.FlushPolicy(mode="manual")
    a = pq.ParqueDB(engine, archive=tmp_path / "archive", policy=policy)
    other = create_engine(url_of(kind, tmp_path))
    return a, pq.ParqueDB(other, archive=tmp_path / "archive", policy=policy), other


@pytest.mark.parametrize("flush_between", [False, True], ids=["row-in-wal", "row-flushed"])
def test_a_second_writer_is_found_by_the_insert(
    kind: str, engine: Engine, tmp_path: Path, flush_between: bool, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, other = two_writers(kind, engine, tmp_path)
    try:
        first = a.create("posts", {"by": "a", "n": 1})  # a numbers from memory from now on
        b.create("posts", {"by": "b", "n": 1})  # b's first commit reads the floor: right after a's
        b.create("posts", {"by": "b", "n": 2})
        if flush_between:
            assert b.flush().events == 3  # b retires the rows, and the row a would collide with
        with caplog.at_level(logging.WARNING, logger="parquedb_orm"):
            a.update("posts", first["$id"].split("/")[1], {"$set": {"n": 2}})  # a's numbers are stale
        assert any("switches to shared=True" in r.message for r in caplog.records)
        assert a.stats()["shared"] is True and b.stats()["shared"] is False
        a.create("posts", {"by": "a", "n": 3})
        b.create("posts", {"by": "b", "n": 3})  # b's next INSERT finds a's rows: b switches too
        assert b.stats()["shared"] is True
        a.flush()
        assert seqs(a) == [1, 2, 3, 4, 5, 6]  # six events, each numbered once
        by = sorted(str(d["by"]) + str(d["n"]) for d in a.find("posts"))
        assert by == ["a2", "a3", "b1", "b2", "b3"]
        assert [h["version"] for h in b.history(first["$id"])] == [1, 2]
    finally:
        a.close()
        b.close()
        other.dispose()


def wal_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM events_wal WHERE ns = 'posts'").scalar_one())


@pytest.mark.parametrize("owner", ["busy", "idle", "unguarded"])
def test_a_flush_keeps_the_row_a_busy_owner_collides_with(
    kind: str, engine: Engine, tmp_path: Path, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single owner reads no mark while it inserted less than OWNER_CHECK_SECONDS ago; a
    flush by a writer that numbered after someone else's row keeps its rows RETAIN_SECONDS.
    - busy: b's flush keeps b's rows, a's next INSERT meets b's first one;
    - idle: b's rows are retired (RETAIN_SECONDS elapsed, here 0), and a, idle past
      OWNER_CHECK_SECONDS (here 0), reads the mark instead;
    - unguarded: neither (both settings off at once), to show the case is real: a numbers
      an event with a number b already took, and it is lost."""
    from parquedb_orm.sql import wal

    a, b, other = two_writers(kind, engine, tmp_path)
    try:
        first = a.create("posts", {"by": "a", "n": 1})
        a.create("posts", {"by": "a", "n": 2})  # a's mark check is behind it: a is busy
        b.create("posts", {"by": "b", "n": 1})  # numbered right after a's rows: a's next number
        b.create("posts", {"by": "b", "n": 2})
        if owner != "busy":
            monkeypatch.setattr(wal, "RETAIN_SECONDS", 0.0)
        if owner == "idle":
            monkeypatch.setattr(wal, "OWNER_CHECK_SECONDS", 0.0)
        rows_before = wal_rows(engine)
        assert b.flush().events == 4
        if owner == "busy":
            # b numbered after a's rows: it keeps every young row it did not number after its own
            assert wal_rows(engine) == rows_before
        else:
            assert wal_rows(engine) == 1  # only the newest, as every flush keeps
        a.update("posts", first["$id"].split("/")[1], {"$set": {"n": 3}})
        if owner == "unguarded":
            assert a.stats()["shared"] is False
            a.flush()
            # five events committed, four archived: a numbered its update 3 again, below b's
            # flushed mark, so no flush ever takes it (what the guards prevent)
            assert seqs(a) == [1, 2, 3, 4]
            return
        assert a.stats()["shared"] is True
        a.flush()
        assert seqs(a) == [1, 2, 3, 4, 5]
        assert sorted(str(d["by"]) + str(d["n"]) for d in a.find("posts")) == ["a2", "a3", "b1", "b2"]
        monkeypatch.setattr(wal, "RETAIN_SECONDS", 0.0)
        b.create("posts", {"by": "b", "n": 3})
        b.flush()
        assert wal_rows(engine) == 1  # once old enough, kept rows go with the next flush
    finally:
        a.close()
        b.close()
        other.dispose()


def test_numbers_of_a_rolled_back_commit_are_taken_again(kind: str, engine: Engine, tmp_path: Path) -> None:
    """A single owner whose commit failed after its INSERT (here: at COMMIT) must not go on
    numbering after the numbers it never wrote: another writer may take them, in a row
    whose key starts below this owner's next number, and no key would collide."""
    from sqlalchemy import event

    a, b, other = two_writers(kind, engine, tmp_path)
    policy = pq.FlushPolicy(mode="manual")

    def refuse(conn: object) -> None:
        raise RuntimeError("the commit fails")

    try:
        a.create("posts", {"by": "a", "n": 1})
        a.create("posts", {"by": "a", "n": 2})
        event.listen(engine, "commit", refuse)
        try:
            with pytest.raises(Exception, match="the commit fails"):
                a.create("posts", {"by": "a", "n": 3})  # numbered 3, never written
        finally:
            event.remove(engine, "commit", refuse)
        b.create_many("posts", [{"by": "b", "n": 1}, {"by": "b", "n": 2}])  # one row: 3 and 4
        a.create("posts", {"by": "a", "n": 4})
        a.flush()
        c = pq.ParqueDB(create_engine(url_of(kind, tmp_path)), archive=tmp_path / "archive", policy=policy)
        try:
            c.flush()
            assert seqs(c) == [1, 2, 3, 4, 5]  # each committed event once, none lost
            assert sorted(str(d["by"]) + str(d["n"]) for d in c.find("posts")) == ["a1", "a2", "a4", "b1", "b2"]
        finally:
            c.close()
            c.engine.dispose()
    finally:
        a.close()
        b.close()
        other.dispose()


#: statements per single-owner create or update (BEGIN / COMMIT not counted): the WAL
#: INSERT alone on every backend. On MariaDB a single owner takes no counter-row lock; a
#: process switching to shared mode can then deadlock with single owners' INSERTs, and the
#: group committer runs the rolled-back commit again (tests/test_processes.py)
STATEMENTS_PER_COMMIT = {"sqlite-file": 1, "postgresql": 1, "mysql": 1}


def test_statements_of_a_single_owner_commit(kind: str, engine: Engine, tmp_path: Path) -> None:
    from parquedb_meter import EngineMeter

    db = pq.ParqueDB(engine, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))
    em = EngineMeter(engine)
    try:
        first = db.create("posts", {"n": 0})  # the first commit loads the tail, reads the floor
        db.create("posts", {"n": 1})
        sqid = first["$id"].split("/")[1]
        em.install()
        for i in range(5):
            before = em.meter.snapshot()["statements"]
            db.create("posts", {"n": 10 + i})
            assert em.meter.snapshot()["statements"] - before == STATEMENTS_PER_COMMIT[kind]
            before = em.meter.snapshot()["statements"]
            db.update("posts", sqid, {"$set": {"n": i}})
            assert em.meter.snapshot()["statements"] - before == STATEMENTS_PER_COMMIT[kind]
    finally:
        em.uninstall()
        db.close()
