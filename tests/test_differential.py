"""Differential test of the MongoDB-style core against an independent implementation,
mongomock: random small documents, filters and update operators from the supported
subset go through `filters.matches` / `operators.apply_update` and through a mongomock
collection, and must agree, except where a named entry of KNOWN says why they may not
(mongomock's own infidelities to MongoDB, and parquedb's documented deviations,
docs/operators.md). A small set of filters also runs through `find` end to end: WAL tail
(hot), flushed, and a new store over the same files (cold), with the DuckDB pushdown on
and off, so the Python path and the pushdown agree.

The example count is small so the suite stays fast; a long run:
PARQUEDB_DIFFERENTIAL_EXAMPLES=5000 pytest tests/test_differential.py
"""

from __future__ import annotations

import importlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mongomock
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parquedb_orm as pq
from parquedb_orm.core.filters import matches, validate_filter
from parquedb_orm.core.operators import apply_update, validate_update

store_module = importlib.import_module("parquedb_orm.engine.store")
EXAMPLES = int(os.environ.get("PARQUEDB_DIFFERENTIAL_EXAMPLES", "150"))
NOW = datetime(2026, 1, 2, tzinfo=UTC)

#: where mongomock and parquedb may disagree, and why; each name is used below
KNOWN: dict[str, str] = {
    # mongomock's infidelities to MongoDB
    "mongomock-bool-is-number": "mongomock compares with Python's ==, so True == 1; MongoDB and parquedb do not: "
    "booleans are not generated here (tests/test_operators_mongo.py covers them)",
    "mongomock-gte-null": "mongomock's $gte/$lte null match nothing; MongoDB matches null and missing, as parquedb: "
    "range operators get no null operand here",
    "mongomock-missing-path-through-scalar": "mongomock's {'a.x': null} and {'a.x': {'$not': ...}} do not match "
    "when `a` is a scalar or an array without `x`; MongoDB matches (the path is missing), as parquedb: such "
    "filters on dotted paths are not compared",
    "mongomock-document-order": "mongomock compares embedded documents ignoring field order; MongoDB and parquedb are "
    "field-order-sensitive: a filter with equality on a document of 2+ fields is not compared",
    "mongomock-no-mul": "mongomock 4.3 has no $mul: not generated",
    "mongomock-rename-same": "mongomock accepts $rename of a field onto itself; MongoDB and parquedb refuse",
    "mongomock-conflicts": "mongomock applies conflicting paths of one update in turn; MongoDB and parquedb refuse",
    "mongomock-null-or-scalar-parent": "mongomock ignores $set/$inc through a null or scalar parent, or fails "
    "with a Python error; MongoDB and parquedb refuse (Cannot create field)",
    "mongomock-bad-target": "mongomock fails with Python errors or does nothing for $inc on null and for "
    "$push/$addToSet/$pull on null or a non-array; MongoDB and parquedb refuse",
    "mongomock-cross-type-min-max": "mongomock's $min/$max use Python's < (a TypeError across types, none for "
    "null); MongoDB and parquedb use BSON's type order",
    "mongomock-unset-array-element": "mongomock's $unset of an array element does nothing; MongoDB and parquedb set "
    "it to null",
    "mongomock-add-to-set-order": "mongomock's $addToSet ignores field order; MongoDB needs the same order",
    "mongomock-array-index": "mongomock ignores $min/$max on an array element (`l.0`), and pads arrays through a "
    "missing element differently; MongoDB updates the element or pads with nulls, as parquedb",
    # parquedb's documented deviations (docs/operators.md)
    "parquedb-new-field-order": "MongoDB (5.0+) adds new fields in lexicographic order, parquedb in the update's "
    "order: states are compared ignoring field order",
    "parquedb-no-document-ordering": "$gt/$lt... on a document or an array operand are refused: not generated",
}
used: set[str] = set()


def known(name: str) -> bool:
    assert name in KNOWN, name
    used.add(name)
    return True


