"""A stateful property test of the public API against a plain in-memory model, on a SQLite
file, PostgreSQL and MariaDB.

A hypothesis state machine drives `ParqueDB` and the ORM session path (`pq.enable` +
`pq.store(session)`) through random steps and compares, after every step, `get` (current,
with and without deleted), `find` (several filters, sorts, paging), `related` and `links`
in both directions, and, for the entities a step touched, `history` and `get(as_of=...)` by
version and by time. Steps:

- create, create_many (1-6 items: 5 or more take the bulk path straight to Parquet);
- update with every supported operator (`$set $unset $inc $mul $min $max $rename $push`
  with `$each`, `$addToSet $pull $currentDate`), with conflicting paths and type errors
  (refused: nothing written), `$pop` (not implemented: UnknownOperatorError), and with a
  right or wrong `expected_version`;
- soft delete, restore, hard delete; link / unlink (and `$link` / `$unlink` in update);
- each of those through the store itself, through a `db.transaction()` block, or through a
  committed ORM session (with an application row in the same commit);
- flush, compaction, restart (every handle closed, a new ParqueDB and enable() on the same
  database and archive folder): none may change a single answer;
- rollback: a `db.transaction()` block or a session doing several steps then raising /
  rolling back: nothing of it may be visible;
- savepoint rollback on the session path: steps before `begin_nested()` are kept, steps
  inside it rolled back, more steps after it kept, then one commit.

The model predicts everything but timestamps: a timestamp compares only as "a datetime"
(`TIME`), and the exact state of each version is taken from the write that made it; every
later read (by version, by time, after flush, compaction, restart) must return it unchanged.

Example counts are small in normal runs (the file stays well under a minute on all three
backends); `pytest tests/test_stateful.py --hypothesis-profile=long` runs the long profile
registered in tests/conftest.py.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from backends import make_engine, reset_schema
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import Engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import parquedb_orm as pq
from parquedb_orm.sql import dialects

State = dict[str, Any]
BACKENDS = ["sqlite-file", "postgresql", "mysql"]
NAMESPACES = ("posts", "users")
FIELDS = ("n", "s", "l", "x")
PREDICATES = ("likes", "author")
ACTORS = (None, "users/ann", "bob")
VIAS = ("db", "tx", "session")


# --------------------------------------------------------------------------- settings
#: normal runs: examples per backend (servers pay a schema reset per example)
EXAMPLES = {"sqlite-file": 15, "postgresql": 8, "mysql": 8}
STEPS = 20


def machine_settings(kind: str) -> settings:
    common: dict[str, Any] = {
        "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    }
    if settings.get_current_profile_name() == "long":
        return settings(settings(), **common)  # the profile's max_examples and stateful_step_count
    return settings(max_examples=EXAMPLES[kind], stateful_step_count=STEPS, **common)


class App(DeclarativeBase):
    pass


class Item(App):
    """An application row committed with the session's store operations."""

    __tablename__ = "stateful_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


# --------------------------------------------------------------------------- the model
class _Time:
    """A datetime the model cannot predict: compares equal to any datetime slot."""

    def __repr__(self) -> str:
        return "TIME"

    def __deepcopy__(self, memo: Any) -> _Time:
        return self


TIME = _Time()
META = frozenset(
    {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}
)


class Refused(Exception):
    """The model's answer: the library must raise `error` and write nothing."""

    def __init__(self, error: type[Exception]) -> None:
        super().__init__(error.__name__)
        self.error = error


def normalise(state: State | None) -> State | None:
    """A read state with every datetime (top level: timestamps, $currentDate fields) as TIME."""
    if state is None:
        return None
    return {k: TIME if isinstance(v, datetime) else v for k, v in state.items()}


@dataclass
class Ent:
    ns: str
    id: str
    body: State
    created_by: str | None
    version: int = 1
    updated_by: str | None = None
    deleted: bool = False
    deleted_by: str | None = None
    gone: bool = False
    #: the exact state each version had, as the write that made it saw it (None: hard-deleted)
    states: dict[int, State | None] = field(default_factory=dict)
    #: expected history: (op, version, actor, data)
    events: list[tuple[str, int | None, str | None, Any]] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.ns}/{self.id}"

    @property
    def live(self) -> bool:
        return not self.deleted and not self.gone

    def expected(self) -> State | None:
        if self.gone:
            return None
        out: State = {"$id": self.ref, "$type": self.ns, **copy.deepcopy(self.body)}
        out.update(version=self.version, createdAt=TIME, createdBy=self.created_by)
        out.update(updatedAt=TIME, updatedBy=self.updated_by)
        if self.deleted:
            out.update(deletedAt=TIME, deletedBy=self.deleted_by)
        return out

    @property
    def current(self) -> State | None:
        return self.states[self.version]


