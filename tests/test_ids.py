"""Entity ids: sqids of the counter value (core/ids.py). Ids this process encoded lately
decode without sqids, from a bounded map; every other id goes through sqids."""

from __future__ import annotations

import pytest

from parquedb_orm.core import ids


def test_recent_ids_decode_from_a_bounded_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ids, "_RECENT_MAX", 100)
    ids._RECENT.clear()
    try:
        made = {n: ids.encode_id(n) for n in range(1, 1_001)}
        assert len(ids._RECENT) == 100  # the oldest went first
        assert list(ids._RECENT.values()) == list(range(901, 1_001))
        # every id decodes, from the map or through sqids (and the check that it is canonical)
        assert all(ids.decode_id(e) == n for n, e in made.items())
        assert ids.decode_id(made[5] + "x") is None
    finally:
        ids._RECENT.clear()


def test_an_import_leaves_the_recent_ids_alone(tmp_path: object) -> None:
    """create_many's ids are not remembered: a 1,000-entity import neither grows the map
    nor pushes out the ids single creates put there (their flush decodes them from it)."""
    from pathlib import Path

    import parquedb_orm as pq

    ids._RECENT.clear()
    db = pq.ParqueDB(f"sqlite:///{Path(str(tmp_path)) / 's.db'}", archive=str(Path(str(tmp_path)) / "a"),
                     policy=pq.FlushPolicy(mode="manual"))  # fmt: skip
    try:
        single = db.create("posts", {"n": 0})["$id"].split("/", 1)[1]
        before = dict(ids._RECENT)
        made = db.create_many("posts", [{"n": i} for i in range(1, 1_001)])
        assert dict(ids._RECENT) == before and single in ids._RECENT
        # and they decode all the same, through sqids: one reserved block, in order
        numbers = [ids.decode_id(s["$id"].split("/", 1)[1]) for s in made[:50]]
        assert numbers == list(range(numbers[0] or 0, (numbers[0] or 0) + 50))
    finally:
        db.close()
        ids._RECENT.clear()


def test_id_blocks_grow_while_busy_and_start_small_again_when_idle(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy namespace reserves blocks twice as large each time (up to MAX_BLOCK): 1,000
    creates cost 4 counter reservations, not 10; after an idle spell blocks are 100 again."""
    from pathlib import Path

    import parquedb_orm as pq
    from parquedb_orm.engine import ids as pool
    from parquedb_orm.sql.counters import DEFAULT_BLOCK

    clock = [1000.0]
    monkeypatch.setattr(pool.time, "monotonic", lambda: clock[0])
    db = pq.ParqueDB(f"sqlite:///{Path(str(tmp_path)) / 's.db'}", policy=pq.FlushPolicy(mode="manual"))
    sizes: list[int] = []
    real = db.runtime.ids.reserve_block

    def spy(conn: object, ns: str, count: int, reserved: object = None) -> object:
        sizes.append(count)
        return real(conn, ns, count, reserved)  # type: ignore[arg-type]

    monkeypatch.setattr(db.runtime.ids, "reserve_block", spy)
    try:
        for i in range(3_000):
            db.create("posts", {"n": i})
        assert sizes == [100, 200, 400, 800, 1_000, 1_000]
        assert pool.MAX_BLOCK == 1_000 and DEFAULT_BLOCK == 100
        sizes.clear()
        for i in range(500):  # the last block still has 500 ids left
            db.create("posts", {"n": i})
        clock[0] += pool.BUSY_SECONDS + 1
        db.create("posts", {"n": 0})
        assert sizes == [100]
        numbers = sorted(ids.decode_id(d["$id"].split("/")[1]) or 0 for d in db.find("posts"))
        assert len(set(numbers)) == 3_501
    finally:
        db.close()
        ids._RECENT.clear()
