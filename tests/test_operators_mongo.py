"""MongoDB-style semantics of the update operators, the filters and their DuckDB pushdown
(docs/operators.md): what MongoDB does, or a typed refusal, for every case the issue-15
probe found. Pure core functions first, then a few end-to-end checks through a store."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as papq
import pytest

import parquedb_orm as pq
from parquedb_orm.core import codec, pushdown
from parquedb_orm.core.filters import MAX_DEPTH, match_value, matches, validate_filter
from parquedb_orm.core.operators import apply_update, validate_update

store_module = importlib.import_module("parquedb_orm.engine.store")
NOW = datetime(2026, 1, 2, tzinfo=UTC)


def upd(doc: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """validate + apply, as Store.update does."""
    return apply_update(doc, validate_update(update), NOW)


def find(docs: list[dict[str, Any]], flt: dict[str, Any]) -> list[int]:
    validate_filter(flt)
    return [i for i, d in enumerate(docs) if matches(d, flt)]


# ------------------------------------------------------------------ 1. update paths
@pytest.mark.parametrize("path", ["a.$date", "$x", "a..b", "a.", ".a", "a.$", "a.$[]", "x.$decimal.y"])
@pytest.mark.parametrize("op", ["$set", "$unset", "$inc", "$min", "$push", "$addToSet", "$pull", "$currentDate"])
def test_bad_path_segments_are_refused(op: str, path: str) -> None:
    value = True if op == "$currentDate" else 1
    with pytest.raises(pq.ValidationError, match=r"segment|field path"):
        validate_update({op: {path: value}})


def test_rename_target_is_a_path_too() -> None:
    with pytest.raises(pq.ValidationError, match="segment"):
        validate_update({"$rename": {"a": "b.$date"}})


def test_dollar_path_refused_before_anything_is_written(tmp_path: Path) -> None:
    """The probe: `$set a.$date` was accepted and, once flushed, a get of another entity in
    the same snapshot chunk raised CorruptBatchError."""
    with pq.ParqueDB(
        f"sqlite:///{tmp_path / 'p.db'}", archive=str(tmp_path / "a"), policy=pq.FlushPolicy(mode="manual")
    ) as db:
        a = db.create("t", {"x": 1})
        b = db.create("t", {"x": 2})
        aid, bid = a["$id"].split("/")[1], b["$id"].split("/")[1]
        with pytest.raises(pq.ValidationError, match="segment"):
            db.update("t", aid, {"$set": {"a.$date": "2020-01-01T00:00:00"}})
        db.flush()
        assert db.get("t", aid) == a and db.get("t", bid) == b  # nothing was written, both read back


# ------------------------------------------------------------------ 2. typed filter operands
@pytest.mark.parametrize(
    ("flt", "error"),
    [
        ({"name": {"$ne": {"$where": "1"}}}, pq.UnknownOperatorError),
        ({"name": {"$eq": {"$gt": 1}}}, pq.ValidationError),
        ({"name": {"$in": [{"$where": "1"}]}}, pq.UnknownOperatorError),
        ({"name": {"$where": "1"}}, pq.UnknownOperatorError),
        ({"name": {"$regex": "a"}}, pq.UnknownOperatorError),
        ({"$where": "1"}, pq.UnknownOperatorError),
        ({"$and": [{"a": {"$foo": 1}}]}, pq.UnknownOperatorError),
        ({"$not": {"a": {"$not": {"$foo": 1}}}}, pq.UnknownOperatorError),
        ({"name": {"$in": 5}}, pq.ValidationError),
        ({"name": {"$nin": "ab"}}, pq.ValidationError),
        ({"name": {"$exists": 1}}, pq.ValidationError),
        ({"name": {"$exists": "yes"}}, pq.ValidationError),
        ({"name": {"$gt": {"a": 1}}}, pq.ValidationError),
        ({"name": {"$lte": [1]}}, pq.ValidationError),
        ({"name": {"$not": 5}}, pq.ValidationError),
        ({"name": {"$gt": 1, "b": 2}}, pq.ValidationError),  # operators mixed with fields
        ({"name": {"b": {"$gt": 1}}}, pq.SerializationError),  # a "$" key inside a literal
        ({"name": float("nan")}, pq.SerializationError),
        ({"name": {"$gt": object()}}, pq.SerializationError),
        ({"$or": []}, pq.ValidationError),
        ({"$or": {"a": 1}}, pq.ValidationError),
        ({"a..b": 1}, pq.ValidationError),
        ({"a.$date": 1}, pq.ValidationError),
    ],
    # no object addresses in test ids: pytest-xdist's workers must collect the same ids
    ids=lambda v: repr(v).split(" at 0x")[0] if "object at 0x" in repr(v) else repr(v),
)
def test_filter_operands_are_typed(flt: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        validate_filter(flt)


def test_operator_document_operand_refused_end_to_end(tmp_path: Path) -> None:
    with pq.ParqueDB(f"sqlite:///{tmp_path / 'p.db'}") as db:
        db.create("t", {"name": "a"})
        with pytest.raises(pq.UnknownOperatorError, match=r"\$where"):
            db.find("t", {"name": {"$ne": {"$where": "1"}}})


# ------------------------------------------------------------------ 3. depth limit
def _nested_and(depth: int) -> dict[str, Any]:
    flt: dict[str, Any] = {"x": 1}
    for _ in range(depth):
        flt = {"$and": [flt]}
    return flt


def test_deep_filters_are_refused_not_recursion_errors() -> None:
    assert matches({"x": 1}, validate_filter(_nested_and(MAX_DEPTH - 1)))
    for flt in (
        _nested_and(500),
        _nested_and(MAX_DEPTH + 1),
        {"x": {"$eq": json.loads("[" * 500 + "]" * 500)}},
        {"x": json.loads('{"a":' * 300 + "1" + "}" * 300)},
    ):
        with pytest.raises(pq.ValidationError, match="nested"):
            validate_filter(flt)
    deep_not: dict[str, Any] = {"$gt": 1}
    for _ in range(300):
        deep_not = {"$not": deep_not}
    with pytest.raises(pq.ValidationError, match="nested"):
        validate_filter({"x": deep_not})
    with pytest.raises(pq.ValidationError, match="segments"):
        validate_update({"$set": {".".join(["a"] * 500): 1}})


# ------------------------------------------------------------------ 4. booleans are not numbers
def test_booleans_are_not_numbers_in_filters() -> None:
    docs = [{"a": True}, {"a": False}, {"a": 1}, {"a": 0}, {"a": 1.0}, {"a": [True]}, {"a": [1]}]
    assert find(docs, {"a": 1}) == [2, 4, 6]
    assert find(docs, {"a": 0}) == [3]
    assert find(docs, {"a": True}) == [0, 5]
    assert find(docs, {"a": False}) == [1]
    assert find(docs, {"a": {"$in": [1]}}) == [2, 4, 6]
    assert find(docs, {"a": {"$nin": [1, 0]}}) == [0, 1, 5]
    assert find(docs, {"a": {"$ne": True}}) == [1, 2, 3, 4, 6]
    assert find(docs, {"a": {"$gte": 0}}) == [2, 3, 4, 6]
    assert find(docs, {"a": {"$gt": False}}) == [0, 5]  # booleans order among themselves


def test_booleans_are_not_numbers_in_updates() -> None:
    assert upd({"l": [1, 0]}, {"$addToSet": {"l": {"$each": [True, 1, False, 0.0]}}})["l"] == [1, 0, True, False]
    assert upd({"l": [1, True, 1.0, Decimal(1)]}, {"$pull": {"l": True}})["l"] == [1, 1.0, Decimal(1)]
    assert upd({"l": [1, True]}, {"$pull": {"l": 1}})["l"] == [True]
    assert upd({"l": [1, True]}, {"$pull": {"l": {"$in": [True]}}})["l"] == [1]
    for doc in ({"$inc": {"b": 1}}, {"$mul": {"b": 2}}, {"$inc": {"n": True}}):
        with pytest.raises(pq.ValidationError, match="not a number"):
            upd({"b": True, "n": 1}, doc)
    # BSON order: every number sorts before every boolean
    assert upd({"b": True}, {"$max": {"b": 5}})["b"] is True
    assert upd({"b": False}, {"$min": {"b": 5}})["b"] == 5
    assert upd({"n": 1}, {"$max": {"n": True}})["n"] is True
    assert upd({"n": 1}, {"$min": {"n": True}})["n"] == 1


def test_document_equality_is_field_order_sensitive_as_in_mongodb() -> None:
    docs = [{"d": {"x": 1, "y": 2}}, {"d": {"y": 2, "x": 1}}, {"d": [{"x": 1, "y": 2}]}]
    assert find(docs, {"d": {"x": 1, "y": 2}}) == [0, 2]
    assert find(docs, {"d": {"$in": [{"y": 2, "x": 1}]}}) == [1]
    assert upd({"l": [{"x": 1, "y": 2}]}, {"$addToSet": {"l": {"y": 2, "x": 1}}})["l"] == [
        {"x": 1, "y": 2},
        {"y": 2, "x": 1},
    ]
    assert upd({"l": [{"x": 1, "y": 2}]}, {"$addToSet": {"l": {"x": 1, "y": 2}}})["l"] == [{"x": 1, "y": 2}]
    # $pull with a document value: a query on the document elements (MongoDB's PullNode)
    assert upd({"l": [{"x": 1, "y": 2}, {"x": 1}]}, {"$pull": {"l": {"y": 2, "x": 1}}})["l"] == [{"x": 1}]
    assert upd({"l": [{"x": 1, "y": 2}, {"x": 1}, 1]}, {"$pull": {"l": {"x": 1}}})["l"] == [1]
    assert upd({"l": [{"x": 5}, {"x": 1}]}, {"$pull": {"l": {"x": {"$gt": 2}}}})["l"] == [{"x": 1}]
    # $pull with an array value: exactly, in order
    assert upd({"l": [[1, 2], [2, 1]]}, {"$pull": {"l": [1, 2]}})["l"] == [[2, 1]]


# ------------------------------------------------------------------ 6. arrays, nulls, conflicts, $rename
def test_dotted_paths_cross_arrays_in_queries() -> None:
    docs = [
        {"tags": ["x", "y"]},
        {"tags": "x"},
        {"tags": [["x"]]},
        {"a": [{"b": 1}, {"b": 5}]},
        {"a": [{"c": 1}]},
        {"a": [1, 2]},
        {"a": {"0": {"b": 1}}},
    ]
    assert find(docs, {"tags": "x"}) == [0, 1]
    assert find(docs, {"tags": ["x"]}) == [2]
    assert find(docs, {"tags.0": "x"}) == [0, 2]  # tags.0 of [["x"]] is an array holding "x"
    assert find(docs, {"a.b": 5}) == [3]
    assert find(docs, {"a.b": {"$gt": 2}}) == [3]
    assert find(docs, {"a.b": {"$lt": 2, "$gt": 2}}) == [3]  # each condition by some element (no $elemMatch)
    assert find(docs, {"a.0.b": 1}) == [3, 6]
    assert find(docs, {"a.1": 2}) == [5]
    assert find(docs, {"a.b": None}) == [0, 1, 2, 4, 5, 6]  # a.b is missing: on the doc, in an element, on [1, 2]
    assert find(docs, {"a.b": {"$exists": True}}) == [3]


def test_range_operators_on_arrays_and_null() -> None:
    docs = [{"n": [1, 10]}, {"n": 5}, {"n": None}, {}, {"n": "7"}, {"n": [None]}]
    assert find(docs, {"n": {"$gt": 8}}) == [0]
    assert find(docs, {"n": {"$lt": 2}}) == [0]
    assert find(docs, {"n": {"$gte": None}}) == [2, 3, 5]  # as {"n": None}
    assert find(docs, {"n": {"$lte": None}}) == [2, 3, 5]
    assert find(docs, {"n": {"$gt": None}}) == []
    assert find(docs, {"n": {"$lt": None}}) == []
    assert find(docs, {"n": {"$gt": "5"}}) == [4]  # strings order with strings only


def test_dotted_paths_cross_arrays_in_updates() -> None:
    doc = {"a": [{"b": 1}, {"b": 2}], "l": [1, 2, 3]}
    assert upd(doc, {"$set": {"a.0.b": 9}})["a"] == [{"b": 9}, {"b": 2}]
    assert upd(doc, {"$inc": {"a.1.b": 1, "l.0": 10}}) == {"a": [{"b": 1}, {"b": 3}], "l": [11, 2, 3]}
    assert upd(doc, {"$unset": {"l.1": ""}})["l"] == [1, None, 3]  # MongoDB keeps the length
    assert upd(doc, {"$set": {"l.5": 6}})["l"] == [1, 2, 3, None, None, 6]  # padded with nulls
    assert upd(doc, {"$set": {"a.2.c": 1}})["a"] == [{"b": 1}, {"b": 2}, {"c": 1}]
    assert upd({}, {"$set": {"m.0.b": 1}}) == {"m": {"0": {"b": 1}}}  # no array: a field named "0"
    assert upd(doc, {"$unset": {"a.b": ""}}) == doc  # reading through an array by name: nothing there
    with pytest.raises(pq.ValidationError, match="array"):
        upd(doc, {"$set": {"a.b": 1}})
    with pytest.raises(pq.ValidationError, match="past the end"):
        upd(doc, {"$set": {"l.100000": 1}})
    assert doc == {"a": [{"b": 1}, {"b": 2}], "l": [1, 2, 3]}  # apply_update never mutates its input


def test_operators_on_null_targets_and_through_null_parents() -> None:
    doc = {"n": None, "x": None}
    for update in (
        {"$inc": {"n": 1}},
        {"$mul": {"n": 2}},
        {"$push": {"n": 1}},
        {"$addToSet": {"n": 1}},
        {"$pull": {"n": 1}},
        {"$set": {"x.y": 1}},
        {"$inc": {"x.y": 1}},
        {"$currentDate": {"x.y": True}},
    ):
        with pytest.raises(pq.ValidationError, match="null"):
            upd(doc, update)
    assert upd(doc, {"$set": {"n": 1}})["n"] == 1
    assert upd(doc, {"$unset": {"x.y": ""}}) == doc
    assert upd(doc, {"$min": {"n": 5}})["n"] is None  # null sorts before numbers
    assert upd(doc, {"$max": {"n": 5}})["n"] == 5
    assert upd({"n": 5}, {"$min": {"n": None}})["n"] is None
    assert upd(doc, {"$rename": {"n": "m"}}) == {"x": None, "m": None}


def test_min_max_follow_bson_order_across_types() -> None:
    when = datetime(2020, 1, 1, tzinfo=UTC)
    assert upd({"v": "a"}, {"$min": {"v": 5}})["v"] == 5  # numbers < strings
    assert upd({"v": "a"}, {"$max": {"v": when}})["v"] == when  # strings < dates
    assert upd({"v": [1]}, {"$max": {"v": {"k": 1}}})["v"] == [1]  # documents < arrays
    assert upd({"v": b"zz"}, {"$min": {"v": b"aaa"}})["v"] == b"zz"  # binary: shorter first
    assert upd({"v": 1}, {"$max": {"v": Decimal("1.5")}})["v"] == Decimal("1.5")
    for update in ({"$min": {"v": {"k": 0}}}, {"$max": {"w": [2]}}):
        with pytest.raises(pq.ValidationError, match="not supported"):
            upd({"v": {"k": 1}, "w": [1]}, update)
    with pytest.raises(pq.ValidationError, match="cannot compare"):
        upd({"v": datetime(2020, 1, 1)}, {"$min": {"v": when}})  # naive vs aware: no order


@pytest.mark.parametrize(
    "update",
    [
        {"$set": {"b.c": 1}, "$unset": {"b": ""}},
        {"$set": {"a": 1}, "$inc": {"a": 1}},
        {"$min": {"a": 1}, "$max": {"a": 2}},
        {"$push": {"l": 1}, "$pull": {"l": 1}},
        {"$set": {"a.b.c": 1}, "$currentDate": {"a.b": True}},
        {"$rename": {"a": "b"}, "$set": {"b.x": 1}},
        {"$rename": {"a": "b"}, "$unset": {"a": ""}},
        {"$rename": {"a": "a.b"}},
        {"$rename": {"a.b": "a"}},
        {"$rename": {"a": "a"}},
    ],
    ids=repr,
)
def test_conflicting_paths_are_refused(update: dict[str, Any]) -> None:
    with pytest.raises(pq.ValidationError, match=r"conflicting|same"):
        validate_update(update)


def test_disjoint_paths_are_fine() -> None:
    out = upd({"a": {"x": 1}}, {"$set": {"a.y": 2, "ab": 1}, "$inc": {"a.x": 1}, "$rename": {"a.z": "b"}})
    assert out == {"a": {"x": 2, "y": 2}, "ab": 1}


def test_rename_refuses_array_elements() -> None:
    doc = {"a": [{"b": 1}], "c": 1}
    for update in ({"$rename": {"a.0.b": "x"}}, {"$rename": {"c": "a.0.d"}}):
        with pytest.raises(pq.ValidationError, match="array"):
            upd(doc, update)
    assert upd(doc, {"$rename": {"a": "z"}}) == {"c": 1, "z": [{"b": 1}]}  # a whole array moves


def test_pull_condition_matches_elements_like_a_query() -> None:
    assert upd({"l": [1, 5, [7, 8], "x", {"k": 9}]}, {"$pull": {"l": {"$gt": 2}}})["l"] == [1, "x", {"k": 9}]
    assert match_value([1, 2], {"$in": [2]}) and not match_value([1, 2], {"$nin": [2]})
    with pytest.raises(pq.UnknownOperatorError):
        validate_update({"$pull": {"l": {"$where": "1"}}})
    with pytest.raises(pq.ValidationError):
        validate_update({"$pull": {"l": {"$in": 3}}})


# ------------------------------------------------------------------ pushdown: booleans, nulls, arrays, big ints
def _duck_table(docs: list[dict[str, Any]], tmp_path: Path, typed: dict[str, pa.DataType]) -> tuple[Any, str]:
    """A Parquet file shaped like an archive entity file (plain JSON `state`, its `types`
    sidecar, typed `f_<k>` columns), read by DuckDB."""
    texts, types = [], []
    for d in docs:
        text, paths = codec.plain_dumps({"$type": "T", **d})
        texts.append(text)
        types.append(None if paths is None else json.dumps({"state": paths}))
    cols: dict[str, Any] = {
        "i": pa.array(range(len(docs)), pa.int64()),
        "type": pa.array(["T"] * len(docs)),
        "state": pa.array(texts, pa.string()),
        "types": pa.array(types, pa.string()),
    }
    for key, dtype in typed.items():
        cols[f"f_{key}"] = pa.array([d.get(key) for d in docs], dtype)
    path = tmp_path / "ents.parquet"
    papq.write_table(pa.table(cols), path)
    return duckdb.connect(), f"read_parquet('{path}')"


def _kept(con: Any, table: str, flt: dict[str, Any], fields: dict[str, str] | None) -> set[int]:
    sql = pushdown.to_sql(flt, fields, plain=True)
    return {i for (i,) in con.execute(f"SELECT i FROM {table} WHERE {sql}").fetchall()}


BIG = 2**60


@pytest.mark.parametrize("typed", [False, True], ids=["json", "typed-int"])
def test_pushdown_compares_large_ints_without_dropping(tmp_path: Path, typed: bool) -> None:
    values = [BIG - 1, BIG, BIG + 1, BIG + 2, 2**63 - 1, -(2**63), 2**53 + 1, 3]
    docs = [{"n": v} for v in values]
    con, table = _duck_table(docs, tmp_path, {"n": pa.int64()} if typed else {})
    fields = {"n": "int"} if typed else None
    try:
        for op in ("$gt", "$gte", "$lt", "$lte", "$eq"):
            for target in [*values, float(BIG), Decimal(BIG + 1), 2**64, -(2**64)]:
                flt = {"n": {op: target}}
                want = set(find(docs, flt))
                kept = _kept(con, table, flt, fields)
                assert want <= kept, (flt, want - kept)
                if typed and isinstance(target, int) and -(2**63) <= target < 2**63:
                    assert kept == want, flt  # an int64 column is compared exactly
        assert find(docs, {"n": {"$gt": BIG}}) == [2, 3, 4]
    finally:
        con.close()


def test_pushdown_follows_bool_null_and_array_rules(tmp_path: Path) -> None:
    docs = [{"b": True}, {"b": False}, {"b": None}, {}]
    con, table = _duck_table(docs, tmp_path, {"b": pa.bool_()})
    try:
        fields = {"b": "bool"}
        assert _kept(con, table, {"b": 1}, fields) == set() == set(find(docs, {"b": 1}))
        assert _kept(con, table, {"b": 0}, fields) == set()
        assert _kept(con, table, {"b": True}, fields) == {0}
        assert _kept(con, table, {"b": {"$gte": None}}, fields) == {2, 3} == set(find(docs, {"b": {"$gte": None}}))
        assert _kept(con, table, {"b": {"$gt": None}}, fields) == set()
    finally:
        con.close()
    docs = [{"a": [{"b": 5}]}, {"a": {"b": 5}}, {"a": [1, 9]}, {"a": 2}, {"a": {"b": 1}}]
    con, table = _duck_table(docs, tmp_path, {})
    try:
        for flt in ({"a.b": 5}, {"a.b": {"$gt": 2}}, {"a": {"$gt": 5}}, {"a": 9}, {"a.b": {"$in": [5, 7]}}):
            assert set(find(docs, flt)) <= _kept(con, table, flt, None), flt
        # rows with an array on the path pass to Python (it rejects [1, 9]); the scalar 2 and {"b": 1} do not
        assert _kept(con, table, {"a.b": {"$gt": 2}}, None) == {0, 1, 2}
    finally:
        con.close()


def test_find_end_to_end_pushdown_agrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large ints, bools, arrays of documents and nulls through find: the in-memory path and
    the DuckDB scan (the threshold lowered to 0) give the same documents."""
    docs: list[dict[str, Any]] = [
        {"n": BIG + 1, "flag": True, "a": [{"b": 5}], "tags": ["x", "y"]},
        {"n": BIG, "flag": False, "a": {"b": 5}, "tags": "x"},
        {"n": 1, "flag": True, "a": [1, 9], "tags": []},
        {"n": None, "a": None},
        {"n": "s", "flag": 1},
    ]
    filters: list[dict[str, Any]] = [
        {"n": {"$gt": BIG}},
        {"n": BIG + 1},
        {"n": {"$gte": None}},
        {"flag": 1},
        {"flag": True},
        {"a.b": 5},
        {"a.b": {"$gt": 2}},
        {"a": {"$gt": 5}},
        {"tags": "x"},
        {"a.0.b": 5},
        {"$nor": [{"flag": True}]},
    ]
    with pq.ParqueDB(
        f"sqlite:///{tmp_path / 'p.db'}", archive=str(tmp_path / "a"), policy=pq.FlushPolicy(mode="manual")
    ) as db:
        made = db.create_many("t", docs)
        db.flush()
        db.update("t", made[2]["$id"].split("/")[1], {"$set": {"n": BIG + 2}})  # a WAL tail on top
        for flt in filters:
            monkeypatch.setattr(store_module, "PUSHDOWN_ABOVE", 10**9)
            memory = [d["$id"] for d in db.find("t", flt)]
            monkeypatch.setattr(store_module, "PUSHDOWN_ABOVE", 0)
            scanned = [d["$id"] for d in db.find("t", flt)]
            assert scanned == memory, flt
        monkeypatch.setattr(store_module, "PUSHDOWN_ABOVE", 0)
        assert len(db.find("t", {"n": {"$gt": BIG}})) == 2
        assert len(db.find("t", {"flag": 1})) == 1
