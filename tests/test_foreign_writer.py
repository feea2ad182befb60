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


@pytest.mark.parametrize("flush_between", [False, True], ids=["row-in-wal", "row-flushed"])
def test_a_second_writer_is_found_by_the_insert(
    kind: str, engine: Engine, tmp_path: Path, flush_between: bool, caplog: pytest.LogCaptureFixture
) -> None:
    archive = tmp_path / "archive"
    policy = pq.FlushPolicy(mode="manual")
    a = pq.ParqueDB(engine, archive=archive, policy=policy)
    other = create_engine(url_of(kind, tmp_path))
    b = pq.ParqueDB(other, archive=archive, policy=policy)
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