# ------------------------------------------------------------------ generated data (no booleans: see KNOWN)
SCALARS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5, 2.0]), st.sampled_from(["a", "b", ""]), st.none())
SUBDOCS = st.one_of(
    st.fixed_dictionaries({"x": SCALARS}),
    st.fixed_dictionaries({"x": SCALARS, "y": SCALARS}),
    st.fixed_dictionaries({"y": SCALARS, "x": SCALARS}),
)
ITEMS = st.one_of(SCALARS, SUBDOCS)
VALUES = st.one_of(SCALARS, SCALARS, st.lists(ITEMS, max_size=3), SUBDOCS)
DOCS = st.fixed_dictionaries({}, optional={"a": VALUES, "b": VALUES, "c": SUBDOCS, "l": st.lists(ITEMS, max_size=3)})
FIELDS = st.sampled_from(["a", "b", "c", "c.x", "c.y", "l", "l.0", "l.1", "l.x", "a.x", "zz"])
RANGE_OPERANDS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, "a", "b"]))  # no null: mongomock-gte-null
CONDITIONS = st.one_of(
    VALUES,
    st.fixed_dictionaries({"$eq": VALUES}),
    st.fixed_dictionaries({"$ne": VALUES}),
    st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), RANGE_OPERANDS, min_size=1, max_size=2),
    st.fixed_dictionaries({"$in": st.lists(ITEMS, max_size=3)}),
    st.fixed_dictionaries({"$nin": st.lists(ITEMS, max_size=3)}),
    st.fixed_dictionaries({"$exists": st.booleans()}),
    st.fixed_dictionaries({"$not": st.dictionaries(st.sampled_from(["$gt", "$lt"]), RANGE_OPERANDS, min_size=1)}),
)
LEAF = st.dictionaries(FIELDS, CONDITIONS, min_size=1, max_size=2)
FILTERS = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.fixed_dictionaries({"$and": st.lists(inner, min_size=1, max_size=2)}),
        st.fixed_dictionaries({"$or": st.lists(inner, min_size=1, max_size=2)}),
        st.fixed_dictionaries({"$nor": st.lists(inner, min_size=1, max_size=2)}),
    ),
    max_leaves=4,
)


def _document_equality(cond: Any) -> bool:
    """Does a condition compare a whole document of 2+ fields for equality (mongomock-document-order)?"""

    def multi(v: Any) -> bool:
        return (isinstance(v, dict) and len(v) > 1) or (isinstance(v, list) and any(multi(i) for i in v))

    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        return any(multi(arg) for op, arg in cond.items() if op in ("$eq", "$ne", "$in", "$nin"))
    return multi(cond)


def _null_equality(cond: Any) -> bool:
    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        return any(
            (op in ("$eq", "$ne") and arg is None) or (op in ("$in", "$nin") and None in arg)
            for op, arg in cond.items()
        )
    return cond is None


def _negation(cond: Any) -> bool:
    return isinstance(cond, dict) and "$not" in cond


def _filter_has(flt: dict[str, Any], test: Any) -> bool:
    """Does a condition anywhere in `flt` satisfy test(field, condition)?"""
    for key, cond in flt.items():
        if key in ("$and", "$or", "$nor"):
            if any(_filter_has(sub, test) for sub in cond):
                return True
        elif test(key, cond):
            return True
    return False


def _collection(docs: list[dict[str, Any]]) -> Any:
    coll = mongomock.MongoClient().db.c
    coll.insert_many([{"_id": i, **d} for i, d in enumerate(docs)])
    return coll


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(DOCS, min_size=1, max_size=5), flt=FILTERS)
def test_filters_agree_with_mongomock(docs: list[dict[str, Any]], flt: dict[str, Any]) -> None:
    validate_filter(flt)
    ours = [i for i, d in enumerate(docs) if matches(d, flt)]
    if _filter_has(flt, lambda key, cond: _document_equality(cond)) and known("mongomock-document-order"):
        return
    if _filter_has(flt, lambda key, cond: "." in key and (_null_equality(cond) or _negation(cond))) and known(
        "mongomock-missing-path-through-scalar"
    ):
        return
    theirs = sorted(d["_id"] for d in _collection(docs).find(flt))
    assert ours == theirs, (flt, docs)


# ------------------------------------------------------------------ updates
NUMS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5]))
PATHS = st.sampled_from(["a", "b", "c.x", "c.y", "l", "l.0", "l.1", "a.x", "n"])
UPDATE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "$set": st.dictionaries(PATHS, VALUES, min_size=1, max_size=2),
    "$unset": st.dictionaries(PATHS, st.just(""), min_size=1, max_size=2),
    "$inc": st.dictionaries(PATHS, NUMS, min_size=1, max_size=2),
    "$min": st.dictionaries(PATHS, SCALARS, min_size=1, max_size=1),
    "$max": st.dictionaries(PATHS, SCALARS, min_size=1, max_size=1),
    "$push": st.dictionaries(
        PATHS, st.one_of(ITEMS, st.fixed_dictionaries({"$each": st.lists(ITEMS, max_size=2)})), min_size=1, max_size=1
    ),
    "$addToSet": st.dictionaries(
        PATHS, st.one_of(ITEMS, st.fixed_dictionaries({"$each": st.lists(ITEMS, max_size=2)})), min_size=1, max_size=1
    ),
    "$pull": st.dictionaries(
        PATHS,
        st.one_of(
            SCALARS,
            st.fixed_dictionaries({"x": SCALARS}),
            st.fixed_dictionaries({"$in": st.lists(SCALARS, max_size=2)}),
            st.fixed_dictionaries({"$gt": st.integers(-3, 3)}),
        ),
        min_size=1,
        max_size=1,
    ),
    # top-level names only: mongomock does not implement dotted $rename
    "$rename": st.dictionaries(st.sampled_from(["a", "b", "n"]), st.sampled_from(["a", "b", "m"]), max_size=1),
}
UPDATES = st.lists(st.sampled_from(sorted(UPDATE_FIELDS)), min_size=1, max_size=2, unique=True).flatmap(
    lambda ops: st.fixed_dictionaries({op: UPDATE_FIELDS[op] for op in ops})
).filter(lambda u: all(u.values()))
ROOT = st.fixed_dictionaries(
    {}, optional={"a": VALUES, "b": VALUES, "c": st.one_of(SUBDOCS, SCALARS), "l": st.lists(ITEMS, max_size=3),
                  "n": st.one_of(NUMS, st.none())}
)  # fmt: skip