@dataclass
class LinkRec:
    order: int
    reverse: str | None
    data: Any
    actor: str | None


@dataclass
class Model:
    #: ns -> id -> entity, in creation order
    ents: dict[str, dict[str, Ent]] = field(default_factory=lambda: {ns: {} for ns in NAMESPACES})
    #: (from, predicate, to) -> the link
    links: dict[tuple[str, str, str], LinkRec] = field(default_factory=dict)
    link_order: int = 0
    items: set[int] = field(default_factory=set)
    #: refs whose history / as_of must be checked at the next invariant
    touched: set[str] = field(default_factory=set)

    def all(self) -> list[Ent]:
        return [e for ns in NAMESPACES for e in self.ents[ns].values()]

    def by_ref(self, ref: str) -> Ent:
        ns, eid = ref.split("/")
        return self.ents[ns][eid]

    def pick(self, n: int) -> Ent | None:
        """Mostly a live entity (when there is one); every fourth pick any entity, deleted
        and hard-deleted ones too (their refusals are part of the contract)."""
        every = self.all()
        live = [e for e in every if e.live]
        cands = live if live and n % 4 else every
        return cands[(n // 4) % len(cands)] if cands else None


# --------------------------------------------------------------------------- operator semantics
#: BSON's type order (docs/operators.md, $min/$max): null < numbers < strings < arrays < dates
def _rank(v: Any) -> int:
    if v is None:
        return 1
    if isinstance(v, int):
        return 2
    if isinstance(v, str):
        return 3
    if isinstance(v, list):
        return 5
    assert v is TIME, v
    return 9


def _each(arg: Any) -> list[Any]:
    return list(arg["$each"]) if isinstance(arg, dict) else [arg]


def _array(body: State, f: str) -> list[Any]:
    if f not in body:
        return []
    if not isinstance(body[f], list):
        raise Refused(pq.ValidationError)
    return list(body[f])


def _pull_matches(item: Any, arg: Any) -> bool:
    if isinstance(arg, dict) and "$gt" in arg:
        return isinstance(item, int) and item > arg["$gt"]
    if isinstance(arg, dict) and "$in" in arg:
        return any(type(item) is type(x) and item == x for x in arg["$in"])
    return type(item) is type(arg) and item == arg


def apply_ops(body: State, ops: list[tuple[str, str, Any]]) -> State:
    """The body after `ops` (a conflict-free update, in order), or Refused."""
    out = copy.deepcopy(body)
    for op, f, arg in ops:
        cur = out.get(f, _MISSING)
        if op == "$set":
            out[f] = copy.deepcopy(arg)
        elif op == "$unset":
            out.pop(f, None)
        elif op in ("$inc", "$mul"):
            if cur is _MISSING:
                out[f] = arg if op == "$inc" else 0
            elif isinstance(cur, int):
                out[f] = cur + arg if op == "$inc" else cur * arg
            else:  # null, a string, an array, a datetime
                raise Refused(pq.ValidationError)
        elif op in ("$min", "$max"):
            if cur is _MISSING:
                out[f] = arg
                continue
            rn, rc = _rank(arg), _rank(cur)
            if rn != rc:
                less: bool | None = rn < rc
            elif arg == cur:
                less = None
            else:
                less = arg < cur
            if less is not None and less == (op == "$min"):
                out[f] = arg
        elif op == "$push":
            out[f] = _array(out, f) + _each(arg)
        elif op == "$addToSet":
            items = _array(out, f)
            for x in _each(arg):
                if not any(type(x) is type(y) and x == y for y in items):
                    items.append(x)
            out[f] = items
        elif op == "$pull":
            if cur is _MISSING:
                continue
            out[f] = [x for x in _array(out, f) if not _pull_matches(x, arg)]
        elif op == "$rename":
            if cur is not _MISSING:
                out[arg] = out.pop(f)
        elif op == "$currentDate":
            out[f] = TIME
        else:
            raise AssertionError(op)
    return out


class _Missing:
    pass


_MISSING = _Missing()


def update_doc(ops: list[tuple[str, str, Any]]) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, Any]]]:
    """The update document of `ops` (a repeated (operator, field) keeps its first argument)
    and the ops it holds, in the document's order (operators in order of first use)."""
    doc: dict[str, dict[str, Any]] = {}
    for op, f, arg in ops:
        doc.setdefault(op, {}).setdefault(f, arg)
    return doc, [(op, f, arg) for op, fields in doc.items() for f, arg in fields.items()]


