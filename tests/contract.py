"""The store contract: one abstract test case that every backend runs.

Each concrete class (tests/test_contract_*.py) says only which database to use,
through `backend`; every assertion lives here, so all backends meet the same bar.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from backends import assert_wal_flushed, make_engine, reset_schema
from parquedb_meter import meter
from sqlalchemy import Engine, String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import parquedb_orm as pq
from parquedb_orm.sql.models import Counter, EventsWal, RelsWal

WAL_TABLES = ("events_wal", "rels_wal")
OUR_TABLES = ("events_wal", "rels_wal", "entity_snapshots", "counters", "archive_manifest")


def sqid(entity: dict[str, Any]) -> str:
    return str(entity["$id"]).split("/")[1]


def row_count(engine: Engine, model: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def writes(m: Any) -> list[str]:
    return [r.sql for r in m.records if re.match(r"\s*(INSERT|UPDATE|DELETE)", r.sql, re.I)]


class AppBase(DeclarativeBase):
    pass


class Order(AppBase):
    __tablename__ = "app_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(50))


class StoreContract:
    backend: str = ""

    # ------------------------------------------------------------------ factory
    @pytest.fixture
    def engine(self, tmp_path: Path) -> Iterator[Engine]:
        engine = make_engine(self.backend, tmp_path)
        yield engine
        if not self.backend.startswith("sqlite"):
            AppBase.metadata.drop_all(engine)
            reset_schema(engine)
        engine.dispose()

    @pytest.fixture
    def db(self, engine: Engine) -> Iterator[pq.ParqueDB]:
        db = pq.ParqueDB(engine)
        self._opened = [db]
        yield db
        for one in self._opened:
            one.close()

    def restart(self, db: pq.ParqueDB) -> pq.ParqueDB:
        """A new process's view of the same database: every cache cold."""
        db.close()
        again = pq.ParqueDB(db.engine)
        self._opened.append(again)
        return again

    # ------------------------------------------------------------------ entities
    def test_create_get_roundtrip(self, db: pq.ParqueDB) -> None:
        e = db.create("posts", {"$type": "Post", "name": "Hello", "views": 0, "tags": ["a"]}, actor="users/ann")
        assert e["$id"].startswith("posts/")
        assert e["$type"] == "Post" and e["version"] == 1 and e["createdBy"] == "users/ann"
        assert isinstance(e["createdAt"], datetime) and e["createdAt"].tzinfo is not None
        assert db.get("posts", sqid(e)) == e
        db2 = self.restart(db)
        assert db2.get("posts", sqid(e)) == e
        assert db2.get("posts", "zzzzzz") is None

    def test_update_operators(self, db: pq.ParqueDB) -> None:
        e = db.create(
            "posts",
            {"name": "p", "views": 1, "score": 5, "top": 7, "tags": ["a"], "drop": ["a", "b", "a"], "set": ["b"],
             "old": 1, "n": {"x": 1}},
        )  # fmt: skip
        when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        out = db.update(
            "posts",
            sqid(e),
            {
                "$set": {"title": "T", "n.y": 2, "at": when},
                "$inc": {"views": 2},
                "$mul": {"score": 3},
                "$min": {"low": 4},
                "$max": {"top": 100},
                "$push": {"tags": {"$each": ["c", "d"]}},
                "$pull": {"drop": "a"},
                "$addToSet": {"set": "b"},
                "$rename": {"old": "renamed"},
                "$unset": {"name": ""},
                "$currentDate": {"touched": True},
            },
            actor="users/bob",
        )
        assert out["title"] == "T" and out["n"] == {"x": 1, "y": 2} and out["at"] == when
        assert out["views"] == 3 and out["score"] == 15 and out["top"] == 100 and out["low"] == 4
        assert out["tags"] == ["a", "c", "d"] and out["drop"] == ["b"] and out["set"] == ["b"]
        assert "old" not in out and out["renamed"] == 1 and "name" not in out
        assert isinstance(out["touched"], datetime)
        assert out["version"] == 2 and out["updatedBy"] == "users/bob"
        assert self.restart(db).get("posts", sqid(e)) == out
        # two operators on one field (MongoDB refuses it too): a typed error, nothing written
        with pytest.raises(pq.ValidationError, match="conflicting paths"):
            db.update("posts", sqid(e), {"$mul": {"score": 3}, "$max": {"score": 100}})
        assert db.get("posts", sqid(e))["version"] == 2

    def test_delete_restore_hard_delete(self, db: pq.ParqueDB) -> None:
        e = db.create("posts", {"name": "p"})
        assert db.delete("posts", sqid(e), actor="users/x") is True
        assert db.get("posts", sqid(e)) is None
        gone = db.get("posts", sqid(e), include_deleted=True)
        assert gone is not None and gone["deletedBy"] == "users/x" and gone["version"] == 2
        assert db.delete("posts", sqid(e)) is False
        back = db.restore("posts", sqid(e))
        assert "deletedAt" not in back and back["version"] == 3
        db.delete("posts", sqid(e), hard=True)
        assert db.get("posts", sqid(e), include_deleted=True) is None
        db2 = self.restart(db)
        assert db2.get("posts", sqid(e), include_deleted=True) is None
        with pytest.raises(pq.EntityNotFoundError):
            db2.update("posts", sqid(e), {"$set": {"a": 1}})

    def test_find_filters_sort_paging(self, db: pq.ParqueDB) -> None:
        for i in range(10):
            db.create("items", {"name": f"i{i}", "n": i, "even": i % 2 == 0, "tag": "x" if i < 5 else "y"})
        extra = db.create("items", {"name": "nodata"})
        db.delete("items", sqid(db.find("items", {"n": 9})[0]))

        def names(**kw: Any) -> list[str]:
            return [d["name"] for d in db.find("items", **kw)]

        assert names(filter={"n": {"$gt": 6}}) == ["i7", "i8"]
        assert names(filter={"n": {"$gte": 7}}, include_deleted=True) == ["i7", "i8", "i9"]
        assert names(filter={"n": {"$lt": 2}}) == ["i0", "i1"]
        assert names(filter={"n": {"$lte": 1, "$ne": 0}}) == ["i1"]
        assert names(filter={"n": {"$in": [1, 3]}}) == ["i1", "i3"]
        assert len(names(filter={"n": {"$nin": [1, 3]}})) == 8  # 11 - 1 deleted - 2
        assert names(filter={"n": {"$exists": False}}) == ["nodata"]
        assert names(filter={"$or": [{"n": 0}, {"n": 8}]}) == ["i0", "i8"]
        assert names(filter={"$and": [{"even": True}, {"tag": "y"}]}) == ["i6", "i8"]
        assert names(filter={"$not": {"tag": "x"}, "n": {"$exists": True}}) == ["i5", "i6", "i7", "i8"]
        assert names(filter={"n": {"$not": {"$gt": 1}}, "tag": "x"}) == ["i0", "i1"]
        assert names(filter={"n": {"$exists": True}}, sort={"n": -1}, limit=3) == ["i8", "i7", "i6"]
        assert names(filter={"n": {"$exists": True}}, sort={"n": 1}, skip=2, limit=2) == ["i2", "i3"]
        assert names(filter={"$id": extra["$id"]}) == ["nodata"]
        assert self.restart(db).find("items", {"n": {"$gt": 6}}) == db.find("items", {"n": {"$gt": 6}})

    def test_history_and_as_of(self, db: pq.ParqueDB) -> None:
        e = db.create("posts", {"name": "p", "views": 0})
        t1 = datetime.now(UTC)
        db.update("posts", sqid(e), {"$inc": {"views": 1}})
        db.update("posts", sqid(e), {"$set": {"name": "q"}})
        db.delete("posts", sqid(e))
        ops = [h["op"] for h in db.history(e["$id"])]
        assert ops == ["CREATE", "UPDATE", "UPDATE", "DELETE"]
        assert db.get("posts", sqid(e), as_of=1) == e
        v2 = db.get("posts", sqid(e), as_of=2)
        assert v2 is not None and v2["views"] == 1 and v2["name"] == "p"
        assert db.get("posts", sqid(e), as_of=t1) == e
        assert db.get("posts", sqid(e), as_of=t1 - timedelta(days=1)) is None
        assert db.get("posts", sqid(e), as_of=4) is None
        db2 = self.restart(db)
        assert [h["op"] for h in db2.history(e["$id"])] == ops
        assert db2.get("posts", sqid(e), as_of=2) == v2

    # ------------------------------------------------------------------ relationships
    def test_links_outbound_inbound(self, db: pq.ParqueDB) -> None:
        ann = db.create("users", {"name": "Ann"})
        bob = db.create("users", {"name": "Bob"})
        p1 = db.create("posts", {"name": "p1"})
        p2 = db.create("posts", {"name": "p2"})
        db.link(p1["$id"], "author", ann["$id"], reverse="posts", data={"role": "main"})
        db.link(p2["$id"], "author", ann["$id"], reverse="posts")
        db.link(p2["$id"], "editor", bob["$id"])
        db.update("posts", sqid(p1), {"$link": {"editor": [bob["$id"]]}})
        assert [e["name"] for e in db.related(p1["$id"], "author")] == ["Ann"]
        assert sorted(e["name"] for e in db.related(p2["$id"])) == ["Ann", "Bob"]
        assert [e["name"] for e in db.related(ann["$id"], direction="inbound")] == ["p1", "p2"]
        assert [e["name"] for e in db.related(ann["$id"], "posts", direction="inbound")] == ["p1", "p2"]
        assert [e["name"] for e in db.related(bob["$id"], "editor", direction="inbound")] == ["p2", "p1"]
        assert db.links(p1["$id"], "author")[0]["data"] == {"role": "main"}
        db.unlink(p2["$id"], "author", ann["$id"])
        db.update("posts", sqid(p1), {"$unlink": {"editor": bob["$id"]}})
        assert [e["name"] for e in db.related(ann["$id"], direction="inbound")] == ["p1"]
        assert [e["name"] for e in db.related(bob["$id"], direction="inbound")] == ["p2"]
        db.delete("posts", sqid(p1))
        assert db.related(ann["$id"], direction="inbound") == []
        assert len(db.related(ann["$id"], direction="inbound", include_deleted=True)) == 1
        db2 = self.restart(db)
        assert [e["name"] for e in db2.related(bob["$id"], direction="inbound")] == ["p2"]
        assert [e["name"] for e in db2.related(ann["$id"], direction="inbound", include_deleted=True)] == ["p1"]
        assert [h["op"] for h in db2.history(p2["$id"])] == ["CREATE", "LINK", "LINK", "UNLINK"]

    # ------------------------------------------------------------------ rows and statements
    def test_single_create_is_one_wal_row_and_counters_amortised(self, db: pq.ParqueDB) -> None:
        db.create("warm", {"name": "first namespace use"})
        with meter(db.engine) as m:
            for i in range(200):
                db.create("posts", {"name": f"p{i}"})
        assert m.inserted_rows("events_wal") == 200  # exactly one WAL row per single-create commit
        assert m.inserted_rows("rels_wal") == 0
        writes_counters = re.compile(r"\s*(UPDATE|INSERT( OR IGNORE| IGNORE)? INTO) counters\b", re.I)
        counter_sql = [r for r in m.records if writes_counters.match(r.sql)]
        counter_rows = sum(r.rows_affected for r in counter_sql)
        assert counter_rows <= 2, [r.sql for r in counter_sql]  # a block of 100 ids per row
        assert row_count(db.engine, EventsWal) == 201

    def test_batch_of_100_creates_is_one_wal_row(self, db: pq.ParqueDB) -> None:
        with meter(db.engine) as m, db.transaction() as tx:
            for i in range(100):
                tx.create("posts", {"name": f"p{i}"})
        assert m.inserted_rows("events_wal") == 1
        with db.engine.connect() as conn:
            assert conn.execute(select(EventsWal.event_count)).scalars().all() == [100]

    def test_get_after_write_costs_no_statement(self, db: pq.ParqueDB) -> None:
        e = db.create("posts", {"name": "p", "views": 0})
        with meter(db.engine) as m:
            assert db.get("posts", sqid(e)) == e
        assert m.statements == 0
        u = db.update("posts", sqid(e), {"$inc": {"views": 1}})
        with meter(db.engine) as m:
            assert db.get("posts", sqid(e)) == u
        assert m.statements == 0

    def test_cold_get_is_two_indexed_statements(self, db: pq.ParqueDB) -> None:
        made = [db.create("posts", {"name": f"p{i}"}) for i in range(50)]
        db2 = self.restart(db)
        with meter(db2.engine) as m:
            assert db2.get("posts", sqid(made[17])) == made[17]
        assert m.statements <= 2, [r.sql for r in m.records]
        for rec in m.records:
            assert re.search(r"\bWHERE\b.*\bns\b", rec.sql, re.S), rec.sql  # a seek on the primary-key prefix

    def test_version_conflict_writes_nothing(self, db: pq.ParqueDB) -> None:
        e = db.create("posts", {"name": "p"})
        db.update("posts", sqid(e), {"$set": {"a": 1}}, expected_version=1)
        before = row_count(db.engine, EventsWal)
        with meter(db.engine) as m, pytest.raises(pq.VersionConflictError):
            db.update("posts", sqid(e), {"$set": {"a": 2}}, expected_version=1)
        assert writes(m) == []
        assert row_count(db.engine, EventsWal) == before
        assert db.get("posts", sqid(e))["a"] == 1  # type: ignore[index]
        with pytest.raises(pq.VersionConflictError):
            db.delete("posts", sqid(e), expected_version=5)

    # ------------------------------------------------------------------ bad input
    @pytest.mark.parametrize("ns", ["", "a/b", "..", "a b", "a.b", "9x", "x" * 65, None, "ns\n"])
    def test_bad_namespace_rejected(self, db: pq.ParqueDB, ns: Any) -> None:
        with meter(db.engine) as m, pytest.raises(pq.InvalidNamespaceError):
            db.create(ns, {"name": "x"})
        assert writes(m) == []

    def test_bad_input_typed_errors_and_nothing_written(self, db: pq.ParqueDB) -> None:
        e = db.create("posts", {"name": "p", "s": "text"})
        before = (row_count(db.engine, EventsWal), row_count(db.engine, RelsWal), row_count(db.engine, Counter))
        cases: list[tuple[type[Exception], Any]] = [
            (pq.UnknownOperatorError, lambda: db.update("posts", sqid(e), {"$frobnicate": {"a": 1}})),
            (pq.UnknownOperatorError, lambda: db.find("posts", {"n": {"$regex": "x"}})),
            (pq.SerializationError, lambda: db.create("posts", {"blob": object()})),
            (pq.SerializationError, lambda: db.create("posts", {"f": float("nan")})),
            (pq.SerializationError, lambda: db.update("posts", sqid(e), {"$set": {"b": {1, 2}}})),
            (pq.ValidationError, lambda: db.update("posts", sqid(e), {"$inc": {"s": 1}})),
            (pq.ValidationError, lambda: db.update("posts", sqid(e), {"$set": {"version": 9}})),
            (pq.ValidationError, lambda: db.create("posts", {"$id": "posts/x"})),
            (pq.ValidationError, lambda: db.create("posts", "not a dict")),
            (pq.EntityNotFoundError, lambda: db.update("posts", "UkLWZg0", {"$set": {"a": 1}})),
            (pq.EntityNotFoundError, lambda: db.delete("posts", "Xy12ab")),
            (pq.EntityNotFoundError, lambda: db.link(e["$id"], "author", "users/Xy12ab")),
            (pq.InvalidIdError, lambda: db.link(e["$id"], "author", "users/../etc")),
            (pq.InvalidIdError, lambda: db.link(e["$id"], "author", "not-a-ref")),
            (pq.InvalidIdError, lambda: db.get("posts", "a/b")),
            (pq.ValidationError, lambda: db.link(e["$id"], "bad predicate", e["$id"])),
            (pq.ValidationError, lambda: db.find("posts", sort={"n": 2})),
            (pq.ValidationError, lambda: db.update("posts", sqid(e), {"$set": {"a": 1}}, expected_version="1")),
        ]
        for error, call in cases:
            with meter(db.engine) as m, pytest.raises(error):
                call()
            assert writes(m) == [], (error, writes(m))
        after = (row_count(db.engine, EventsWal), row_count(db.engine, RelsWal), row_count(db.engine, Counter))
        assert after == before
        assert issubclass(pq.ValidationError, pq.ParqueDBError)

    def test_corrupt_batch_raises_naming_the_row(self, db: pq.ParqueDB) -> None:
        e = db.create("posts", {"name": "p"})
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE events_wal SET events = :b"), {"b": b"PQB\x01\x00garbage-garbage"})
        db2 = self.restart(db)
        with pytest.raises(pq.CorruptBatchError) as info:
            db2.get("posts", sqid(e))
        assert info.value.table == "events_wal" and "first_seq=1" in str(info.value)

    # ------------------------------------------------------------------ inside the app's transactions
    def test_enable_commits_with_app_rows_and_rollback_leaves_no_trace(self, engine: Engine) -> None:
        AppBase.metadata.create_all(engine)
        Session = sessionmaker(engine, expire_on_commit=False)
        handle = pq.enable(Session)
        try:
            with Session() as s:
                made = pq.store(s).create("orders", {"name": "o1"})
                s.add(Order(id=1, item="book"))
                assert pq.store(s).get("orders", sqid(made)) == made  # own uncommitted write
                s.rollback()
            assert row_count(engine, EventsWal) == 0
            assert row_count(engine, Order) == 0
            with Session() as s:
                assert pq.store(s).get("orders", sqid(made)) is None  # no trace in caches either
                assert pq.store(s).find("orders") == []
            assert handle.stats()["unflushed_events"] == 0
            with Session() as s:
                st = pq.store(s)
                kept = st.create("orders", {"name": "o2"})
                st.update("orders", sqid(kept), {"$set": {"paid": True}})
                s.add(Order(id=2, item="pen"))
                s.commit()
                again = st.create("orders", {"name": "o3"})  # the same Store after a commit
                s.commit()
            assert row_count(engine, EventsWal) == 2 and row_count(engine, Order) == 1
            assert handle.stats()["unflushed_events"] == 3
            with Session() as s:
                got = pq.store(s).get("orders", sqid(kept))
                assert got is not None and got["paid"] is True
                assert pq.store(s).get("orders", sqid(again)) is not None
            assert made["$id"] not in {kept["$id"], again["$id"]}
        finally:
            pq.disable(Session)
        with Session() as s, pytest.raises(pq.ConfigurationError):
            pq.store(s)
        handle.close()

    def test_ids_unique_across_restart(self, db: pq.ParqueDB) -> None:
        ids = {db.create("posts", {"name": str(i)})["$id"] for i in range(30)}
        db2 = self.restart(db)
        ids2 = {db2.create("posts", {"name": str(i)})["$id"] for i in range(30)}
        assert len(ids | ids2) == 60

    # ------------------------------------------------------------------ flush and archive reads
    def test_flush_then_every_read_from_the_archive(self, engine: Engine, tmp_path: Path) -> None:
        """After a flush the WAL is empty and a new process reads everything back from the
        snapshots and Parquet files: get, as_of, find, history, related, duckdb()."""
        archive, manual = tmp_path / "archive", pq.FlushPolicy(mode="manual")
        db = pq.ParqueDB(engine, archive=archive, policy=manual)
        users = db.create_many("users", [{"name": f"u{i}", "n": i} for i in range(6)])  # a bulk file
        post = db.create("posts", {"title": "t", "views": 0})
        for _ in range(3):
            db.update("posts", sqid(post), {"$inc": {"views": 1}})
        db.link(post["$id"], "author", users[0]["$id"])
        db.update("users", sqid(users[1]), {"$set": {"name": "renamed"}})
        before = {
            "post": db.get("posts", sqid(post)),
            "u1": db.get("users", sqid(users[1])),
            "find": db.find("users", {"n": {"$gte": 1}}, sort={"n": -1}),
            "history": [(h["op"], h["version"]) for h in db.history(post["$id"])],
        }
        result = db.flush()
        assert (result.events, result.rel_events) == (5, 1)
        assert_wal_flushed(engine)
        db.close()
        cold = pq.ParqueDB(engine, archive=archive, policy=manual)
        assert cold.get("posts", sqid(post)) == before["post"]
        assert cold.get("users", sqid(users[1])) == before["u1"]
        assert cold.get("posts", sqid(post), as_of=2)["views"] == 1  # type: ignore[index]
        assert cold.find("users", {"n": {"$gte": 1}}, sort={"n": -1}) == before["find"]
        assert [(h["op"], h["version"]) for h in cold.history(post["$id"])] == before["history"]
        assert [u["$id"] for u in cold.related(post["$id"], "author")] == [users[0]["$id"]]
        assert [p["$id"] for p in cold.related(users[0]["$id"], direction="inbound")] == [post["$id"]]
        sql = cold.duckdb().sql
        assert sql("SELECT count(*) FROM entities").fetchall() == [(7,)]
        ops = sql("SELECT op, count(*) FROM events GROUP BY op ORDER BY op").fetchall()
        assert ops == [("CREATE", 7), ("UPDATE", 4)]  # the bulk file's creates are events too
        assert sql("SELECT count(*) FROM rels").fetchall() == [(1,)]
        cold.close()
