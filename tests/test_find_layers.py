"""find() over the archive's layers (bulk, delta and base files, the WAL tail, an open
transaction) through the DuckDB scan (engine/find.py) returns exactly what the in-memory
path returns: same documents, same order, for filters, sorts, skips and limits.

Files are given the typed `f_<k>` columns and `parquedb.fields` metadata of the format
here (when the writer has not already): some files keep the old format (no metadata),
some have a field forced to "mixed", so every reader path is compared."""

from __future__ import annotations

import importlib
import json
import math
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import parquedb_orm as pq_orm
from parquedb_orm.core import codec, pushdown

store_module = importlib.import_module("parquedb_orm.engine.store")

NS = "things"
MISSING = object()
D1 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
VALUES: dict[str, list[Any]] = {
    "i": [MISSING, None, -3, 0, 1, 2, 7, 2**60],
    "f": [MISSING, None, -0.0, 0.0, 0.5, 1.0, 2.25, -7.5],
    "s": [MISSING, None, "", "a", "b", "ab", "é", "Z"],
    "t": [MISSING, None, True, False],
    "m": [MISSING, None, 1, 1.5, "a", True, [1, 2], {"x": 1}, D1, date(2024, 1, 1), {"x": "b"}],
}
FIELDS = list(VALUES)