def _unordered(value: Any) -> Any:
    """A value with every document's fields sorted (parquedb-new-field-order), types kept."""
    if isinstance(value, dict):
        return tuple(sorted((k, _unordered(v)) for k, v in value.items()))
    if isinstance(value, list):
        return [_unordered(v) for v in value]
    return (type(value).__name__ if not isinstance(value, (int, float)) else "number", value)


def _touches(doc: dict[str, Any], update: dict[str, Any], pred: Any) -> bool:
    """Does any (op, path) of `update`, with the values on its way in `doc`, satisfy `pred`?"""
    for op, fields in update.items():
        for path in fields:
            parts = path.split(".")
            node: Any = doc
            chain = []
            for part in parts:
                if isinstance(node, dict):
                    node = node.get(part, _GONE)
                elif isinstance(node, list) and part.isdigit():
                    node = node[int(part)] if int(part) < len(node) else _GONE
                else:
                    node = _GONE
                chain.append(node)
            if pred(op, parts, chain, fields[path]):
                return True
    return False


_GONE = object()


def _excuse(doc: dict[str, Any], update: dict[str, Any], error: Exception | None) -> str | None:
    """The KNOWN name explaining a difference for this update, if one does."""
    if error is not None and "conflicting" in str(error):
        return "mongomock-conflicts"
    if error is not None and "source and target are the same" in str(error):
        return "mongomock-rename-same"

    def parent_bad(op: str, parts: list[str], chain: list[Any], value: Any) -> bool:
        return any(v is None or (v is not _GONE and not isinstance(v, (dict, list))) for v in chain[:-1]) or any(
            isinstance(v, list) and not p.isdigit() for v, p in zip(chain[:-1], parts[1:], strict=True)
        )

    if _touches(doc, update, parent_bad):
        return "mongomock-null-or-scalar-parent"

    def past_end(op: str, parts: list[str], chain: list[Any], value: Any) -> bool:
        # a numeric segment past an array's end (or under a missing parent)
        return any(
            p.isdigit()
            and (i == 0 or chain[i - 1] is _GONE or isinstance(chain[i - 1], list))
            and (chain[i] is _GONE or op in ("$min", "$max"))
            for i, p in enumerate(parts)
        )

    if _touches(doc, update, past_end):
        return "mongomock-array-index"

    def null_target(op: str, parts: list[str], chain: list[Any], value: Any) -> bool:
        cur = chain[-1]
        if op == "$inc":
            return cur is None
        return op in ("$push", "$addToSet", "$pull") and cur is not _GONE and not isinstance(cur, list)

    if _touches(doc, update, null_target):
        return "mongomock-bad-target"

    def cross_type(op: str, parts: list[str], chain: list[Any], value: Any) -> bool:
        cur = chain[-1]
        if op not in ("$min", "$max"):
            return False
        if value is None or cur is None:
            return True  # mongomock compares None with Python's <, even with None
        num = (int, float)
        return cur is not _GONE and not (
            (isinstance(value, num) and isinstance(cur, num)) or type(value) is type(cur)
        )

    if _touches(doc, update, cross_type):
        return "mongomock-cross-type-min-max"

    def unset_element(op: str, parts: list[str], chain: list[Any], value: Any) -> bool:
        return op == "$unset" and len(chain) > 1 and isinstance(chain[-2], list) and chain[-1] is not _GONE

    if _touches(doc, update, unset_element):
        return "mongomock-unset-array-element"

    def add_to_set_order(op: str, parts: list[str], chain: list[Any], value: Any) -> bool:
        return op == "$addToSet"  # documents of 2+ fields, in either order, may be added

    if _touches(doc, update, add_to_set_order):
        return "mongomock-add-to-set-order"
    return None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=ROOT, update=UPDATES)
