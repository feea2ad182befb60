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


def test_a_large_unflushed_tail_is_packed_and_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past TAIL_LOOSE_EVENTS the tail keeps each entity's events as one JSON string;
    get, history, find, a restart-free flush and later commits see the same events."""
    from parquedb_orm.engine import state

    monkeypatch.setattr(state, "TAIL_LOOSE_EVENTS", 25)
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        ids = [db.create("items", {"n": i, "tags": []})["$id"].split("/")[1] for i in range(30)]
        for round_ in range(3):
            with db.transaction() as tx:
                for eid in ids:
                    tx.update("items", eid, {"$inc": {"n": 100}, "$push": {"tags": f"r{round_}"}})
        st = db.runtime.known.peek("items")
        assert st is not None and st.tail.packed >= 4 and st.tail_events == 120
        assert sum(isinstance(v, str) for v in st.tail._d.values()) > 0  # some entities packed
        db.runtime.known.cache._d.clear()  # reads must fold the packed tail, not hit the cache
        for i, eid in enumerate(ids):
            got = db.get("items", eid)
            assert got is not None and (got["n"], got["tags"], got["version"]) == (300 + i, ["r0", "r1", "r2"], 4)
            assert [e["version"] for e in db.history(f"items/{eid}")] == [1, 2, 3, 4]
        found = db.find("items", {"n": {"$gte": 325}}, sort={"n": 1})
        assert [d["n"] for d in found] == [325, 326, 327, 328, 329]
        db.update("items", ids[0], {"$set": {"late": True}})  # appends to a packed entity
        assert db.get("items", ids[0])["late"] is True
        result = db.flush()
        assert result.events == 121 and len(st.tail) == 0
        got = db.get("items", ids[0])
        assert got is not None and (got["n"], got["late"], got["version"]) == (300, True, 5)
    finally:
        db.close()


def test_one_hot_entity_is_not_packed_on_every_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entity being written stays loose at a pack: many unflushed updates of one entity
    do not pack and unpack its whole history per event."""
    from parquedb_orm.engine import state

    monkeypatch.setattr(state, "TAIL_LOOSE_EVENTS", 50)
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        others = [db.create("items", {"n": i})["$id"].split("/")[1] for i in range(60)]
        hot = db.create("items", {"n": 0})["$id"].split("/")[1]
        with db.transaction() as tx:
            for _ in range(2_000):
                tx.update("items", hot, {"$inc": {"n": 1}})
        st = db.runtime.known.peek("items")
        assert st is not None
        # a pack per 50 events, each skipping the hot entity (kept loose: never re-encoded)
        assert st.tail.packed <= 2_061 // 50 + 1, st.tail.packed
        assert type(st.tail._d[hot]) is list and len(st.tail._d[hot]) == 2_001
        assert db.get("items", hot)["n"] == 2_000
        assert isinstance(st.tail._d[others[0]], str)  # the others were packed
        assert db.flush().events == 2_061
    finally:
        db.close()


def test_archived_states_are_dropped_once_find_no_longer_reads_the_namespace_whole(tmp_path: Path) -> None:
    """The in-memory find's cache of a namespace's archived states (engine/archived.py
    `states`) is kept only while the namespace has at most `max_archived_states` archived
    rows: beyond, a flush drops it instead of growing it by every entity flushed; find
    answers the same."""
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "archive", policy=MANUAL)
    try:
        archived = db.runtime.archived
        archived.max_archived_states = 25
        ids = [db.create("items", {"n": i})["$id"].split("/")[1] for i in range(20)]
        db.flush()
        assert [d["n"] for d in db.find("items", {"n": {"$gte": 15}}, sort={"n": 1})] == [15, 16, 17, 18, 19]
        assert len(archived._archived_states["items"]) == 20  # cached: 20 rows <= 25
        for i in range(20, 30):
            db.create("items", {"n": i})
        db.update("items", ids[0], {"$set": {"n": 100}})
        db.flush()
        assert "items" not in archived._archived_states  # 31 rows > 25: dropped, not grown
        got = [d["n"] for d in db.find("items", {"n": {"$gte": 25}}, sort={"n": 1})]
        assert got == [25, 26, 27, 28, 29, 100]
        assert "items" not in archived._archived_states  # read again, not kept
    finally:
        db.close()