def _shred(path: Path, mode: str) -> None:
    """Give an entities file the spec's typed columns and field list, unless it has them;
    mode "old" leaves it in the old format, "mixed" records one field as mixed."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if mode == "old" or b"parquedb.fields" in meta:
        return
    kinds: dict[str, set[str]] = {}
    states = [None if t is None else json.loads(t) for t in table.column("state").to_pylist()]
    for state in states:
        for key, value in (state or {}).items():
            if key.startswith("$") or key in pushdown._STORE_KEYS or value is None:
                continue
            kind = (
                "bool" if isinstance(value, bool)
                else "int" if isinstance(value, int) and -(2**63) <= value < 2**63
                else "float" if isinstance(value, float)
                else "string" if isinstance(value, str)
                else "mixed"
            )  # fmt: skip
            kinds.setdefault(key, set()).add(kind)
    fields: dict[str, str] = {}
    for key, ks in kinds.items():
        if ks <= {"int", "float"} and "float" in ks:
            ok = all(
                abs(v) <= 2**53
                for s in states
                if s and isinstance(v := s.get(key), int) and not isinstance(v, bool)
            )  # fmt: skip
            fields[key] = "float" if ok else "mixed"
        else:
            fields[key] = ks.pop() if len(ks) == 1 else "mixed"
    if mode == "mixed" and fields:
        fields[sorted(fields)[0]] = "mixed"
    arrow = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}
    for key, kind in fields.items():
        if kind != "mixed":
            vals = [None if s is None else s.get(key) for s in states]
            if kind == "float":
                vals = [None if v is None else float(v) for v in vals]
            table = table.append_column(f"f_{key}", pa.array(vals, arrow[kind]))
    table = table.replace_schema_metadata({**meta, b"parquedb.fields": json.dumps(fields).encode()})
    pq.write_table(table, path, row_group_size=1024, write_statistics=True)


def _data(picks: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, k in zip(FIELDS, picks, strict=True):
        value = VALUES[key][k % len(VALUES[key])]
        if value is not MISSING:
            out[key] = value
    return out


def _filters(fv: list[int]) -> list[dict[str, Any]]:
    def v(key: str, k: int) -> Any:
        value = VALUES[key][k % len(VALUES[key])]
        return None if value is MISSING else value

    a, b, c = fv
    return [
        {},
        {"i": v("i", a)},
        {"i": {"$gt": v("i", b)}},
        {"f": {"$lte": v("f", a)}},
        {"f": v("i", c)},  # an int against floats
        {"s": {"$gte": v("s", b)}},
        {"s": v("s", c), "t": v("t", a)},
        {"t": v("t", b)},
        {"i": v("t", c)},  # a bool against ints: True == 1
        {"m": v("m", a)},
        # ordering against a document or an array is refused (docs/operators.md): equality then
        {"m": v("m", b)} if isinstance(v("m", b), (list, dict)) else {"m": {"$lt": v("m", b)}},
        {"$or": [{"i": {"$in": [v("i", a), v("i", b)]}}, {"s": v("s", c)}]},
        {"m.x": v("i", c)},
        {"i": {"$ne": v("i", a)}},
        {"s": {"$exists": bool(b % 2)}},
    ]


SORTS = [{}, {"i": 1}, {"i": -1}, {"f": 1, "s": -1}, {"s": 1}, {"t": -1, "i": 1}, {"m": 1}, {"updatedAt": -1},
         {"version": -1, "f": -1}, {"$id": -1}]  # fmt: skip

ops = st.lists(
    st.tuples(st.sampled_from(["update", "delete", "hard", "restore", "create"]), st.integers(0, 10**6),
              st.lists(st.integers(0, 20), min_size=5, max_size=5)),
    max_size=12,
)  # fmt: skip


def _apply(db: Any, ids: list[str], op: tuple[str, int, list[int]]) -> None:
    kind, k, picks = op
    eid = ids[k % len(ids)]
    try:
        if kind == "update":
            data = _data(picks)
            db.update(NS, eid, {"$set": data} if data else {"$unset": {"i": True}})
        elif kind == "delete":
            db.delete(NS, eid)
        elif kind == "hard":
            db.delete(NS, eid, hard=True)
        elif kind == "restore":
            db.restore(NS, eid)
        else:
            ids.append(db.create(NS, _data(picks))["$id"].split("/", 1)[1])
    except pq_orm.EntityNotFoundError:
        pass  # already hard-deleted


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bulk=st.lists(st.lists(st.integers(0, 20), min_size=5, max_size=5), min_size=1, max_size=40),
    before=ops,
    after=ops,
    in_tx=ops,
    modes=st.lists(st.sampled_from(["new", "new", "old", "mixed"]), min_size=8, max_size=8),
    compact=st.booleans(),
    fv=st.lists(st.integers(0, 20), min_size=3, max_size=3),
    page=st.tuples(st.sampled_from([None, 0, 1, 3, 10]), st.integers(0, 4)),
    deleted=st.booleans(),
)
def test_find_layers_match_memory_path(
    bulk: list[list[int]],
    before: list[Any],
    after: list[Any],
    in_tx: list[Any],
    modes: list[str],
    compact: bool,
    fv: list[int],
    page: tuple[int | None, int],
    deleted: bool,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        db = pq_orm.ParqueDB(
            f"sqlite:///{root / 'p.db'}", archive=str(root / "a"), policy=pq_orm.FlushPolicy(mode="manual")
        )
        try:
            ids = [s["$id"].split("/", 1)[1] for s in db.create_many(NS, [_data(p) for p in bulk])]
            ids.append(db.create(NS, _data(bulk[0]))["$id"].split("/", 1)[1])
            db.flush()
            for op in before:
                _apply(db, ids, op)
            db.flush()
            if compact and hasattr(db, "compact"):
                db.compact()
            for i, path in enumerate(sorted((root / "a").glob("entities/**/*.parquet"))):
                _shred(path, modes[i % len(modes)])
            for op in after:  # the WAL tail
                _apply(db, ids, op)
            limit, skip = page
            queries = [(f, s) for f in _filters(fv) for s in SORTS[: 4 if f else len(SORTS)]]
            with db.transaction() as tx:
                for op in in_tx:
                    _apply(tx, ids, op)
                for flt, sort in queries:
                    _compare(tx, flt, sort, limit, skip, deleted)
            for flt, sort in queries:
                _compare(db, flt, sort, limit, skip, deleted)
        finally:
            db.close()


def _compare(db: Any, flt: dict[str, Any], sort: dict[str, int], limit: int | None, skip: int, deleted: bool) -> None:
    saved = store_module.PUSHDOWN_ABOVE
    try:
        store_module.PUSHDOWN_ABOVE = 10**9
        expected = db.find(NS, flt, sort=sort, limit=limit, skip=skip, include_deleted=deleted)
        store_module.PUSHDOWN_ABOVE = -1
        got = db.find(NS, flt, sort=sort, limit=limit, skip=skip, include_deleted=deleted)
    finally:
        store_module.PUSHDOWN_ABOVE = saved
    assert [d["$id"] for d in got] == [d["$id"] for d in expected], (flt, sort, limit, skip)
    assert codec.dumps(got) == codec.dumps(expected)


def test_typed_predicates_follow_python() -> None:
    """A typed column's predicate never drops a value Python's comparison accepts."""
    import duckdb

    from parquedb_orm.core import filters

    values: list[Any] = [None, True, False, -1, 0, 1, 2**53 + 1, 0.5, -0.0, 1.0, "", "a", "é", "b"]
    sql_types = {"bool": "BOOLEAN", "int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR"}
    con = duckdb.connect()
    for kind, sql_type in sql_types.items():
        stored = [v for v in values if v is None or _kind(v) == kind]
        for target in [*values, 2**70, math.inf, MISSING]:
            for op in ("$eq", "$gt", "$gte", "$lt", "$lte", "$in"):
                arg = None if target is MISSING else target
                cond = arg if op == "$eq" else {op: [arg, "zz"] if op == "$in" else arg}
                pred = pushdown.to_sql({"k": cond}, {"k": kind})
                for value in [*stored, MISSING]:
                    lit = "NULL" if value in (None, MISSING) else repr(value)
                    lit = f"'{value}'" if isinstance(value, str) else lit
                    sql = pred.replace('"f_k"', f"CAST({lit} AS {sql_type})")
                    got = con.execute(f"SELECT ({sql}) IS TRUE").fetchone()
                    doc = {} if value is MISSING else {"k": value}
                    if filters.matches(doc, {"k": cond}):
                        assert got is not None and got[0], (kind, value, cond, pred)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    return "int" if isinstance(v, int) else "float" if isinstance(v, float) else "string"
