"""A commit the server rolled back to break a deadlock runs again.

On MariaDB a single owner commits without a counter-row lock (one statement a commit); a
process switching to shared mode takes that lock, and InnoDB may then pick one of the two
as a deadlock victim (seen in tests/test_processes.py). The group committer recognises the
server's verdict (`dialects.rolled_back_to_retry`: MySQL 1213 / 1205, PostgreSQL 40P01 /
40001) and runs the whole commit again, with jittered backoff; any other error surfaces.
The deadlocks here are real ones, made by two connections locking two rows in opposite
order."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from backends import backend_fixtures
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

import parquedb_orm as pq
from parquedb_orm.engine.commit import Committer
from parquedb_orm.sql import dialects

BACKENDS = ["postgresql", "mysql"]
kind, engine = backend_fixtures(BACKENDS)


def real_deadlock(engine: Engine) -> DBAPIError:
    """The error the server raises in the victim of a two-row deadlock."""
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS dl_rows"))
        conn.execute(text("CREATE TABLE dl_rows (id INTEGER PRIMARY KEY, v INTEGER)"))
        conn.execute(text("INSERT INTO dl_rows VALUES (1, 0), (2, 0)"))
    errors: list[BaseException] = []
    both_locked = threading.Barrier(2, timeout=10)

    def side(first: int, second: int) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(text("UPDATE dl_rows SET v = v + 1 WHERE id = :i"), {"i": first})
                both_locked.wait()
                conn.execute(text("UPDATE dl_rows SET v = v + 1 WHERE id = :i"), {"i": second})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=side, args=args) for args in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE dl_rows"))
    assert len(errors) == 1, errors  # one victim; the other committed
    assert isinstance(errors[0], DBAPIError), errors
    return errors[0]


def test_a_real_deadlock_is_recognised_and_other_errors_are_not(kind: str, engine: Engine) -> None:
    exc = real_deadlock(engine)
    assert dialects.rolled_back_to_retry(exc)
    with pytest.raises(DBAPIError) as refused, engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table_here"))
    assert not dialects.rolled_back_to_retry(refused.value)
    assert not dialects.rolled_back_to_retry(ValueError("not a driver error"))


def test_a_commit_rolled_back_by_a_deadlock_runs_again(
    kind: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deadlock = real_deadlock(engine)
    db = pq.ParqueDB(engine, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))
    real = Committer.prepare
    calls = 0

    def prepare(self: Committer, conn: Any, uow: Any) -> None:
        nonlocal calls
        calls += 1
        real(self, conn, uow)  # the WAL row is written inside the transaction...
        if calls <= 2:
            raise deadlock  # ...which the server then rolls back, twice

    try:
        first = db.create("posts", {"n": 0})
        monkeypatch.setattr(Committer, "prepare", prepare)
        second = db.create("posts", {"n": 1})
        monkeypatch.setattr(Committer, "prepare", real)
        assert calls == 3
        assert db.stats()["deadlock_retries"] == 2
        assert db.get("posts", second["$id"].split("/")[1])["n"] == 1
        db.create("posts", {"n": 2})
        result = db.flush()
        assert result.events == 3  # each create once: the rolled-back rows are gone
        seqs = sorted(s for (s,) in db.duckdb().execute("SELECT seq FROM events WHERE ns = 'posts'").fetchall())
        assert seqs == [1, 2, 3]
        assert {d["n"] for d in db.find("posts")} == {0, 1, 2}
        assert first["$id"] != second["$id"]
    finally:
        db.close()


def test_a_deadlock_that_persists_surfaces(
    kind: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from parquedb_orm.engine import group

    deadlock = real_deadlock(engine)
    db = pq.ParqueDB(engine, archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual"))

    def prepare(self: Committer, conn: Any, uow: Any) -> None:
        raise deadlock

    try:
        db.create("posts", {"n": 0})
        monkeypatch.setattr(Committer, "prepare", prepare)
        monkeypatch.setattr(group, "DEADLOCK_ATTEMPTS", 3)
        with pytest.raises(DBAPIError):
            db.create("posts", {"n": 1})
        monkeypatch.undo()
        assert db.stats()["deadlock_retries"] == 2
        assert [d["n"] for d in db.find("posts")] == [0]
        assert db.flush().events == 1
    finally:
        db.close()
