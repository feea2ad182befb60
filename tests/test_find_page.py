"""find's in-memory path: the compiled filter and the top-k page give exactly what the
interpreted filter and the full sort give (core/filters.py `compile_filter`, `page`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fuzz import strategies, targets
from hypothesis import given, settings
from hypothesis import strategies as st

from parquedb_orm.core import filters

_FIELDS = ["n", "s", "a.b", "m"]
_VALUE = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.floats(-3, 3, allow_nan=False),
    st.booleans(),
    st.sampled_from(["a", "b", "c"]),
    st.lists(st.integers(-3, 3), max_size=2),
)


@st.composite
def _docs(draw: st.DrawFn) -> list[dict[str, Any]]:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(draw(st.integers(0, 40))):
        doc: dict[str, Any] = {"$id": f"t/{i:03d}", "createdAt": base + timedelta(seconds=draw(st.integers(0, 4)))}
        for f in draw(st.lists(st.sampled_from(["n", "s", "m"]), unique=True)):
            doc[f] = draw(_VALUE)
        if draw(st.booleans()):
            doc["a"] = {"b": draw(_VALUE)}
        out.append(doc)
    return out


def _creation(d: dict[str, Any]) -> Any:
    return (d["createdAt"], d["$id"])


def _full(docs: list[dict[str, Any]], sort: list[tuple[str, int]], skip: int, limit: int | None) -> list[Any]:
    docs = sorted(docs, key=_creation)
    docs = filters.sort_docs(docs, sort) if sort else docs
    return docs[skip:] if limit is None else docs[skip : skip + limit]


@settings(max_examples=300, deadline=None)
@given(
    _docs(),
    st.lists(st.tuples(st.sampled_from(_FIELDS), st.sampled_from([1, -1])), max_size=2, unique_by=lambda t: t[0]),
    st.integers(0, 5),
    st.one_of(st.none(), st.integers(0, 8)),
)
def test_page_is_the_full_sort(
    docs: list[dict[str, Any]], sort: list[tuple[str, int]], skip: int, limit: int | None
) -> None:
    got = filters.page(list(docs), sort, skip, limit, _creation, lambda d: d["createdAt"])
    assert [d["$id"] for d in got] == [d["$id"] for d in _full(docs, sort, skip, limit)]


@settings(max_examples=300, deadline=None)
@given(strategies.filter_docs(), strategies.states())
def test_compiled_filter_is_matches(flt: Any, doc: dict[str, Any]) -> None:
    try:
        valid = filters.validate_filter(flt)
    except Exception:  # refused filters are test_bad_input's and the fuzz targets' concern
        return
    stored = targets.stored_form(doc)
    try:
        expected: Any = filters.matches(stored, valid)
    except Exception as exc:
        expected = type(exc)
    try:
        got: Any = filters.compile_filter(valid)(stored)
    except Exception as exc:
        got = type(exc)
    assert got == expected


def test_finds_with_nothing_committed_between_share_the_folded_states(tmp_path: Any, monkeypatch: Any) -> None:
    """The small-namespace find folds the namespace once and reuses it until a commit
    (engine/reads.py `committed_states`): every later change shows, and what a caller does to
    the documents it got back changes nothing for the next find."""
    import parquedb_orm as pq
    from parquedb_orm.engine import reads as reads_mod

    folds = 0
    real = reads_mod.fold

    def counting(*a: Any, **k: Any) -> Any:
        nonlocal folds
        folds += 1
        return real(*a, **k)

    monkeypatch.setattr(reads_mod, "fold", counting)
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "a", policy=pq.FlushPolicy(mode="manual"))
    try:
        made = db.create_many("posts", [{"n": i} for i in range(10)])
        for e in made[:5]:
            db.update("posts", e["$id"].split("/")[1], {"$inc": {"n": 100}})  # in the tail
        q = {"n": {"$gte": 100}}
        first = db.find("posts", q, sort={"n": -1})
        assert [d["n"] for d in first] == [104, 103, 102, 101, 100]
        after_first = folds
        assert after_first >= 5
        first[0]["n"] = -1  # the caller's copy
        assert [d["n"] for d in db.find("posts", q, sort={"n": -1})] == [104, 103, 102, 101, 100]
        assert folds == after_first  # nothing committed: no fold again
        db.update("posts", made[9]["$id"].split("/")[1], {"$set": {"n": 500}})
        assert [d["n"] for d in db.find("posts", q, sort={"n": -1}, limit=2)] == [500, 104]
        assert folds > after_first
        db.flush()
        assert [d["n"] for d in db.find("posts", q, sort={"n": -1}, limit=2)] == [500, 104]
        db.delete("posts", made[9]["$id"].split("/")[1])
        assert [d["n"] for d in db.find("posts", q, sort={"n": -1}, limit=2)] == [104, 103]
    finally:
        db.close()
