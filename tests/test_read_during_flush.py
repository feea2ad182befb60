"""A read that folds the WAL tail onto the archive looks the archive up with the lock
released, then folds under it: a flush that moves the entity's events from the tail to a
file in between must make the read look again (found by the soak: a `get` of a committed,
never deleted entity returned None)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import parquedb_orm as pq
from parquedb_orm.engine.archived import ArchivedReads


def test_a_flush_between_lookup_and_fold_does_not_lose_an_entity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "a", policy=pq.FlushPolicy(mode="manual"))
    try:
        old = db.create("items", {"n": 1})["$id"].split("/", 1)[1]
        db.flush()  # archived: a read of it looks the archive up
        new = db.create("items", {"n": 2})["$id"].split("/", 1)[1]  # its CREATE is in the tail
        rt = db.runtime
        rt.known.cache._d.clear()
        real = ArchivedReads.lookup
        flushed: list[int] = []

        def lookup(self: ArchivedReads, *args: Any, **kwargs: Any) -> Any:
            found = real(self, *args, **kwargs)
            if not flushed:  # the flush lands between the lookup and the fold
                flushed.append(db.flush().events)
            return found

        monkeypatch.setattr(ArchivedReads, "lookup", lookup)
        st = rt.known.ns("items")
        with rt.engine.connect() as conn:
            got = rt.reads._load(conn, st, [old, new])
        assert flushed == [1]
        assert got[old][1] is not None and got[old][1]["n"] == 1
        assert got[new][0] == 1 and got[new][1] is not None and got[new][1]["n"] == 2
        monkeypatch.setattr(ArchivedReads, "lookup", real)
        for _attempt in ("cached", "read again"):  # nothing wrong was cached either
            state = db.get("items", new)
            assert state is not None and state["n"] == 2
            rt.known.cache._d.clear()
    finally:
        db.close()
