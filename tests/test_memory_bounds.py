"""Memory bounds of a single owner's unflushed tail (docs/scaling.md): past the bound, the
state before an entity's unflushed events is not kept in memory; a read or a flush takes
it from the archive instead, with the same answers."""

from __future__ import annotations

from pathlib import Path

import pytest

import parquedb_orm as pq
from parquedb_orm.engine import commit

MANUAL = pq.FlushPolicy(mode="manual")


def test_tail_bases_stay_bounded_and_answers_do_not_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit, "TAIL_BASE_ENTRIES", 10)
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        ids = [db.create("items", {"n": i})["$id"].split("/")[1] for i in range(40)]
        db.flush()
        with db.transaction() as tx:
            for i, eid in enumerate(ids):
                tx.update("items", eid, {"$inc": {"n": 100}, "$set": {"tag": f"t{i}"}})
        st = db.runtime.known.peek("items")
        assert st is not None and len(st.tail_base) == 10 and st.tail_events == 40
        # unflushed: states folded onto the archive's for the 30 without a remembered base
        assert [db.get("items", eid)["n"] for eid in ids] == [100 + i for i in range(40)]
        result = db.flush()
        assert result.events == 40
        assert not st.tail_base
        assert [(db.get("items", e)["n"], db.get("items", e)["version"]) for e in ids] == [
            (100 + i, 2) for i in range(40)
        ]
        con = db.duckdb()
        try:
            rows = con.execute(
                "SELECT id, json_extract(changes, '$.n.new')::INT FROM events WHERE op = 'UPDATE' ORDER BY seq"
            ).fetchall()
        finally:
            con.close()
        assert rows == [(eid, 100 + i) for i, eid in enumerate(ids)]  # each event's change from its real base
    finally:
        db.close()
    fresh = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        assert [fresh.get("items", e)["tag"] for e in ids] == [f"t{i}" for i in range(40)]
        assert [len(fresh.history(f"items/{e}")) for e in ids[:3]] == [2, 2, 2]
    finally:
        fresh.close()