def test_updates_agree_with_mongomock(doc: dict[str, Any], update: dict[str, Any]) -> None:
    ours: dict[str, Any] | None = None
    our_error: Exception | None = None
    try:
        ours = apply_update(doc, validate_update(update), NOW)
    except pq.ValidationError as exc:
        our_error = exc
    coll = _collection([doc])
    theirs: dict[str, Any] | None = None
    their_error: Exception | None = None
    try:
        coll.update_one({"_id": 0}, update)
        theirs = coll.find_one({"_id": 0})
        assert theirs is not None
        theirs.pop("_id")
    except Exception as exc:  # mongomock raises its WriteError, or Python's errors where it is unfaithful
        their_error = exc
    if our_error is not None and their_error is not None:
        return  # both refuse
    excuse = _excuse(doc, update, our_error)
    if our_error is not None or their_error is not None:
        assert excuse is not None and known(excuse), (doc, update, our_error, their_error)
        return
    assert ours is not None and theirs is not None
    if _unordered(ours) != _unordered(theirs):
        assert excuse is not None and known(excuse), (doc, update, ours, theirs)
    known("parquedb-new-field-order")


def test_every_known_difference_is_named_and_used() -> None:
    """Runs last in this file: a KNOWN entry nothing above used is stale (the generators
    leave some out on purpose: those are marked as such in their reason)."""
    unused = set(KNOWN) - used - {
        "mongomock-bool-is-number",
        "mongomock-gte-null",
        "mongomock-no-mul",
        "parquedb-no-document-ordering",
    }
    if not used:
        pytest.skip("run with the differential tests above")
    assert "parquedb-new-field-order" in used and "mongomock-conflicts" in used, used
    assert len(unused) <= 4, f"never needed in this run: {sorted(unused)}"


# ------------------------------------------------------------------ find end to end: hot, flushed, cold
E2E_DOCS: list[dict[str, Any]] = [
    {"a": 1, "l": [1, 2], "c": {"x": 1}},
    {"a": 2.5, "l": [{"x": 1}, {"x": 3}], "c": {"x": "a", "y": None}},
    {"a": "a", "l": [], "c": None},
    {"a": None, "l": ["a", 3], "c": {"y": 2, "x": 1}},
    {"a": [1, "b"], "c": {"x": 2**60 + 1}},
    {"b": True, "a": 0},
    {"a": {"x": 1, "y": 2}, "l": [[1, 2]]},
    {},
]
E2E_FILTERS: list[dict[str, Any]] = [
    {"a": 1},
    {"a": {"$gt": 0}},
    {"a": {"$gte": "a"}},
    {"a": None},
    {"a": {"$gte": None}},
    {"a": {"$ne": 1}},
    {"a": {"$in": [2.5, "b"]}},
    {"a": {"$nin": [1, None]}},
    {"a": {"$exists": False}},
    {"a": {"x": 1, "y": 2}},
    {"a": {"y": 2, "x": 1}},
    {"l": 3},
    {"l": [1, 2]},
    {"l.x": 3},
    {"l.x": {"$gt": 2}},
    {"l.0": 1},
    {"l.1.x": 3},
    {"c.x": 1},
    {"c.x": {"$gt": 2**60}},
    {"c.y": None},
    {"b": 1},
    {"b": True},
    {"$or": [{"a": 1}, {"c.x": "a"}]},
    {"$nor": [{"a": {"$exists": True}}]},
    {"a": {"$not": {"$gt": 1}}},
]


def test_find_end_to_end_hot_flushed_cold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = {
        i: [f"#{j}" for j, d in enumerate(E2E_DOCS) if matches(d, validate_filter(f))]
        for i, f in enumerate(E2E_FILTERS)
    }
    url, archive = f"sqlite:///{tmp_path / 'p.db'}", str(tmp_path / "a")

    def check(db: pq.ParqueDB, names: dict[str, str], stage: str) -> None:
        for above in (10**9, 0):  # in memory, then the DuckDB scan
            monkeypatch.setattr(store_module, "PUSHDOWN_ABOVE", above)
            for i, flt in enumerate(E2E_FILTERS):
                got = [names[d["$id"]] for d in db.find("e2e", flt)]
                assert got == want[i], (stage, above, flt)

    db = pq.ParqueDB(url, archive=archive, policy=pq.FlushPolicy(mode="manual"))
    try:
        made = db.create_many("e2e", E2E_DOCS[:4]) + [db.create("e2e", d) for d in E2E_DOCS[4:]]
        names = {m["$id"]: f"#{j}" for j, m in enumerate(made)}
        check(db, names, "hot")
        db.flush()
        check(db, names, "flushed")
    finally:
        db.close()
    with pq.ParqueDB(url, archive=archive, policy=pq.FlushPolicy(mode="manual")) as cold:
        check(cold, names, "cold")
