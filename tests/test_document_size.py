"""The event size limit (sql/wal.MAX_EVENT_BYTES, docs/limits.md): a document, an update's
operands or a link's data past it is refused with ValidationError before any row is
written, on every backend (MariaDB used to answer a 50 MB document with "server has gone
away"); in a group commit only the unit that carried it fails; a commit of many events
still splits into rows of at most ROW_CAP_BYTES."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
from backends import backend_engine
from sqlalchemy import func, select

import parquedb_orm as pq
from parquedb_orm.sql import wal

BIG = "x" * (wal.MAX_EVENT_BYTES + 10)


def _wal_rows(db: pq.ParqueDB) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(wal.EVENTS)).scalar_one()) + int(
            conn.execute(select(func.count()).select_from(wal.RELS)).scalar_one()
        )


@pytest.mark.parametrize("kind", ["sqlite-file", "postgresql", "mysql"])
def test_an_oversized_event_is_refused_and_writes_nothing(kind: str, tmp_path: Path) -> None:
    with backend_engine(kind, tmp_path) as engine:
        db = pq.ParqueDB(engine)
        try:
            a = db.create("docs", {"n": 1})["$id"]
            b = db.create("docs", {"n": 2})["$id"]
            before = _wal_rows(db)
            with pytest.raises(pq.ValidationError, match="MAX_EVENT_BYTES"):
                db.create("docs", {"blob": BIG})
            with pytest.raises(pq.ValidationError, match="MAX_EVENT_BYTES"):
                db.update("docs", a.split("/")[1], {"$set": {"blob": BIG}})
            with pytest.raises(pq.ValidationError, match="MAX_EVENT_BYTES"):
                db.link(a, "refs", b, data={"blob": BIG})
            with pytest.raises(pq.ValidationError, match="MAX_EVENT_BYTES"), db.transaction() as tx:
                tx.update("docs", b.split("/")[1], {"$set": {"m": 1}})
                tx.create("docs", {"blob": BIG})
            assert _wal_rows(db) == before
            got = db.get("docs", b.split("/")[1])
            assert got is not None and "m" not in got and got["version"] == 1
            # just under the limit goes in (compressed, far below MariaDB's packet)
            ok = db.create("docs", {"blob": "y" * (wal.MAX_EVENT_BYTES - 1000)})
            assert len(db.get("docs", ok["$id"].split("/")[1])["blob"]) == wal.MAX_EVENT_BYTES - 1000
        finally:
            db.close()


def test_in_a_group_commit_only_the_oversized_unit_fails(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}")
    errors: list[BaseException] = []
    made: list[str] = []
    gate = threading.Barrier(8)

    def worker(i: int) -> None:
        gate.wait()
        try:
            made.append(db.create("docs", {"blob": BIG} if i == 3 else {"n": i})["$id"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(errors) == 1 and isinstance(errors[0], pq.ValidationError)
        assert len(made) == 7
        assert sorted(d["n"] for d in db.find("docs")) == [0, 1, 2, 4, 5, 6, 7]
    finally:
        db.close()


def test_a_commit_of_many_events_splits_into_rows_under_the_cap(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with db.transaction() as tx:
            for _ in range(500):
                tx.create("docs", {"s": "z" * 10_000})  # 5 MB of JSON in one commit
        with db.engine.connect() as conn:
            rows = conn.execute(select(wal.EVENTS.c.first_seq, wal.EVENTS.c.last_seq, wal.EVENTS.c.event_count)).all()
        assert len(rows) == 6  # 99 records of ~10 KB each per 1,000,000-byte row
        assert sum(r.event_count for r in rows) == 500
        assert all(a.last_seq + 1 == b.first_seq for a, b in itertools.pairwise(rows))
        assert len(db.find("docs")) == 500
    finally:
        db.close()
