"""Relationships looked up per reference (engine/rels.py): outbound and inbound links and
related entities across the archive, the WAL tail and the caller's transaction, after
flushes, unlinks and re-links, in shared mode, and with a cache so small it evicts on
every lookup; history's link entries; what a lookup and the first commit read."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from backends import backend_fixtures, url_of
from sqlalchemy import Engine, create_engine, event

import parquedb_orm as pq_orm
from parquedb_orm.archive import parquet
from parquedb_orm.core.events import LINK, UNLINK, RelEvent
from parquedb_orm.engine import rels as rels_mod
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.engine.rels import DEFAULT_LINK_CACHE_LINKS, DEFAULT_LINK_CACHE_REFS, Relationships
from parquedb_orm.sql import manifest

BACKENDS = ["sqlite-file", "postgresql", "mysql"]
MANUAL = pq_orm.FlushPolicy(mode="manual")


kind, engine = backend_fixtures(BACKENDS)


class Model:
    """The links the store should hold: (from, predicate, to) -> reverse."""

    def __init__(self) -> None:
        self.links: dict[tuple[str, str, str], str | None] = {}

    def link(self, db: pq_orm.ParqueDB, a: str, pred: str, b: str, reverse: str | None = None) -> None:
        db.link(a, pred, b, reverse=reverse)
        self.links[(a, pred, b)] = reverse

    def unlink(self, db: pq_orm.ParqueDB, a: str, pred: str, b: str) -> None:
        db.unlink(a, pred, b)
        self.links.pop((a, pred, b), None)

    def expect(self, ref: str, direction: str, predicate: str | None = None) -> set[tuple[str, str, str, str | None]]:
        out = set()
        for (a, pred, b), rev in self.links.items():
            side = a if direction == "outbound" else b
            if side != ref:
                continue
            if predicate is None or pred == predicate or (direction == "inbound" and rev == predicate):
                out.add((a, pred, b, rev))
        return out


def got(db: Any, ref: str, direction: str, predicate: str | None = None) -> set[tuple[str, str, str, str | None]]:
    return {
        (lk["from"], lk["predicate"], lk["to"], lk["reverse"]) for lk in db.links(ref, predicate, direction=direction)
    }


def check(db: Any, model: Model, refs: list[str], predicates: tuple[str | None, ...]) -> None:
    for ref in refs:
        for direction in ("outbound", "inbound"):
            for pred in predicates:
                assert got(db, ref, direction, pred) == model.expect(ref, direction, pred), (ref, direction, pred)
            related = {d["$id"] for d in db.related(ref, direction=direction)}
            others = {(a if direction == "inbound" else b) for a, _p, b, _r in model.expect(ref, direction)}
            assert related == others, (ref, direction)


PREDICATES = (None, "wrote", "author", "tagged", "posts", "follows")


def build(db: pq_orm.ParqueDB, model: Model, rng: random.Random) -> list[str]:
    """Users, posts and tags, linked over three flushes, some unlinked and re-linked."""
    users = [db.create("users", {"n": i})["$id"] for i in range(4)]
    posts = [db.create("posts", {"n": i})["$id"] for i in range(6)]
    tags = [db.create("tags", {"n": i})["$id"] for i in range(3)]
    for i, p in enumerate(posts):
        model.link(db, users[i % 4], "wrote", p, "author")
        model.link(db, p, "tagged", tags[i % 3], "posts")
    model.link(db, users[0], "follows", users[1])
    db.flush()  # archived
    model.unlink(db, posts[0], "tagged", tags[0])
    model.link(db, posts[1], "tagged", tags[0], "posts")
    model.link(db, users[1], "follows", users[0])
    db.flush()  # archived, across two files
    model.link(db, posts[0], "tagged", tags[0], "posts")  # re-linked after an archived unlink
    model.unlink(db, users[0], "follows", users[1])  # unlinked while the link is archived
    for _ in range(6):  # in the WAL tail
        a, b = rng.choice(posts), rng.choice(tags)
        if rng.random() < 0.5:
            model.link(db, a, "tagged", b, "posts")
        else:
            model.unlink(db, a, "tagged", b)
    return users + posts + tags


def test_links_and_related_across_archive_tail_and_unit(engine: Engine, tmp_path: Path) -> None:
    db = pq_orm.ParqueDB(engine, archive=tmp_path / "archive", policy=MANUAL)
    model = Model()
    try:
        refs = build(db, model, random.Random(1))
        check(db, model, refs, PREDICATES)
        # the transaction's own links and unlinks come first, uncommitted
        users, posts, tags = refs[:4], refs[4:10], refs[10:]
        with db.transaction() as st:
            st.link(users[3], "wrote", posts[0], reverse="author")
            st.unlink(posts[1], "tagged", tags[0])
            mine = {(lk["from"], lk["to"]) for lk in st.links(posts[0], "author", direction="inbound")}
            assert mine == {(users[0], posts[0]), (users[3], posts[0])}
            assert posts[1] not in {d["$id"] for d in st.related(tags[0], "posts", direction="inbound")}
            assert posts[1] in {d["$id"] for d in db.related(tags[0], "posts", direction="inbound")}  # not committed
        model.links[(users[3], "wrote", posts[0])] = "author"
        model.links.pop((posts[1], "tagged", tags[0]), None)
        check(db, model, refs, PREDICATES)
        db.flush()
        check(db, model, refs, PREDICATES)
    finally:
        db.close()
    # a fresh process: nothing cached, everything from the archive and the WAL
    fresh = pq_orm.ParqueDB(create_engine(url_of_engine(engine, tmp_path)), archive=tmp_path / "archive", policy=MANUAL)
    try:
        check(fresh, model, refs, PREDICATES)
        model.link(fresh, refs[5], "tagged", refs[12], "posts")
        model.unlink(fresh, refs[4], "tagged", refs[10])
        check(fresh, model, refs, PREDICATES)
    finally:
        fresh.close()
        fresh.engine.dispose()


def url_of_engine(engine: Engine, tmp_path: Path) -> str:
    name = engine.dialect.name
    return url_of({"sqlite": "sqlite-file", "postgresql": "postgresql", "mysql": "mysql"}[name], tmp_path)


def test_a_tiny_cache_gives_the_same_answers(engine: Engine, tmp_path: Path) -> None:
    db = pq_orm.ParqueDB(engine, archive=tmp_path / "archive", policy=MANUAL)
    rels = db.runtime.rels
    for cache in (rels.outbound, rels.inbound):
        cache.max_refs, cache.max_links = 2, 3
    model = Model()
    try:
        refs = build(db, model, random.Random(2))
        for _ in range(2):  # the second round meets whatever the first left cached
            check(db, model, refs, PREDICATES)
        assert rels.outbound.evictions > 0 and rels.inbound.evictions > 0
        assert len(rels.outbound) <= 2 and rels.outbound.links <= 3
        assert len(rels.inbound) <= 2 and rels.inbound.links <= 3
        # commits keep what is cached current, evicted or not
        model.link(db, refs[0], "follows", refs[2])
        model.unlink(db, refs[4], "wrote", refs[4])  # a no-op unlink
        check(db, model, refs, PREDICATES)
    finally:
        db.close()


def test_defaults_are_bounded() -> None:
    assert DEFAULT_LINK_CACHE_REFS == 10_000 and DEFAULT_LINK_CACHE_LINKS == 50_000
    cache = rels_mod.LinkCache(max_refs=3, max_links=100)
    for i in range(10):
        cache.put(f"a/{i}", {})
    assert len(cache) == 3 and cache.evictions == 7


def statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    return seen


def test_a_cached_ref_needs_no_sql_and_commits_keep_it_current(engine: Engine, tmp_path: Path) -> None:
    db = pq_orm.ParqueDB(engine, archive=tmp_path / "archive", policy=MANUAL)
    try:
        a, b, c = (db.create("n", {"i": i})["$id"] for i in range(3))
        db.link(a, "to", b, reverse="from")
        db.flush()
        assert got(db, a, "outbound") == {(a, "to", b, "from")}
        assert got(db, b, "inbound", "from") == {(a, "to", b, "from")}
        seen = statements(engine)
        assert got(db, a, "outbound") == {(a, "to", b, "from")}
        assert got(db, b, "inbound") == {(a, "to", b, "from")}
        assert seen == []
        db.link(a, "to", c)
        db.unlink(a, "to", b)
        seen.clear()
        assert got(db, a, "outbound") == {(a, "to", c, None)}
        assert got(db, b, "inbound") == set()
        assert seen == []
    finally:
        db.close()


def test_shared_handles_see_each_other(kind: str, engine: Engine, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    a = pq_orm.ParqueDB(engine, archive=archive, policy=MANUAL, shared=True)
    other = create_engine(url_of(kind, tmp_path))
    b = pq_orm.ParqueDB(other, archive=archive, policy=MANUAL, shared=True)
    model = Model()
    try:
        x, y, z = (a.create("n", {"i": i})["$id"] for i in range(3))
        refs = [x, y, z]
        model.link(a, x, "to", y, "from")
        check(b, model, refs, (None, "to", "from"))
        model.link(b, y, "to", z, "from")
        model.unlink(b, x, "to", y)
        check(a, model, refs, (None, "to", "from"))
        b.flush()
        check(a, model, refs, (None, "to", "from"))
        model.link(a, x, "to", y, "from")  # re-linked after an archived unlink
        a.flush()
        check(b, model, refs, (None, "to", "from"))
        check(a, model, refs, (None, "to", "from"))
        assert len(a.runtime.rels.outbound) == 0 and len(b.runtime.rels.inbound) == 0  # nothing cached
    finally:
        b.close()
        a.close()
        other.dispose()


def test_history_link_entries(engine: Engine, tmp_path: Path) -> None:
    db = pq_orm.ParqueDB(engine, archive=tmp_path / "archive", policy=MANUAL)
    try:
        a, b, c = (db.create("n", {"i": i})["$id"] for i in range(3))
        db.link(a, "to", b, reverse="from", data={"w": 1})
        db.link(b, "to", c)  # another entity's: not in a's history
        db.flush()
        db.unlink(a, "to", b)
        db.link(a, "to", c)
        with db.transaction() as st:
            st.link(a, "to", b)
            entries = [(h["op"], h["data"]["to"]) for h in st.history(a) if h["op"] in (LINK, UNLINK)]
            assert entries == [(LINK, b), (UNLINK, b), (LINK, c), (LINK, b)]
        hist = [h for h in db.history(a) if h["op"] in (LINK, UNLINK)]
        assert [(h["op"], h["data"]["to"]) for h in hist] == [(LINK, b), (UNLINK, b), (LINK, c), (LINK, b)]
        assert hist[0]["data"] == {"predicate": "to", "to": b, "reverse": "from", "data": {"w": 1}}
        assert [h["seq"] for h in hist] == sorted(h["seq"] for h in hist)
        db.flush()
        assert [(h["op"], h["data"]["to"]) for h in db.history(a) if h["op"] in (LINK, UNLINK)] == [
            (LINK, b),
            (UNLINK, b),
            (LINK, c),
            (LINK, b),
        ]
    finally:
        db.close()


def test_the_first_commit_reads_no_archived_link(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "archive"
    db = pq_orm.ParqueDB(engine, archive=archive, policy=MANUAL)
    try:
        a, b, c = (db.create("n", {"i": i})["$id"] for i in range(3))
        db.link(a, "to", b)
        db.flush()
        db.link(b, "to", c)  # unflushed
    finally:
        db.close()
    fresh = pq_orm.ParqueDB(create_engine(url_of_engine(engine, tmp_path)), archive=archive, policy=MANUAL)
    try:

        def refuse(*_a: Any, **_k: Any) -> Any:
            raise AssertionError("a commit read an archived rels file")

        with monkeypatch.context() as m:
            m.setattr(Relationships, "_inbound_of_file", refuse)
            m.setattr(ArchivedReads, "rel_events_of", refuse)
            m.setattr(ArchivedReads, "rel_events", refuse)
            fresh.link(c, "to", a)
        rels = fresh.runtime.rels
        assert rels.loaded and len(rels.outbound) == 0 and len(rels.inbound) == 0
        with fresh.runtime.known.lock:
            assert [ev.to for ev in fresh.runtime.known.ns("n").rel_tail] == [c, a]
        assert fresh.flush().rel_events == 2  # taken from memory, which equals the table
        assert got(fresh, a, "inbound") == {(c, "to", a, None)}
        assert got(fresh, b, "inbound") == {(a, "to", b, None)}
    finally:
        fresh.close()
        fresh.engine.dispose()


def _rels_file(path: Path, events: list[RelEvent], rows_per_group: int) -> None:
    events = sorted(events, key=lambda e: (e.from_id, e.seq))  # as flushes write them
    pq.write_table(parquet.rels_table("n", events), path, row_group_size=rows_per_group, write_statistics=True)


def test_a_lookup_reads_only_the_row_groups_that_can_hold_it(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 links in 1,024-row groups sorted by from_id: an outbound lookup reads the one
    row group that can hold the id; an inbound one reads the `to` column of the groups
    whose `to` min/max cover the ref, then whole rows of the groups that match."""
    db = pq_orm.ParqueDB(engine, archive=tmp_path / "archive", policy=MANUAL)
    try:
        evs = [
            RelEvent(i + 1, 1_000 + i, LINK, f"e{i // 5:05d}", "to", f"t/x{i % 7}", None, None, None)
            for i in range(5_000)
        ]
        evs.append(RelEvent(6_000, 9_000, LINK, "e00500", "to", "t/x3b", "back", None, {"k": 1}))
        rel = "rels/ns=s/000000000001-000000006000.parquet"
        (tmp_path / "archive" / "rels" / "ns=s").mkdir(parents=True)
        _rels_file(tmp_path / "archive" / rel, evs, 1024)
        size = (tmp_path / "archive" / rel).stat().st_size
        db.runtime.archived.put_files("rels", [manifest.Entry("rels", "s", 1, 6_000, rel, len(evs), size)], ["s"])
        reads: list[tuple[tuple[int, ...], tuple[str, ...] | None]] = []
        original = pq.ParquetFile.read_row_groups

        def spy(self: pq.ParquetFile, groups: list[int], columns: list[str] | None = None, **kw: Any) -> pa.Table:
            reads.append((tuple(groups), None if columns is None else tuple(columns)))
            return original(self, groups, columns=columns, **kw)

        monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
        rels = db.runtime.rels
        with engine.connect() as conn:
            out = rels.outbound_events(conn, "s", "e00500")
        assert [e.seq for e in out] == [2501, 2502, 2503, 2504, 2505, 6000]
        assert reads == [((2,), None)]  # rows 2500..2505: the third group, alone
        reads.clear()
        out = rels._inbound_of_file(rel, "t/x3b")
        assert [(e.from_id, e.reverse, e.data) for e in out] == [("e00500", "back", {"k": 1})]
        # the first lookup in a file reads its `to` column (an index of which groups hold
        # each target), then the one group that matches
        assert reads == [((0, 1, 2, 3, 4), ("to",)), ((2,), None)]
        reads.clear()
        assert len(rels._inbound_of_file(rel, "t/x3b")) == 1
        assert reads == [((2,), None)]  # the index is kept: only the matching group
        reads.clear()
        assert rels._inbound_of_file(rel, "u/none") == []  # above every group's max: no read
        assert reads == []
        assert len(rels._inbound_of_file(rel, "t/x3")) == len([e for e in evs if e.to == "t/x3"])
        # bounded: an index that would not fit is not kept (here: room for 7 targets, the
        # file has 8), so each lookup reads the `to` column again
        monkeypatch.setattr(rels_mod, "TO_INDEX_KEYS", 7)
        rels._to_index.clear()
        rels._to_keys = 0
        reads.clear()
        assert len(rels._inbound_of_file(rel, "t/x3b")) == 1
        assert len(rels._inbound_of_file(rel, "t/x3b")) == 1
        assert [cols for _g, cols in reads] == [("to",), None, ("to",), None]
        assert rels._to_keys == 0 and not rels._to_index
    finally:
        db.close()