def test_appending_to_a_packed_entity_decodes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entities updated round-robin after a pack keep their packed history packed: a new
    event waits beside it (no decode, no re-encode per write); reads see the whole list in
    order, and the next pack joins the two as text."""
    from parquedb_orm.core.events import UPDATE, Event
    from parquedb_orm.engine import state

    monkeypatch.setattr(state, "TAIL_LOOSE_EVENTS", 50)
    tail = state.Tail()
    ids = [f"e{k}" for k in range(10)]
    seq = 0
    for _round in range(6):  # 60 events: one pack at the 51st
        for eid in ids:
            seq += 1
            tail.add(Event(seq, seq, UPDATE, eid, None, {"$set": {"n": seq}}, seq))
    assert tail.packed == 1
    unpacks = 0
    real = state.Tail._unpack

    def counting(text: str) -> list[Event]:
        nonlocal unpacks
        unpacks += 1
        return real(text)

    monkeypatch.setattr(state.Tail, "_unpack", staticmethod(counting))
    for eid in ids[:5]:  # written again after the pack
        seq += 1
        tail.add(Event(seq, seq, UPDATE, eid, None, {"$set": {"n": seq}}, seq))
    assert unpacks == 0
    assert sum(isinstance(v, str) for v in tail._d.values()) >= 8
    for eid in ids:
        seqs = [ev.seq for ev in tail.get(eid)]
        assert seqs == sorted(seqs) and len(seqs) == (7 if eid in ids[:5] else 6)
    tail.pack()
    assert all(isinstance(v, str) for v in tail._d.values()) and not tail._after
    assert [ev.seq for ev in tail.get(ids[0])] == [1, 11, 21, 31, 41, 51, 61]


def test_a_trim_decodes_only_the_entities_it_reaches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunked flush trims the tail after every chunk: entities whose first event is
    above the mark stay packed and are not decoded; an entity cut in two stays packed with
    its later events; the counts and first versions left are returned."""
    from parquedb_orm.core.events import UPDATE, Event
    from parquedb_orm.engine import state

    monkeypatch.setattr(state, "TAIL_LOOSE_EVENTS", 12)
    tail = state.Tail()
    seq = 0
    for eid, count in (("a", 4), ("b", 3), ("c", 5)):  # a: 1-4, b: 5-7, c: 8-12
        for version in range(2, 2 + count):
            seq += 1
            tail.add(Event(seq, seq, UPDATE, eid, None, {"$set": {"n": seq}}, version))
    tail.add(Event(13, 13, UPDATE, "d", None, {"$set": {"n": 13}}, 2))  # the pack leaves d loose
    tail.add(Event(14, 14, UPDATE, "a", None, {"$set": {"n": 14}}, 6))  # waits beside a's packed text
    assert tail.packed == 1 and isinstance(tail._d["c"], str) and type(tail._d["d"]) is list
    unpacked: list[str] = []
    real = state.Tail._unpack
    monkeypatch.setattr(state.Tail, "_unpack", staticmethod(lambda text: unpacked.append(text) or real(text)))

    removed, changed = tail.trim(6)  # all of a's packed events, and b's first two
    assert (removed, changed) == (6, {"a": 6, "b": 4})
    assert len(unpacked) == 2  # a and b; c (first event 8) and d (13) are left as they are
    assert isinstance(tail._d["a"], str) and isinstance(tail._d["b"], str) and isinstance(tail._d["c"], str)
    assert [e.seq for e in tail.get("a")] == [14] and [e.seq for e in tail.get("b")] == [7]
    assert [e.seq for e in tail.get("c")] == [8, 9, 10, 11, 12] and not tail._after

    removed, changed = tail.trim(13)
    assert (removed, changed) == (7, {"b": None, "c": None, "d": None})
    assert list(tail) == ["a"] and [e.version for e in tail.get("a")] == [6]


def test_a_relationship_trim_cuts_the_flushed_head_in_place() -> None:
    from parquedb_orm.core.events import RelEvent
    from parquedb_orm.engine.state import RelTail

    rt = RelTail()
    pairs = [("a", "x/1"), ("b", "x/1"), ("a", "x/2"), ("c", "x/3"), ("a", "x/1")]
    for seq, (src, to) in enumerate(pairs, start=1):
        rt.append(RelEvent(seq, seq, "link", src, "refs", to, None, None, None))
    index = rt._from
    rt.trim(3)
    assert rt._from is index  # not rebuilt
    assert [e.seq for e in rt] == [4, 5]
    assert [e.seq for e in rt.of_source("a")] == [5] and rt.of_source("b") == []
    assert [e.seq for e in rt.of_target("x/1")] == [5] and rt.of_target("x/2") == []
    assert sorted(rt._from) == ["a", "c"] and sorted(rt._to) == ["x/1", "x/3"]
    rt.insert(RelEvent(2, 2, "link", "z", "refs", "x/9", None, None, None))  # a late event below the mark
    rt.trim(4)  # out of order: the index is rebuilt, exactly
    assert [e.seq for e in rt] == [5] and sorted(rt._from) == ["a"] and sorted(rt._to) == ["x/1"]
