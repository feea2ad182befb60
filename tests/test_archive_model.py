"""A hypothesis state machine drives the store through random operations -- create,
update (a few operators), soft and hard delete, restore, link, unlink, `create_many` of 5-8
entities (the bulk path straight to Parquet), flush, compaction and restart (close + a new
`ParqueDB` on the same engine and archive) -- and checks it against an in-memory model
after every step: `get`, `find` (a filter and a sort, and creation order), `related` in both
directions, `history` and `get(as_of=version)`.

The model predicts everything but the timestamps; those are taken from the first read
after the write that made a version and must never change afterwards. Flush, compaction
and restart must not change a single answer: each of them compares a full dump of every
answer before and after.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import Engine

import parquedb_orm as pq
from parquedb_orm.sql import dialects

State = dict[str, Any]
NAMESPACES = ("posts", "users")
PREDICATES = ("likes", "author")
ACTORS = (None, "users/ann")
META = frozenset(
    {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}
)
FIND_FILTER = {"score": {"$gte": 3}}
FIND_SORT = {"score": -1, "name": 1}

pick = st.integers(min_value=0, max_value=10_000)
scores = st.integers(min_value=-5, max_value=20)
tags = st.lists(st.sampled_from(["a", "b", "c"]), max_size=3)
actors = st.sampled_from(ACTORS)


@dataclass
class MEntity:
    """The model of one entity."""

    ns: str
    id: str
    name: str
    body: State  # the user's fields
    version: int = 1
    deleted: bool = False  # soft
    gone: bool = False  # hard-deleted
    created_by: str | None = None
    updated_by: str | None = None
    #: the full state each version had (None: hard-deleted), as first read after its write
    states: dict[int, State | None] = field(default_factory=dict)
    #: expected history: (op, version) of entity events and (op, None) of the links it made
    ops: list[tuple[str, int | None]] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.ns}/{self.id}"

    @property
    def live(self) -> bool:
        return not self.deleted and not self.gone


def body_of(state: State) -> State:
    return {k: v for k, v in state.items() if k not in META}


class ArchiveMachine(RuleBasedStateMachine):
    """Subclasses say which database: `make_engine(tmp)`."""

    def make_engine(self, tmp: Path) -> Engine:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="pq-model-"))
        self.engine = self.make_engine(self.tmp)
        self.archive = self.tmp / "archive"
        self.db = self._open()
        self.entities: list[MEntity] = []
        self.links: dict[tuple[str, str, str], int] = {}  # (from, predicate, to) -> link order
        self.order = itertools.count()
        self.names = itertools.count()
        self.touched: list[MEntity] = []

    def _open(self) -> pq.ParqueDB:
        return pq.ParqueDB(self.engine, archive=self.archive, policy=pq.FlushPolicy(mode="manual"))

    def teardown(self) -> None:
        self.db.close()
        self.engine.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def _choose(self, n: int, ok: Any) -> MEntity | None:
        cands = [m for m in self.entities if ok(m)]
        return cands[n % len(cands)] if cands else None

    def _any(self, ok: Any) -> bool:
        return any(ok(m) for m in self.entities)

    def _observe(self, m: MEntity) -> None:
        """Record the state of the version just written, checking what the model knows."""
        got = self.db.get(m.ns, m.id, include_deleted=True)
        if m.gone:
            assert got is None
            m.states[m.version] = None
        else:
            assert got is not None
            self._check_state(m, got)
            m.states[m.version] = got
        self.touched.append(m)

    def _check_state(self, m: MEntity, got: State) -> None:
        assert got["$id"] == m.ref and got["$type"] == m.ns
        assert body_of(got) == m.body, (m.ref, body_of(got), m.body)
        assert got["version"] == m.version
        assert got["createdBy"] == m.created_by and got["updatedBy"] == m.updated_by
        assert ("deletedAt" in got) == m.deleted
        first = m.states.get(1)
        if first is not None:
            assert got["createdAt"] == first["createdAt"]
        previous = m.states.get(m.version - 1)
        if previous is not None:
            assert got["updatedAt"] >= previous["updatedAt"]

    def _new(self, ns: str, state: State, body: State, actor: str | None) -> MEntity:
        m = MEntity(ns, state["$id"].split("/")[1], body["name"], body, created_by=actor, updated_by=actor)
        assert all(m.ref != e.ref for e in self.entities), f"id {m.ref} issued twice"
        self._check_state(m, state)
        m.states[1] = state
        m.ops.append(("CREATE", 1))
        self.entities.append(m)
        self.touched.append(m)
        return m

    def _body(self, score: int, tag_list: list[str]) -> State:
        return {"name": f"n{next(self.names):04d}", "score": score, "tags": list(tag_list)}

    # ------------------------------------------------------------------ rules
    @rule(ns=st.sampled_from(NAMESPACES), score=scores, tag_list=tags, actor=actors)
    def create(self, ns: str, score: int, tag_list: list[str], actor: str | None) -> None:
        body = self._body(score, tag_list)
        self._new(ns, self.db.create(ns, dict(body), actor=actor), body, actor)

    @rule(ns=st.sampled_from(NAMESPACES), n=st.integers(min_value=5, max_value=8), score=scores, actor=actors)
    def create_many(self, ns: str, n: int, score: int, actor: str | None) -> None:
        bodies = [self._body(score + i, ["bulk"]) for i in range(n)]
        made = self.db.create_many(ns, [dict(b) for b in bodies], actor=actor)
        assert len(made) == n
        for state, body in zip(made, bodies, strict=True):
            self._new(ns, state, body, actor)

    @precondition(lambda self: self._any(lambda m: m.live))
    @rule(
        n=pick,
        op=st.sampled_from(["set_score", "inc", "mul", "set_color", "unset_color", "push", "add_to_set"]),
        value=st.integers(min_value=-3, max_value=3),
        actor=actors,
    )
    def update(self, n: int, op: str, value: int, actor: str | None) -> None:
        m = self._choose(n, lambda m: m.live)
        assert m is not None
        b = m.body
        if op == "set_score":
            doc: State = {"$set": {"score": value}}
            b["score"] = value
        elif op == "inc":
            doc = {"$inc": {"score": value}}
            b["score"] += value
        elif op == "mul":
            doc = {"$mul": {"score": value}}
            b["score"] *= value
        elif op == "set_color":
            doc = {"$set": {"color": f"c{value}"}}
            b["color"] = f"c{value}"
        elif op == "unset_color":
            doc = {"$unset": {"color": ""}}
            b.pop("color", None)
        elif op == "push":
            doc = {"$push": {"tags": f"t{value}"}}
            b["tags"].append(f"t{value}")
        else:
            doc = {"$addToSet": {"tags": f"t{value}"}}
            if f"t{value}" not in b["tags"]:
                b["tags"].append(f"t{value}")
        expected_version = m.version if value % 2 else None
        out = self.db.update(m.ns, m.id, doc, expected_version=expected_version, actor=actor)
        m.version += 1
        m.updated_by = actor
        m.ops.append(("UPDATE", m.version))
        assert body_of(out) == m.body and out["version"] == m.version
        self._observe(m)

    @precondition(lambda self: self._any(lambda m: not m.gone))
    @rule(n=pick, hard=st.booleans(), actor=actors)
    def delete(self, n: int, hard: bool, actor: str | None) -> None:
        m = self._choose(n, lambda m: not m.gone)
        assert m is not None
        done = self.db.delete(m.ns, m.id, hard=hard, actor=actor)
        if m.deleted and not hard:
            assert done is False  # already deleted: no event
            return
        assert done is True
        m.version += 1
        m.ops.append(("DELETE", m.version))
        m.updated_by = actor
        if hard:
            m.gone = True
        else:
            m.deleted = True
        self._observe(m)

    @precondition(lambda self: self._any(lambda m: not m.gone))
    @rule(n=pick, actor=actors)
    def restore(self, n: int, actor: str | None) -> None:
        m = self._choose(n, lambda m: not m.gone)
        assert m is not None
        out = self.db.restore(m.ns, m.id, actor=actor)
        if m.deleted:
            m.deleted = False
            m.version += 1
            m.updated_by = actor
            m.ops.append(("RESTORE", m.version))
            self._observe(m)
        assert out == m.states[m.version]

    @precondition(lambda self: self._any(lambda m: m.live))
    @rule(a=pick, b=pick, predicate=st.sampled_from(PREDICATES))
    def link(self, a: int, b: int, predicate: str) -> None:
        src = self._choose(a, lambda m: m.live)
        dst = self._choose(b, lambda m: m.live)
        assert src is not None and dst is not None
        self.db.link(src.ref, predicate, dst.ref, reverse=f"{predicate}_of")
        self.links[(src.ref, predicate, dst.ref)] = next(self.order)
        src.ops.append(("LINK", None))
        self.touched += [src, dst]

    @precondition(lambda self: bool(self.links))
    @rule(n=pick)
    def unlink(self, n: int) -> None:
        key = sorted(self.links, key=self.links.__getitem__)[n % len(self.links)]
        self.db.unlink(*key)
        del self.links[key]
        src = next(m for m in self.entities if m.ref == key[0])
        src.ops.append(("UNLINK", None))
        self.touched.append(src)

    @rule()
    def flush(self) -> None:
        before = self.dump()
        result = self.db.flush()
        assert not result.skipped
        assert self.db.stats()["unflushed_events"] == 0
        assert self.dump() == before, "a flush changed an answer"
        self.touched = list(self.entities)

    @rule(threshold=st.integers(min_value=1, max_value=2))
    def compact(self, threshold: int) -> None:
        before = self.dump()
        self.db.compact(threshold)
        assert self.dump() == before, "a compaction changed an answer"
        self.touched = list(self.entities)

    @rule()
    def restart(self) -> None:
        before = self.dump()
        self.db.close()
        self.db = self._open()
        assert self.dump() == before, "a restart changed an answer"
        self.touched = list(self.entities)

    # ------------------------------------------------------------------ checks
    def dump(self) -> dict[str, Any]:
        """The answers the model cannot predict whole (timestamps, sequences, link data)."""
        out: dict[str, Any] = {}
        for m in self.entities:
            out[m.ref] = (
                self.db.get(m.ns, m.id, include_deleted=True),
                self.db.history(m.ref),  # whole entries: seq, ts, actor, data too
                self.db.links(m.ref),
                self.db.links(m.ref, direction="inbound"),
            )  # get(as_of=...) and related: the invariant checks them against the model
        for ns in NAMESPACES:
            out[ns] = (self.db.find(ns), self.db.find(ns, FIND_FILTER, sort=FIND_SORT))
        return out

    def current(self, ref: str) -> MEntity:
        return next(m for m in self.entities if m.ref == ref)

    @invariant()
    def agrees_with_model(self) -> None:
        if not self.entities:
            return
        for m in self.entities:
            got = self.db.get(m.ns, m.id, include_deleted=True)
            assert got == m.states[m.version], m.ref
            assert self.db.get(m.ns, m.id) == (m.states[m.version] if m.live else None)
        for m in {id(m): m for m in self.touched}.values():
            hist = self.db.history(m.ref)
            assert [(h["op"], h["version"]) for h in hist] == m.ops, m.ref
            assert all(h["$id"] == m.ref for h in hist)
            for v in range(1, m.version + 1):
                assert self.db.get(m.ns, m.id, as_of=v, include_deleted=True) == m.states[v], (m.ref, v)
        self.touched = []
        for ns in NAMESPACES:
            live = [m for m in self.entities if m.ns == ns and m.live]
            assert self.db.find(ns) == [m.states[m.version] for m in live]
            hits = [m for m in live if m.body["score"] >= 3]
            hits.sort(key=lambda m: (-m.body["score"], m.name))
            assert self.db.find(ns, FIND_FILTER, sort=FIND_SORT) == [m.states[m.version] for m in hits]
        self._check_related()

    def _check_related(self) -> None:
        by_order = sorted(self.links, key=self.links.__getitem__)
        for m in self.entities:
            out: list[str] = []
            for src, _pred, dst in by_order:
                if src == m.ref and dst not in out and self.current(dst).live:
                    out.append(dst)
            got = self.db.related(m.ref)
            assert [e["$id"] for e in got] == out, (m.ref, "outbound")
            assert got == [self.current(r).states[self.current(r).version] for r in out]
            inbound: list[str] = []
            for src, _pred, dst in by_order:
                if dst == m.ref and src not in inbound and self.current(src).live:
                    inbound.append(src)
            got = self.db.related(m.ref, direction="inbound")
            assert [e["$id"] for e in got] == inbound, (m.ref, "inbound")
            for predicate in PREDICATES:
                want = [s for s, p, d in by_order if d == m.ref and p == predicate and self.current(s).live]
                got_ids = [e["$id"] for e in self.db.related(m.ref, f"{predicate}_of", direction="inbound")]
                assert got_ids == list(dict.fromkeys(want)), (m.ref, predicate, "by reverse name")


class SqliteMemoryMachine(ArchiveMachine):
    def make_engine(self, tmp: Path) -> Engine:
        # one Engine for the whole run: the in-memory database lives in it (StaticPool)
        return dialects.create_engine_for("sqlite://")


class SqliteFileMachine(ArchiveMachine):
    def make_engine(self, tmp: Path) -> Engine:
        return dialects.create_engine_for(f"sqlite:///{tmp / 'store.db'}")


_COMMON = {
    "deadline": None,
    "stateful_step_count": 20,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
}

SqliteMemoryMachine.TestCase.settings = settings(max_examples=40, **_COMMON)  # type: ignore[arg-type]
SqliteFileMachine.TestCase.settings = settings(max_examples=10, **_COMMON)  # type: ignore[arg-type]

TestArchiveModelSqliteMemory = SqliteMemoryMachine.TestCase
TestArchiveModelSqliteFile = SqliteFileMachine.TestCase
