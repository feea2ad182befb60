"""Committed state of entities: cache, else the WAL tail folded onto the entity's
archived state (delta, base or bulk file: `ArchivedReads.lookup`), and the whole of a
namespace for `find`."""

from __future__ import annotations

from sqlalchemy import Connection

from parquedb_orm.core.events import State, Versioned, starts_entity
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.engine.state import Known, NsState, fold
from parquedb_orm.engine.tail import WalTail


class Reads:
    def __init__(self, known: Known, tail: WalTail, archived: ArchivedReads) -> None:
        self.known = known
        self.lock = known.lock
        self.tail = tail
        self.archived = archived
        #: the last `committed_states` (namespace state, its epoch, the archived states it
        #: folded, the result): finds with no commit in between reuse it; one namespace
        #: only, so it holds at most one small namespace's states
        self._all: tuple[NsState, int, object, dict[str, State | None]] | None = None

    def cached(self, ns: str, entity_id: str) -> Versioned | None:
        """A single owner's cached committed state, without touching SQL (None: not cached,
        or shared mode, where the cache must be checked against the database first)."""
        if self.known.shared:
            return None
        st = self.known.peek(ns)
        if st is None:
            return None
        with self.lock:
            return st.cache.get(entity_id)

    def committed(self, conn: Connection, ns: str, entity_id: str, *, fresh: bool = False) -> Versioned:
        """The committed state of one entity: cache, else the WAL tail folded onto the
        entity's archived state (one piece of one Parquet file, no SQL row).
        `fresh`: the caller has just refreshed this namespace's tail (shared mode)."""
        st = self.known.ns(ns)
        if not self.known.shared or fresh:
            with self.lock:
                hit = st.cache.get(entity_id)
            if hit is not None:
                return hit
        st = self.tail.ensure(conn, ns)
        with self.lock:
            hit = st.cache.get(entity_id)
        if hit is not None:
            return hit
        return self._load(conn, st, [entity_id])[entity_id]

    def presence(self, conn: Connection, ns: str, entity_id: str) -> bool | None:
        """Whether the entity is committed and live (True), deleted (False) or absent (None),
        as `committed` would tell, but without reading its document from the archive where
        nothing of it is in the WAL tail (`ArchivedReads.presence`: a link's endpoints)."""
        st = self.known.ns(ns)
        if not self.known.shared:
            with self.lock:
                hit = st.cache.get(entity_id)
            if hit is not None:
                return _presence_of(hit[1])
        st = self.tail.ensure(conn, ns)
        while True:
            epoch = st.epoch
            with self.lock:
                hit = st.cache.get(entity_id)
                pending = entity_id in st.tail_base or bool(st.tail.get(entity_id))
            if hit is not None:
                return _presence_of(hit[1])
            if pending:  # unflushed events of it: fold them (the tail was just refreshed)
                return _presence_of(self.committed(conn, ns, entity_id, fresh=True)[1])
            found = self.archived.presence(conn, ns, entity_id)
            with self.lock:
                if st.epoch == epoch:
                    return found
            # a commit or flush moved the tail meanwhile: look again

    def prefetch(self, conn: Connection, ns: str, ids: list[str]) -> None:
        """Cache the committed state of many ids with one batched archive lookup, where
        `committed` would look up one id at a time (a flush of a thousand tracked rows)."""
        st = self.tail.ensure(conn, ns)
        with self.lock:
            missing = [eid for eid in dict.fromkeys(ids) if eid not in st.cache]
        if len(missing) < 2:
            return  # committed() reads it as cheaply
        self._load(conn, st, missing)

    def _load(self, conn: Connection, st: NsState, ids: list[str]) -> dict[str, Versioned]:
        """Fold each id's tail onto its base (what this process knew before the tail, else
        the archive's latest state), cache and return the results."""
        ns = st.name
        while True:
            epoch = st.epoch
            with self.lock:
                need = [
                    eid
                    for eid in ids
                    if eid not in st.tail_base and not any(starts_entity(ev) for ev in st.tail.get(eid)[:1])
                ]
            found = self.archived.lookup(conn, ns, need) if need else {}
            with self.lock:
                if st.epoch != epoch:
                    continue  # a commit or flush moved the tail meanwhile: read again
                out: dict[str, Versioned] = {}
                for eid in ids:
                    base = st.tail_base.get(eid)
                    after = 0
                    if base is None:
                        hit = found.get(eid)
                        base, after = ((0, None), 0) if hit is None else ((hit[0], hit[2]), hit[1])
                    value = fold(ns, base, st.tail.get(eid), after)
                    old = st.cache.get(eid)
                    if old is None or old[0] <= value[0]:
                        st.cache[eid] = value
                    else:
                        value = old
                    out[eid] = value
                return out

    def committed_states(self, conn: Connection, ns: str) -> dict[str, State | None]:
        """Every entity's committed state in a namespace (the in-memory find of a small
        namespace): its archived states with the tail folded on. Kept for the next call
        until a commit to the namespace (one namespace only): callers must not modify it."""
        st = self.tail.ensure(conn, ns)
        while True:
            epoch = st.epoch
            archived = self.archived.states(conn, ns)  # Parquet: no SQL row per archived entity
            with self.lock:
                if st.epoch != epoch:
                    continue
                memo = self._all
                if memo is not None and memo[0] is st and memo[1] == epoch and memo[2] is archived:
                    return memo[3]  # nothing committed since: the same states (callers copy)
                # folded here, not taken from the entity cache: a CI run of concurrent
                # ORM sessions (tests/test_flask.py) once missed a committed entity when
                # this read the cache; not understood yet, so the tail stays the source
                tail = st.tail
                seen: dict[str, State | None] = {}
                for eid, (version, seq, state) in archived.items():
                    seen[eid] = fold(ns, (version, state), tail.get(eid), seq)[1] if eid in tail else state
                for eid in tail:
                    if eid not in seen:
                        seen[eid] = fold(ns, st.tail_base.get(eid, (0, None)), tail.get(eid), 0)[1]
                self._all = (st, epoch, archived, seen)
                return seen


def _presence_of(state: State | None) -> bool | None:
    return None if state is None else "deletedAt" not in state