def structural_error(doc: dict[str, dict[str, Any]]) -> type[Exception] | None:
    """What validate_update refuses before looking at the entity (docs/operators.md):
    an unknown operator, $rename onto itself, one path touched twice."""
    for op, fields in doc.items():
        if op == "$pop":
            return pq.UnknownOperatorError
        if op == "$rename" and any(src == dst for src, dst in fields.items()):
            return pq.ValidationError
    paths = [f for op, fields in doc.items() for f in fields]
    paths += [dst for dst in doc.get("$rename", {}).values()]
    return pq.ValidationError if len(paths) != len(set(paths)) else None


# --------------------------------------------------------------------------- model queries
def _in(v: Any, wanted: list[Any]) -> bool:
    def eq(a: Any) -> bool:
        return any(type(a) is type(w) and a == w for w in wanted)

    return eq(v) or (isinstance(v, list) and any(eq(x) for x in v))


def _sort_key(v: Any) -> tuple[Any, ...]:
    """docs/operators.md "Sorting": missing/null, numbers, strings, datetimes, then
    anything else (arrays) by its text."""
    if v is _MISSING or v is None:
        return (0, 0)
    if isinstance(v, int):
        return (2, v)
    if isinstance(v, str):
        return (3, v)
    if isinstance(v, datetime):
        return (4, v.astimezone(UTC).replace(tzinfo=None), 1)
    return (11, type(v).__qualname__, str(v))


QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("all", {}),
    ("all+deleted", {"include_deleted": True}),
    ("n>=2 by n desc", {"filter": {"n": {"$gte": 2}}, "sort": {"n": -1, "name": 1}}),
    (
        "l has a or x exists",
        {"filter": {"$or": [{"l": "a"}, {"x": {"$exists": True}}]}, "sort": {"name": -1}, "skip": 1, "limit": 3},
    ),
    ("s not in a,b", {"filter": {"s": {"$nin": ["a", "b"]}}, "include_deleted": True, "sort": {"s": 1}}),
]


def model_find(model: Model, ns: str, name: str) -> list[State]:
    ents = [e for e in model.ents[ns].values() if not e.gone]
    if name != "all+deleted" and name != "s not in a,b":
        ents = [e for e in ents if not e.deleted]
    if name == "all" or name == "all+deleted":
        return [e.current for e in ents]  # type: ignore[misc]
    docs: list[State]
    if name == "n>=2 by n desc":

        def hit(b: State) -> bool:
            v = b.get("n")
            return (isinstance(v, int) and v >= 2) or (
                isinstance(v, list) and any(isinstance(x, int) and x >= 2 for x in v)
            )

        docs = [e.current for e in ents if hit(e.body)]  # type: ignore[misc]
        docs.sort(key=lambda d: _sort_key(d["name"]))
        docs.sort(key=lambda d: _sort_key(d.get("n", _MISSING)), reverse=True)
        return docs
    if name == "l has a or x exists":
        docs = [e.current for e in ents if _in(e.body.get("l", _MISSING), ["a"]) or "x" in e.body]  # type: ignore[misc]
        docs.sort(key=lambda d: _sort_key(d["name"]), reverse=True)
        return docs[1:4]
    assert name == "s not in a,b"
    docs = [e.current for e in ents if not _in(e.body.get("s", _MISSING), ["a", "b"])]  # type: ignore[misc]
    docs.sort(key=lambda d: _sort_key(d.get("s", _MISSING)))
    return docs


# --------------------------------------------------------------------------- strategies
ELEMS = st.one_of(st.integers(-3, 5), st.sampled_from(["a", "b", "c"]))
SCALARS = st.one_of(st.none(), ELEMS)
VALUES = st.one_of(SCALARS, st.lists(ELEMS, max_size=3))
FIELD = st.sampled_from(FIELDS)
#: fields for the number and array operators: mostly one of the right type, or missing
NUM_FIELD = st.sampled_from(["n", "n", "n", "x", "x", "s", "l"])
ARR_FIELD = st.sampled_from(["l", "l", "l", "x", "x", "n", "s"])
EACH = st.one_of(ELEMS, st.builds(lambda xs: {"$each": xs}, st.lists(ELEMS, min_size=1, max_size=3)))

