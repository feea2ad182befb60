"""A flush of more than a chunk (archive/flush.CHUNK_EVENTS events of a namespace) commits
a chunk at a time, so its memory is bounded by the chunk whatever was left unflushed. Each
chunk is exactly once like a whole flush: no event lost or doubled, also when the flush
stops between two chunks, and also for a reader that globs the Parquet files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from backends import assert_wal_flushed, backend_fixtures
from sqlalchemy import Engine

import parquedb_orm as pq
from parquedb_orm.archive import flush as flush_mod

BACKENDS = ["sqlite-file", "postgresql", "mysql"]
kind, engine = backend_fixtures(BACKENDS)

CHUNK = 50
UPDATES_PER_TX = 10  # one WAL row per transaction: rows of 10 events


def _build(db: pq.ParqueDB) -> tuple[list[str], int, int]:
    """120 creates and 130 updates (25 WAL rows of 10) and 70 links; returns the ids and the
    event and link counts."""
    ids = [d["$id"].split("/")[1] for d in db.create_many("posts", [{"n": i} for i in range(120)])]
    for start in range(0, 130, UPDATES_PER_TX):
        with db.transaction() as tx:
            for j in range(start, start + UPDATES_PER_TX):
                tx.update("posts", ids[j % 120], {"$inc": {"n": 1000}})
    for start in range(0, 70, UPDATES_PER_TX):
        with db.transaction() as tx:
            for j in range(start, start + UPDATES_PER_TX):
                tx.link(f"posts/{ids[j]}", "refs", f"posts/{ids[j + 1]}")
    return ids, 130, 70


def _glob(archive: Path, folder: str) -> list[Any]:
    """Every archived row of the folder with a sequence (bulk files are seq 0), as a glob reader sees it."""
    con = duckdb.connect()  # its own: DuckDB's default connection is shared by the whole process
    try:
        return con.execute(
            f"SELECT seq FROM read_parquet('{archive}/{folder}/**/*.parquet', hive_partitioning=false) WHERE seq > 0"
        ).fetchall()
    finally:
        con.close()


def _expected(ids: list[str]) -> dict[str, int]:
    n = {eid: i for i, eid in enumerate(ids)}
    for j in range(130):
        n[ids[j % 120]] += 1000
    return n


def _chunked_store(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[pq.ParqueDB, Path]:
    """A manual-policy store whose flushes take chunks of CHUNK events, and its archive."""
    monkeypatch.setattr(flush_mod, "CHUNK_EVENTS", CHUNK)
    archive = tmp_path / "archive"
    return pq.ParqueDB(engine, archive=archive, policy=pq.FlushPolicy(mode="manual")), archive


def test_a_large_flush_commits_chunk_by_chunk(
    kind: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, archive = _chunked_store(engine, tmp_path, monkeypatch)
    steps: list[str] = []
    monkeypatch.setattr(flush_mod, "CRASH_HOOK", steps.append)
    try:
        ids, n_updates, n_links = _build(db)
        result = db.flush()
        assert (result.events, result.rel_events) == (n_updates, n_links)
        chunks = steps.count("committed")
        # 130 events in rows of 10 -> windows of 50 above each mark: 3 chunks (50, 50, 30);
        # the 70 links ride in the first two (50, 20)
        assert chunks == 3, steps
        assert result.files == 3 + 3 + 2  # events + delta per chunk, rels in two
        assert_wal_flushed(engine)
        assert sorted(s for (s,) in _glob(archive, "events")) == list(range(1, n_updates + 1))
        assert len(_glob(archive, "rels")) == n_links
        expected = _expected(ids)
        assert {d["$id"].split("/")[1]: d["n"] for d in db.find("posts")} == expected
        assert len(db.related(f"posts/{ids[0]}", "refs")) == 1
        assert db.flush().events == 0
    finally:
        db.close()


class _Stop(Exception):
    pass


def test_a_flush_stopped_between_chunks_resumes_exactly_once(
    kind: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, archive = _chunked_store(engine, tmp_path, monkeypatch)
    committed = 0

    def hook(step: str) -> None:
        nonlocal committed
        committed += step == "committed"
        if step == "files_written" and committed == 1:  # the second chunk's files are written
            raise _Stop

    try:
        ids, n_updates, n_links = _build(db)
        monkeypatch.setattr(flush_mod, "CRASH_HOOK", hook)
        with pytest.raises(_Stop):
            db.flush()
        monkeypatch.setattr(flush_mod, "CRASH_HOOK", None)
        # the first chunk is archived; a glob reader sees it and nothing of the second
        assert sorted(s for (s,) in _glob(archive, "events")) == list(range(1, CHUNK + 1))
        assert {d["$id"].split("/")[1]: d["n"] for d in db.find("posts")} == _expected(ids)
    finally:
        db.close()
    with pq.ParqueDB(engine, archive=archive, policy=pq.FlushPolicy(mode="manual")) as again:
        result = again.flush()
        assert result.events == n_updates - CHUNK
        assert sorted(s for (s,) in _glob(archive, "events")) == list(range(1, n_updates + 1))
        assert len(_glob(archive, "rels")) == n_links
        assert {d["$id"].split("/")[1]: d["n"] for d in again.find("posts")} == _expected(ids)
        assert_wal_flushed(engine)


def test_chunks_past_the_threshold_take_the_smaller_span(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tail above CHUNK_EVENTS is flushed CHUNK_SPAN events at a time (whole WAL rows)
    until what is left fits the threshold, which then goes in one chunk; every event once."""
    monkeypatch.setattr(flush_mod, "CHUNK_EVENTS", 100)
    monkeypatch.setattr(flush_mod, "CHUNK_SPAN", 30)
    db = pq.ParqueDB(
        f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=pq.FlushPolicy(mode="manual")
    )
    try:
        eid = db.create("items", {"n": 0})["$id"].split("/", 1)[1]
        for start in range(0, 250, 10):  # WAL rows of 10 events
            with db.transaction() as tx:
                for k in range(start, start + 10):
                    tx.update("items", eid, {"$set": {"n": k + 1}})
        steps: list[str] = []
        monkeypatch.setattr(flush_mod, "CRASH_HOOK", steps.append)
        result = db.flush()
        # 251 events: chunks of 31 (the create's row of 1, then 3 rows of 10), 30, 30, 30, 30,
        # and the last 100 (no more than the threshold) together
        assert result.events == 251 and steps.count("committed") == 6
        assert [e["version"] for e in db.history(f"items/{eid}")] == list(range(1, 252))
        assert db.get("items", eid)["n"] == 250
    finally:
        db.close()
