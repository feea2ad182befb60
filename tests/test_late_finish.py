"""Finishes run after COMMIT, outside the write lock, so a later commit's finish can run
before an earlier one's (ORM sessions, `group_commit=False`). A late event must never be
dropped from the in-memory tails, or a flush served from memory would leave a committed
event out of the archive; it joins them in sequence order, and only when a later commit
touched the same entity or link does the namespace (or the relationship index) reload."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import parquedb_orm as pq
from parquedb_orm.engine.commit import Committer


@contextmanager
def first_finish_held(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], object]], None]]:
    """Yields `run(late)`: `late` runs in a thread whose commit's finish waits until the
    next commit made on the calling thread has finished."""
    real = Committer.finish
    held = threading.Event()
    later_done = threading.Event()
    calls = 0

    def finish(self: Committer, uow: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            held.set()
            assert later_done.wait(10)
        real(self, uow)
        if calls >= 2:
            later_done.set()

    workers: list[threading.Thread] = []

    def run(late: Callable[[], object]) -> None:
        worker = threading.Thread(target=late)
        workers.append(worker)
        worker.start()
        assert held.wait(10)

    monkeypatch.setattr(Committer, "finish", finish)
    try:
        yield run
    finally:
        later_done.set()
        for w in workers:
            w.join(10)
        monkeypatch.setattr(Committer, "finish", real)


def _open(path: Path) -> pq.ParqueDB:
    return pq.ParqueDB(
        f"sqlite:///{path / 's.db'}",
        archive=path / "archive",
        policy=pq.FlushPolicy(mode="manual"),
        group_commit=False,
    )


def _targets(db: pq.ParqueDB, ref: str) -> list[str]:
    return sorted(d["$id"] for d in db.related(ref, "refs"))


def test_a_commit_that_finishes_after_a_later_one_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entity case, seen on CI as a find missing a committed entity (the tail once
    skipped the late event)."""
    db = _open(tmp_path)
    try:
        db.create("posts", {"n": 0})  # loads the tail
        with first_finish_held(monkeypatch) as run:
            run(lambda: db.create("posts", {"n": 1}))
            db.create("posts", {"n": 2})  # commits and finishes while the first is not finished
        assert sorted(d["n"] for d in db.find("posts")) == [0, 1, 2]
    finally:
        db.close()
    with _open(tmp_path) as again:
        assert sorted(d["n"] for d in again.find("posts")) == [0, 1, 2]


def test_a_link_that_finishes_after_a_later_one_is_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _open(tmp_path)
    try:
        a, b, c, d = (db.create("posts", {"n": i})["$id"] for i in range(4))
        db.link(a, "refs", b)  # loads the relationship tail
        with first_finish_held(monkeypatch) as run:
            run(lambda: db.link(a, "refs", c))
            db.link(a, "refs", d)  # commits and finishes while the first is not finished
        assert _targets(db, a) == sorted([b, c, d])
        result = db.flush()
        assert result.rel_events == 3
        assert _targets(db, a) == sorted([b, c, d])
    finally:
        db.close()
    with _open(tmp_path) as again:
        assert _targets(again, a) == sorted([b, c, d])
        con = again.duckdb()
        assert con.execute("SELECT count(*) FROM rels").fetchone() == (3,)


def test_an_entity_late_finish_keeps_the_unflushed_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entity case restarts its namespace's memory; that must not drop the namespace's
    unflushed relationship events, which the relationship index still counts as loaded."""
    db = _open(tmp_path)
    try:
        a, b = (db.create("posts", {"n": i})["$id"] for i in range(2))
        db.link(a, "refs", b)
        with first_finish_held(monkeypatch) as run:
            run(lambda: db.create("posts", {"n": 2}))
            db.create("posts", {"n": 3})
        assert sorted(x["n"] for x in db.find("posts")) == [0, 1, 2, 3]
        result = db.flush()
        assert (result.events, result.rel_events) == (4, 1)
    finally:
        db.close()
    with _open(tmp_path) as again:
        assert _targets(again, a) == [b]
        assert sorted(x["n"] for x in again.find("posts")) == [0, 1, 2, 3]


def test_late_events_of_other_entities_join_the_tails_without_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The common case (the two commits touched different entities and links): the late
    events go into the tails in sequence order; nothing is reloaded from the table."""
    from parquedb_orm.engine.rels import Relationships
    from parquedb_orm.engine.state import Known

    reloads: list[str] = []
    real_restart, real_unload = Known.restart, Relationships.unload
    monkeypatch.setattr(Known, "restart", lambda self, ns: (reloads.append(ns), real_restart(self, ns))[1])
    monkeypatch.setattr(Relationships, "unload", lambda self: (reloads.append("rels"), real_unload(self))[1])
    db = _open(tmp_path)
    try:
        a, b, c = (db.create("posts", {"n": i})["$id"] for i in range(3))
        db.link(a, "refs", b)
        with first_finish_held(monkeypatch) as run:
            run(lambda: db.create("posts", {"n": 3}))
            db.create("posts", {"n": 4})
        with first_finish_held(monkeypatch) as run:
            run(lambda: db.link(b, "refs", c))
            db.link(a, "refs", c)
        assert reloads == []
        assert sorted(x["n"] for x in db.find("posts")) == [0, 1, 2, 3, 4]
        assert _targets(db, a) == sorted([b, c]) and _targets(db, b) == [c]
        assert sorted(d["$id"] for d in db.related(c, "refs", direction="inbound")) == sorted([a, b])
        result = db.flush()
        assert (result.events, result.rel_events) == (5, 3)
    finally:
        db.close()
    with _open(tmp_path) as again:
        assert sorted(x["n"] for x in again.find("posts")) == [0, 1, 2, 3, 4]
        assert _targets(again, a) == sorted([b, c]) and _targets(again, b) == [c]


def test_a_late_link_of_a_pair_unlinked_later_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A late link whose pair a later commit unlinked: applying it now would resurrect the
    link in the caches, so the relationship index reloads from the table."""
    db = _open(tmp_path)
    try:
        a, b = (db.create("posts", {"n": i})["$id"] for i in range(2))
        db.link(a, "refs", b)
        db.unlink(a, "refs", b)
        with first_finish_held(monkeypatch) as run:
            run(lambda: db.link(a, "refs", b))
            db.unlink(a, "refs", b)
        assert _targets(db, a) == []
        assert db.flush().rel_events == 4
        assert _targets(db, a) == []
    finally:
        db.close()
    with _open(tmp_path) as again:
        assert _targets(again, a) == []