OP = st.one_of(
    st.tuples(st.just("$set"), FIELD, VALUES),
    st.tuples(st.just("$unset"), FIELD, st.just("")),
    st.tuples(st.sampled_from(["$inc", "$mul"]), NUM_FIELD, st.integers(-2, 3)),
    st.tuples(st.sampled_from(["$min", "$max"]), FIELD, ELEMS),
    st.tuples(st.just("$rename"), FIELD, FIELD),
    st.tuples(st.sampled_from(["$push", "$addToSet"]), ARR_FIELD, EACH),
    st.tuples(
        st.just("$pull"),
        ARR_FIELD,
        st.one_of(
            ELEMS,
            st.builds(lambda k: {"$gt": k}, st.integers(-3, 5)),
            st.builds(lambda xs: {"$in": xs}, st.lists(ELEMS, max_size=3)),
        ),
    ),
    st.tuples(st.just("$currentDate"), FIELD, st.sampled_from([True, {"$type": "date"}])),
)
POP = st.tuples(st.just("$pop"), FIELD, st.sampled_from([1, -1]))
#: an update's operators: mostly one or two supported ones; sometimes up to three, $pop among them
OPS = st.one_of(
    st.lists(OP, min_size=1, max_size=1),
    st.lists(OP, min_size=1, max_size=2),
    st.lists(OP, min_size=1, max_size=2),
    st.lists(st.one_of(OP, POP), min_size=1, max_size=3),
)

BODY = st.fixed_dictionaries(
    {"n": st.integers(-3, 5), "s": st.sampled_from(["a", "b", "c"]), "l": st.lists(ELEMS, max_size=3)},
    optional={"x": VALUES},
)
pick = st.integers(0, 10_000)
actors = st.sampled_from(ACTORS)

UPDATE = st.tuples(st.just("update"), pick, OPS, actors, st.sampled_from([None, None, "ok", "bad"]))
ACTION = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(NAMESPACES), BODY, actors),
    st.tuples(st.just("create_many"), st.sampled_from(NAMESPACES), st.lists(BODY, min_size=1, max_size=6), actors),
    UPDATE,
    UPDATE,  # twice: updates are most of the interesting steps
    st.tuples(st.just("delete"), pick, st.booleans(), actors),
    st.tuples(st.just("restore"), pick, actors),
    st.tuples(
        st.just("link"),
        pick,
        pick,
        st.sampled_from(PREDICATES),
        st.sampled_from([None, "rev"]),
        st.one_of(st.none(), st.builds(lambda w: {"w": w}, st.integers(0, 3))),
        st.sampled_from(["link", "$link"]),
        actors,
    ),
    st.tuples(
        st.just("unlink"), pick, pick, st.sampled_from(PREDICATES), st.sampled_from(["unlink", "$unlink"]), actors
    ),
)
ACTIONS = st.lists(ACTION, min_size=1, max_size=4)


# --------------------------------------------------------------------------- the machine
class StoreMachine(RuleBasedStateMachine):
    kind: str = ""
    server_engine: Engine | None = None  # servers: one engine per test, the schema reset per example

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="pq-stateful-"))
        self.archive = self.tmp / "archive"
        if self.server_engine is not None:
            self.engine = self.server_engine
            App.metadata.drop_all(self.engine)
            reset_schema(self.engine)
        else:
            self.engine = dialects.create_engine_for(f"sqlite:///{self.tmp / 'store.db'}")
        App.metadata.create_all(self.engine)
        self.model = Model()
        self.names = 0
        self.item_ids = 0
        self.issued: set[str] = set()  # every id ever returned, rolled-back ones too
        self.db: pq.ParqueDB | None = None
        self.handle: pq.ParqueDB | None = None
        self._open()

    # ------------------------------------------------------------------ handles
    def _open(self) -> None:
        policy = pq.FlushPolicy(mode="manual")
        self.db = pq.ParqueDB(self.engine, archive=self.archive, policy=policy)
        self.maker = sessionmaker(self.engine, expire_on_commit=False)
        self.handle = pq.enable(self.maker, archive=self.archive, policy=policy)

    def _close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.db is not None:
            self.db.close()
            self.db = None

    def teardown(self) -> None:
        self._close()
        if self.server_engine is None:
            self.engine.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def store(self) -> pq.ParqueDB:
        assert self.db is not None
        return self.db

    # ------------------------------------------------------------------ running actions
    def _name(self) -> str:
        self.names += 1
        return f"e{self.names:04d}"

    def _item(self, s: Any) -> int:
        self.item_ids += 1
        s.add(Item(id=self.item_ids))
        s.flush()
        return self.item_ids

    def _observe(self, api: Any, m: Model, e: Ent) -> None:
        """Record the state of the version just written; check it against the model."""
        got = api.get(e.ns, e.id, include_deleted=True)
        assert normalise(got) == e.expected(), (e.ref, got, e.expected())
        if got is not None and 1 in e.states and e.states[1] is not None:
            assert got["createdAt"] == e.states[1]["createdAt"], e.ref
        e.states[e.version] = got
        m.touched.add(e.ref)

    def _new(self, m: Model, api: Any, ns: str, body: State, got: State, actor: str | None) -> None:
        e = Ent(ns, got["$id"].split("/")[1], body, actor, updated_by=actor)
        assert e.ref not in self.issued, f"{e.ref} issued twice (rolled-back ids are never issued again)"
        self.issued.add(e.ref)
        assert got["$id"] == e.ref
        assert normalise(got) == e.expected(), (got, e.expected())
        e.states[1] = got
        e.events.append(("CREATE", 1, actor, copy.deepcopy(body)))
        m.ents[ns][e.id] = e
        m.touched.add(e.ref)
        assert api.get(ns, e.id) == got

    def run(self, api: Any, m: Model, action: tuple[Any, ...]) -> None:
        """One action on `api` (the store, a transaction's Store or a session's store) and
        on the model `m`: the prediction first, then the call, then the comparison."""
        kind = action[0]
        if kind == "create":
            _k, ns, body, actor = action
            body = {"name": self._name(), **body}
            self._new(m, api, ns, body, api.create(ns, copy.deepcopy(body), actor=actor), actor)
        elif kind == "create_many":
            _k, ns, bodies, actor = action
            bodies = [{"name": self._name(), **b} for b in bodies]
            made = api.create_many(ns, copy.deepcopy(bodies), actor=actor)
            assert len(made) == len(bodies)
            for body, got in zip(bodies, made, strict=True):
                self._new(m, api, ns, body, got, actor)
        elif kind == "update":
            self._update(api, m, *action[1:])
        elif kind == "delete":
            _k, n, hard, actor = action
            e = m.pick(n)
            if e is None:
                return
            if e.gone:
                with pytest.raises(pq.EntityNotFoundError):
                    api.delete(e.ns, e.id, hard=hard, actor=actor)
                return
            done = api.delete(e.ns, e.id, hard=hard, actor=actor)
            if e.deleted and not hard:
                assert done is False, e.ref
                return
            assert done is True, e.ref
            e.version += 1
            e.updated_by = actor
            e.events.append(("DELETE", e.version, actor, {"hard": hard}))
            if hard:
                e.gone = True
            else:
                e.deleted, e.deleted_by = True, actor
            self._observe(api, m, e)
        elif kind == "restore":
            _k, n, actor = action
            e = m.pick(n)
            if e is None:
                return
            if e.gone:
                with pytest.raises(pq.EntityNotFoundError):
                    api.restore(e.ns, e.id, actor=actor)
                return
            out = api.restore(e.ns, e.id, actor=actor)
            if e.deleted:
                e.deleted, e.deleted_by = False, None
                e.version += 1
                e.updated_by = actor
                e.events.append(("RESTORE", e.version, actor, None))
                self._observe(api, m, e)
            assert out == e.current, e.ref
        elif kind == "link":
            self._link(api, m, *action[1:])
        elif kind == "unlink":
            self._unlink(api, m, *action[1:])
        else:
            raise AssertionError(kind)

    def _update(self, api: Any, m: Model, n: int, ops: list[Any], actor: str | None, expect: str | None) -> None:
        e = m.pick(n)
        if e is None:
            return
        doc, ops = update_doc(ops)
        expected_version = None if expect is None else e.version + (0 if expect == "ok" else 1)
        refused: type[Exception] | None = structural_error(doc)
        new: State | None = None
        if refused is None and not e.live:
            refused = pq.EntityNotFoundError
        elif refused is None and expect == "bad":
            refused = pq.VersionConflictError
        elif refused is None:
            try:
                new = apply_ops(e.body, ops)
            except Refused as r:
                refused = r.error
        if refused is not None:
            with pytest.raises(refused):
                api.update(e.ns, e.id, copy.deepcopy(doc), expected_version=expected_version, actor=actor)
            assert normalise(api.get(e.ns, e.id, include_deleted=True)) == e.expected(), "a refused update wrote"
            return
        out = api.update(e.ns, e.id, copy.deepcopy(doc), expected_version=expected_version, actor=actor)
        assert new is not None
        e.body = new
        e.version += 1
        e.updated_by = actor
        e.events.append(("UPDATE", e.version, actor, copy.deepcopy(doc)))
        assert normalise(out) == e.expected(), (e.ref, doc, out, e.expected())
        self._observe(api, m, e)
        assert out == e.current

    def _link(
        self,
        api: Any,
        m: Model,
        a: int,
        b: int,
        pred: str,
        reverse: str | None,
        data: Any,
        style: str,
        actor: str | None,
    ) -> None:
        src, dst = m.pick(a), m.pick(b)
        if src is None or dst is None:
            return
        if style == "$link":
            reverse = data = None

        def call() -> None:
            if style == "link":
                api.link(src.ref, pred, dst.ref, reverse=reverse, data=copy.deepcopy(data), actor=actor)
            else:
                api.update(src.ns, src.id, {"$link": {pred: [dst.ref]}}, actor=actor)

        if not (src.live and dst.live):
            with pytest.raises(pq.EntityNotFoundError):
                call()
            return
        call()
        m.link_order += 1
        m.links[(src.ref, pred, dst.ref)] = LinkRec(m.link_order, reverse, copy.deepcopy(data), actor)
        src.events.append(("LINK", None, actor, {"predicate": pred, "to": dst.ref, "reverse": reverse, "data": data}))
        m.touched |= {src.ref, dst.ref}

    def _unlink(self, api: Any, m: Model, a: int, b: int, pred: str, style: str, actor: str | None) -> None:
        if m.links and a % 3:  # mostly an existing link; else any pair (a no-op UNLINK event)
            key = sorted(m.links, key=lambda k: m.links[k].order)[b % len(m.links)]
        else:
            src_e, dst_e = m.pick(a), m.pick(b)
            if src_e is None or dst_e is None:
                return
            key = (src_e.ref, pred, dst_e.ref)
        src = m.by_ref(key[0])
        if style == "$unlink":
            if not src.live:
                with pytest.raises(pq.EntityNotFoundError):
                    api.update(src.ns, src.id, {"$unlink": {key[1]: key[2]}}, actor=actor)
                return
            api.update(src.ns, src.id, {"$unlink": {key[1]: key[2]}}, actor=actor)
        else:
            api.unlink(*key, actor=actor)
        m.links.pop(key, None)
        src.events.append(("UNLINK", None, actor, {"predicate": key[1], "to": key[2], "reverse": None, "data": None}))
        m.touched |= {key[0], key[2]}

    # ------------------------------------------------------------------ the three write paths
    def _via(self, via: str, actions: list[tuple[Any, ...]]) -> None:
        if via == "db":
            for action in actions:
                self.run(self.store, self.model, action)
            return
        work = copy.deepcopy(self.model)
        if via == "tx":
            with self.store.transaction() as tx:
                for action in actions:
                    self.run(tx, work, action)
        else:
            with self.maker() as s:
                st = pq.store(s)
                work.items.add(self._item(s))
                for action in actions:
                    self.run(st, work, action)
                s.commit()
        self.model = work

    # ------------------------------------------------------------------ rules
    @initialize(posts=st.lists(BODY, min_size=1, max_size=3), users=st.lists(BODY, min_size=1, max_size=3))
    def seed(self, posts: list[State], users: list[State]) -> None:
        """A few entities in each namespace first, so that every step has something to act on."""
        self._via("db", [("create_many", "posts", posts, None), ("create_many", "users", users, "users/ann")])

    @rule(ns=st.sampled_from(NAMESPACES), body=BODY, actor=actors, via=st.sampled_from(VIAS))
    def create(self, ns: str, body: State, actor: str | None, via: str) -> None:
        self._via(via, [("create", ns, body, actor)])

    @rule(
        ns=st.sampled_from(NAMESPACES),
        bodies=st.lists(BODY, min_size=1, max_size=6),
        actor=actors,
        via=st.sampled_from(VIAS),
    )
    def create_many(self, ns: str, bodies: list[State], actor: str | None, via: str) -> None:
        self._via(via, [("create_many", ns, bodies, actor)])

    @rule(updates=st.lists(UPDATE, min_size=1, max_size=5), via=st.sampled_from(VIAS))
    def update(self, updates: list[tuple[Any, ...]], via: str) -> None:
        """A few updates in a row (each its own transaction through the store itself)."""
        self._via(via, updates)

    @rule(n=pick, hard=st.booleans(), actor=actors, via=st.sampled_from(VIAS))
    def delete(self, n: int, hard: bool, actor: str | None, via: str) -> None:
        self._via(via, [("delete", n, hard, actor)])

    @rule(n=pick, actor=actors, via=st.sampled_from(VIAS))
    def restore(self, n: int, actor: str | None, via: str) -> None:
        self._via(via, [("restore", n, actor)])

    @rule(
        a=pick,
        b=pick,
        pred=st.sampled_from(PREDICATES),
        reverse=st.sampled_from([None, "rev"]),
        data=st.one_of(st.none(), st.builds(lambda w: {"w": w}, st.integers(0, 3))),
        style=st.sampled_from(["link", "$link"]),
        actor=actors,
        via=st.sampled_from(VIAS),
    )
    def link(self, a: int, b: int, pred: str, reverse: str | None, data: Any, style: str, actor: Any, via: str) -> None:
        self._via(via, [("link", a, b, pred, reverse, data, style, actor)])

    @rule(
        a=pick,
        b=pick,
        pred=st.sampled_from(PREDICATES),
        style=st.sampled_from(["unlink", "$unlink"]),
        actor=actors,
        via=st.sampled_from(VIAS),
    )
    def unlink(self, a: int, b: int, pred: str, style: str, actor: str | None, via: str) -> None:
        self._via(via, [("unlink", a, b, pred, style, actor)])

    @rule(actions=ACTIONS, via=st.sampled_from(["tx", "session"]))
    def several_committed(self, actions: list[tuple[Any, ...]], via: str) -> None:
        """Several steps in one transaction or one session commit."""
        self._via(via, actions)

    @rule(actions=ACTIONS, via=st.sampled_from(["tx", "session"]))
    def rollback(self, actions: list[tuple[Any, ...]], via: str) -> None:
        """Several steps, then the transaction raises (or the session rolls back): none visible."""
        before = self.dump()
        work = copy.deepcopy(self.model)
        if via == "tx":
            with pytest.raises(_Boom), self.store.transaction() as tx:
                for action in actions:
                    self.run(tx, work, action)
                raise _Boom
        else:
            with self.maker() as s:
                st_ = pq.store(s)
                self._item(s)
                for action in actions:
                    self.run(st_, work, action)
                s.rollback()
                for e in work.all():  # the same session after its rollback sees the committed state
                    if e.ref in work.touched:
                        old = self._committed(e.ref)
                        assert st_.get(e.ns, e.id, include_deleted=True) == old, e.ref
        assert self.dump() == before, "a rolled-back transaction left a trace"

    @rule(outer=ACTIONS, inner=ACTIONS, after=st.lists(ACTION, max_size=2))
    def savepoint_rollback(self, outer: list[Any], inner: list[Any], after: list[Any]) -> None:
        """Session path: steps, a savepoint with steps (and an app row) rolled back, more
        steps, one commit: exactly the steps outside the savepoint are committed."""
        work = copy.deepcopy(self.model)
        with self.maker() as s:
            st_ = pq.store(s)
            work.items.add(self._item(s))  # app SQL first (on SQLite: the write lock)
            for action in outer:
                self.run(st_, work, action)
            kept = copy.deepcopy(work)
            sp = s.begin_nested()
            self._item(s)
            for action in inner:
                self.run(st_, work, action)
            sp.rollback()
            # the session sees the state before the savepoint again
            for e in kept.all():
                assert st_.get(e.ns, e.id, include_deleted=True) == e.current, e.ref
            for e in work.all():
                if e.ref not in {k.ref for k in kept.all()}:
                    assert st_.get(e.ns, e.id, include_deleted=True) is None, f"{e.ref} survived its savepoint"
            for ns in NAMESPACES:
                assert st_.find(ns, include_deleted=True) == model_find(kept, ns, "all+deleted")
            kept.touched |= work.touched & {e.ref for e in kept.all()}
            work = kept
            for action in after:
                self.run(st_, work, action)
            s.commit()
        self.model = work

    @rule()
    def flush(self) -> None:
        before = self.dump()
        result = self.store.flush()
        assert not result.skipped
        assert self.store.stats()["unflushed_events"] == 0
        assert self.dump() == before, "a flush changed an answer"
        self.model.touched = {e.ref for e in self.model.all()}

    @rule(threshold=st.integers(1, 2))
    def compact(self, threshold: int) -> None:
        before = self.dump()
        self.store.compact(threshold)
        assert self.dump() == before, "a compaction changed an answer"
        self.model.touched = {e.ref for e in self.model.all()}

    @rule()
    def restart(self) -> None:
        before = self.dump()
        self._close()
        self._open()
        assert self.dump() == before, "a restart changed an answer"
        self.model.touched = {e.ref for e in self.model.all()}

    # ------------------------------------------------------------------ checks
    def _committed(self, ref: str) -> State | None:
        return self.model.by_ref(ref).current if ref in {e.ref for e in self.model.all()} else None

    def dump(self) -> dict[str, Any]:
        """Every answer, whole (timestamps, seqs, link data included)."""
        db = self.store
        out: dict[str, Any] = {}
        for e in self.model.all():
            out[e.ref] = (
                db.get(e.ns, e.id, include_deleted=True),
                db.history(e.ref),
                db.links(e.ref),
                db.links(e.ref, direction="inbound"),
            )  # as_of: the invariant after the step checks every version of every entity
        for ns in NAMESPACES:
            out[ns] = [db.find(ns, **kw) for _name, kw in QUERIES]
        with self.engine.connect() as conn:
            out["items"] = sorted(conn.execute(select(Item.id)).scalars())
        return out

    @invariant()
    def agrees_with_model(self) -> None:
        db, m = self.store, self.model
        for e in m.all():
            assert db.get(e.ns, e.id, include_deleted=True) == e.current, e.ref
            assert db.get(e.ns, e.id) == (e.current if e.live else None), e.ref
        for ns in NAMESPACES:
            for name, kw in QUERIES:
                assert db.find(ns, **kw) == model_find(m, ns, name), (ns, name)
        with self.maker() as s:  # the session path reads the same
            for ns in NAMESPACES:
                assert pq.store(s).find(ns) == model_find(m, ns, "all")
        for e in m.all():
            if e.ref in m.touched:
                self._check_history(e)
        m.touched = set()
        self._check_links()
        with self.engine.connect() as conn:
            assert set(conn.execute(select(Item.id)).scalars()) == m.items

    def _check_history(self, e: Ent) -> None:
        db = self.store
        hist = db.history(e.ref)
        assert all(h["$id"] == e.ref for h in hist)
        got = [(h["op"], h["version"], h["actor"], h["data"]) for h in hist]
        assert got == e.events, (e.ref, got, e.events)
        assert db.get(e.ns, e.id, as_of=0, include_deleted=True) is None
        for v in range(1, e.version + 1):
            want = e.states[v]
            assert db.get(e.ns, e.id, as_of=v, include_deleted=True) == want, (e.ref, v)
            visible = want if want is not None and "deletedAt" not in want else None
            assert db.get(e.ns, e.id, as_of=v) == visible, (e.ref, v)
        # by time: the newest version whose event is at or before the instant
        stamps = [(h["version"], h["ts"]) for h in hist if h["version"] is not None]
        for _v, ts in stamps[:1] + stamps[-2:]:  # the first and the last two
            newest = max(w for w, t in stamps if t <= ts)
            assert db.get(e.ns, e.id, as_of=ts, include_deleted=True) == e.states[newest], (e.ref, ts)

    def _check_links(self) -> None:
        db, m = self.store, self.model
        ordered = sorted(m.links.items(), key=lambda kv: kv[1].order)

        def live(ref: str) -> bool:
            return m.by_ref(ref).live

        for e in m.all():
            out = [(k, r) for k, r in ordered if k[0] == e.ref]
            want_links = [
                {
                    "from": k[0],
                    "predicate": k[1],
                    "to": k[2],
                    "reverse": r.reverse,
                    "data": r.data,
                    "createdBy": r.actor,
                }
                for k, r in out
            ]
            got_links = [{k: v for k, v in lk.items() if k != "createdAt"} for lk in db.links(e.ref)]
            assert got_links == want_links, (e.ref, "links")
            targets = list(dict.fromkeys(k[2] for k, _r in out if live(k[2])))
            assert [x["$id"] for x in db.related(e.ref)] == targets, (e.ref, "outbound")
            inbound = [(k, r) for k, r in ordered if k[2] == e.ref]
            got_in = [lk["from"] for lk in db.links(e.ref, direction="inbound")]
            assert got_in == [k[0] for k, _r in inbound], (e.ref, "inbound links")
            sources = list(dict.fromkeys(k[0] for k, _r in inbound if live(k[0])))
            related_in = db.related(e.ref, direction="inbound")
            assert [x["$id"] for x in related_in] == sources, (e.ref, "inbound")
            assert related_in == [m.by_ref(r).current for r in sources]
            for name in (*PREDICATES, "rev"):
                by_name = [k[0] for k, r in inbound if (k[1] == name or r.reverse == name) and live(k[0])]
                got = [x["$id"] for x in db.related(e.ref, name, direction="inbound")]
                assert got == list(dict.fromkeys(by_name)), (e.ref, name, "inbound by name")


class _Boom(Exception):
    pass


# --------------------------------------------------------------------------- the tests
@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def server_engine(kind: str, tmp_path: Path) -> Iterator[Engine | None]:
    if kind.startswith("sqlite"):
        yield None  # a new file per example
        return
    engine = make_engine(kind, tmp_path)  # skips (or fails under CI) without the server
    try:
        yield engine
    finally:
        App.metadata.drop_all(engine)
        reset_schema(engine)
        engine.dispose()


def test_store_agrees_with_the_model(kind: str, server_engine: Engine | None) -> None:
    machine = type(
        f"StoreMachine_{kind.replace('-', '_')}", (StoreMachine,), {"kind": kind, "server_engine": server_engine}
    )
    run_state_machine_as_test(machine, settings=machine_settings(kind))
