"""Process-wide state of one store: caches, WAL tail index, sequences, and the commit step.

One `Runtime` exists per database (engine) in a process, shared by every session and by
the `ParqueDB` facade. It never holds its lock across a SQL statement: SQLite sessions in
other threads may hold the database write lock while waiting for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, select

from . import dialects, snapshots, wal
from .counters import IdBlocks, load_all
from .errors import VersionConflictError
from .events import Event, Link, LinkKey, RelEvent, State, apply_event, apply_rel_event
from .ids import decode_id
from .models import Counter

if TYPE_CHECKING:
    from .unit import UnitOfWork

Versioned = tuple[int, State | None]  # (version, state); state None = absent (0) or hard-deleted


@dataclass
class NsState:
    """What this process knows of one namespace."""

    name: str
    tail_loaded: bool = False
    tail: dict[str, list[Event]] = field(default_factory=dict)  # WAL events per entity
    tail_max: int = 0  # highest sequence folded into `tail`
    tail_events: int = 0
    next_seq: int | None = None  # single owner: next sequence to assign
    epoch: int = 0  # bumped on every committed change, to detect racing loads
    cache: dict[str, Versioned] = field(default_factory=dict)
    complete: bool = False  # `cache` holds every entity of the namespace
    # relationships filed under this namespace
    rel_next_seq: int | None = None
    rel_tail_max: int = 0


@dataclass
class RelIndex:
    loaded: bool = False
    links: dict[LinkKey, Link] = field(default_factory=dict)
    by_from: dict[str, set[LinkKey]] = field(default_factory=dict)
    by_to: dict[str, set[LinkKey]] = field(default_factory=dict)
    epoch: int = 0

    def apply(self, ns: str, ev: RelEvent) -> None:
        key = (f"{ns}/{ev.from_id}", ev.predicate, ev.to)
        apply_rel_event(self.links, ns, ev)
        if key in self.links:
            self.by_from.setdefault(key[0], set()).add(key)
            self.by_to.setdefault(key[2], set()).add(key)
        else:
            self.by_from.get(key[0], set()).discard(key)
            self.by_to.get(key[2], set()).discard(key)


def fold(ns: str, base: Versioned, events: list[Event], after_seq: int) -> Versioned:
    version, state = base
    for ev in events:
        if ev.seq > after_seq:
            state = apply_event(ns, state, ev)
            version = ev.version
    return version, state


class Runtime:
    def __init__(self, engine: Engine, *, shared: bool = False, chunk_size: int = 128, id_block: int = 100) -> None:
        self.engine = engine
        self.family = dialects.family(engine)
        self.memory = dialects.is_memory_sqlite(engine)
        self.shared = shared
        self.chunk_size = chunk_size
        self.ids = IdBlocks(engine, id_block)
        self.lock = threading.RLock()
        self.rels = RelIndex()
        self.unflushed = 0  # committed events not yet in the archive (in memory: no SQL to know)
        self.commits = 0
        self._ns: dict[str, NsState] = {}
        self._counters: dict[str, int] | None = None
        self._inflight: dict[tuple[str, str], int] = {}
        #: called after every commit with the number of new events (the flush policy hooks in)
        self.after_commit_hooks: list[Callable[[int], None]] = []

    # ------------------------------------------------------------------ namespaces
    def ns(self, name: str) -> NsState:
        with self.lock:
            st = self._ns.get(name)
            if st is None:
                st = self._ns[name] = NsState(name)
            return st

    def counters(self, conn: Connection) -> dict[str, int]:
        """All persisted counters, loaded once per process with one statement."""
        if self._counters is None or self.shared:
            values = load_all(conn)
            with self.lock:
                self._counters = values
        return self._counters

    def namespaces(self, conn: Connection) -> list[str]:
        names = {n.split(":", 1)[1] for n in self.counters(conn) if ":" in n}
        with self.lock:
            names.update(self._ns)
        return sorted(names)

    # ------------------------------------------------------------------ tail
    def _install_tail(self, st: NsState, rows: list[tuple[int, int, list[Any]]]) -> None:
        for first, _last, records in rows:
            for ev in wal.decode_events(wal.EVENTS, st.name, first, records):
                if ev.seq <= st.tail_max:
                    continue  # already folded in by the commit that wrote it
                st.tail.setdefault(ev.id, []).append(ev)
                st.tail_max = ev.seq
                st.tail_events += 1
                cached = st.cache.get(ev.id)
                if cached is not None and cached[0] < ev.version:
                    st.cache[ev.id] = (ev.version, apply_event(st.name, cached[1], ev))

    def ensure_tail(self, conn: Connection, ns: str) -> NsState:
        """Load the namespace's WAL tail once (single owner) or fetch what is new (shared)."""
        st = self.ns(ns)
        if st.tail_loaded and not self.shared:
            return st
        while True:
            epoch, after = st.epoch, (st.tail_max if st.tail_loaded else -1)
            if self.shared and st.tail_loaded:
                flushed = conn.execute(select(Counter.value).where(Counter.name == f"seq:{ns}")).scalar()
                if flushed is not None and flushed > st.tail_max:
                    # another process flushed events we never saw: start this namespace afresh
                    with self.lock:
                        self._ns[ns] = NsState(ns)
                    return self.ensure_tail(conn, ns)
            rows = wal.read_tail(conn, wal.EVENTS, ns, after)
            with self.lock:
                if st.epoch != epoch and not (st.tail_loaded and self.shared):
                    continue  # a commit landed while we read: read again
                self._install_tail(st, rows)
                st.tail_loaded = True
                if rows:
                    st.epoch += 1
                return st

    # ------------------------------------------------------------------ committed reads
    def _base(self, ns: str, chunk: snapshots.Chunk | None, entity_id: str) -> tuple[Versioned, int]:
        if chunk is not None and entity_id in chunk.entities:
            state = chunk.entities[entity_id]
            return (int(state["version"]), state), chunk.wal_seq
        return (0, None), (chunk.wal_seq if chunk is not None else 0)

    def committed(self, conn: Connection, ns: str, entity_id: str) -> Versioned:
        """The committed state of one entity: cache, else snapshot chunk + WAL tail."""
        st = self.ns(ns)
        if not self.shared:
            with self.lock:
                hit = st.cache.get(entity_id)
            if hit is not None:
                return hit
        st = self.ensure_tail(conn, ns)
        with self.lock:
            hit = st.cache.get(entity_id)
        if hit is not None:
            return hit
        number = decode_id(entity_id)
        if number is None:
            return (0, None)
        while True:
            epoch = st.epoch
            chunk = snapshots.read_chunk(conn, ns, number // self.chunk_size)
            with self.lock:
                if st.epoch != epoch:
                    continue
                result = (0, None)
                ids = set(chunk.entities) if chunk else set()
                ids.add(entity_id)
                for eid in ids:
                    base, after = self._base(ns, chunk, eid)
                    value = fold(ns, base, st.tail.get(eid, []), after)
                    old = st.cache.get(eid)
                    if old is None or old[0] <= value[0]:
                        st.cache[eid] = value
                    if eid == entity_id:
                        result = st.cache[eid]
                return result

    def committed_all(self, conn: Connection, ns: str) -> dict[str, Versioned]:
        """Every entity of a namespace (for find): all chunks + tail, cached as complete."""
        st = self.ns(ns)
        if st.complete and not self.shared:
            with self.lock:
                return dict(st.cache)
        st = self.ensure_tail(conn, ns)
        while True:
            epoch = st.epoch
            chunks = snapshots.read_chunks(conn, ns)
            with self.lock:
                if st.epoch != epoch:
                    continue
                seen: dict[str, Versioned] = {}
                for ch in chunks:
                    for eid in ch.entities:
                        seen[eid] = fold(ns, self._base(ns, ch, eid)[0], st.tail.get(eid, []), ch.wal_seq)
                for eid, evs in st.tail.items():
                    if eid not in seen:
                        seen[eid] = fold(ns, (0, None), evs, 0)
                for eid, value in seen.items():
                    old = st.cache.get(eid)
                    if old is None or old[0] <= value[0]:
                        st.cache[eid] = value
                st.complete = True
                return dict(st.cache)

    def ensure_rels(self, conn: Connection) -> RelIndex:
        """Load the relationship index once: every namespace's rels WAL tail."""
        if self.rels.loaded and not self.shared:
            return self.rels
        while True:
            epoch = self.rels.epoch
            names = self.namespaces(conn)
            with self.lock:
                after = {n: (self.ns(n).rel_tail_max if self.rels.loaded else -1) for n in names}
            loaded: list[tuple[str, list[tuple[int, int, list[Any]]]]] = []
            for n in names:
                loaded.append((n, wal.read_tail(conn, wal.RELS, n, after[n])))
            with self.lock:
                if self.rels.epoch != epoch:
                    continue
                for n, rows in loaded:
                    st = self.ns(n)
                    for first, _last, records in rows:
                        for ev in wal.decode_rel_events(wal.RELS, n, first, records):
                            if ev.seq > st.rel_tail_max:
                                self.rels.apply(n, ev)
                                st.rel_tail_max = ev.seq
                self.rels.loaded = True
                return self.rels

    # ------------------------------------------------------------------ commit
    def _next_seqs(self, conn: Connection, uow: UnitOfWork) -> None:
        """Number the unit's events; the caller holds the namespaces' commit locks."""
        need_ev = [ns for ns in uow.events if self.shared or self.ns(ns).next_seq is None]
        need_rel = [ns for ns in uow.rel_events if self.shared or self.ns(ns).rel_next_seq is None]
        floors: dict[tuple[str, str], int] = {}
        if need_ev or need_rel:
            counters = self.counters(conn)
            for ns in need_ev:
                floors[("e", ns)] = max(wal.last_seq(conn, wal.EVENTS, ns), counters.get(f"seq:{ns}", 0))
            for ns in need_rel:
                floors[("r", ns)] = max(wal.last_seq(conn, wal.RELS, ns), counters.get(f"rseq:{ns}", 0))
        with self.lock:
            for ns, evs in uow.events.items():
                st = self.ns(ns)
                nxt = max(st.next_seq or 0, floors.get(("e", ns), 0) + 1)
                for ev in evs:
                    ev.seq = nxt
                    nxt += 1
                st.next_seq = nxt
            for ns, revs in uow.rel_events.items():
                st = self.ns(ns)
                nxt = max(st.rel_next_seq or 0, floors.get(("r", ns), 0) + 1)
                for rev in revs:
                    rev.seq = nxt
                    nxt += 1
                st.rel_next_seq = nxt

    def prepare_commit(self, conn: Connection, uow: UnitOfWork) -> None:
        """Inside the committing transaction: lock, check versions, number and write the events."""
        if not uow.events and not uow.rel_events:
            return
        dialects.lock_namespaces(conn, [*uow.events, *uow.rel_events])
        # concurrent writers: every entity this unit changed must still be at the version it read
        for (ns, eid), base in uow.base_versions.items():
            current = self.committed(conn, ns, eid)[0]
            with self.lock:
                current = max(current, self._inflight.get((ns, eid), 0))
            if current != base:
                raise VersionConflictError(
                    f"{ns}/{eid} changed concurrently (now version {current}, this transaction read {base}); "
                    "retry the transaction",
                    expected=base,
                    actual=current,
                )
        self._next_seqs(conn, uow)
        with self.lock:
            for key, (version, _state) in uow.overlay.items():
                self._inflight[key] = max(self._inflight.get(key, 0), version)
        uow.inflight = True
        for ns, evs in uow.events.items():
            wal.insert_rows(conn, wal.EVENTS, wal.build_rows(ns, [e.to_record() for e in evs]))
        for ns, revs in uow.rel_events.items():
            wal.insert_rows(conn, wal.RELS, wal.build_rows(ns, [e.to_record() for e in revs]))

    def finish_commit(self, uow: UnitOfWork) -> None:
        """After COMMIT: fold the unit into the shared caches and tell the flush policy."""
        count = sum(len(v) for v in uow.events.values()) + sum(len(v) for v in uow.rel_events.values())
        with self.lock:
            for (ns, eid), value in uow.overlay.items():
                st = self.ns(ns)
                old = st.cache.get(eid)
                if old is None or old[0] <= value[0]:
                    st.cache[eid] = value
            for ns, evs in uow.events.items():
                st = self.ns(ns)
                if st.tail_loaded:
                    for ev in evs:
                        if ev.seq > st.tail_max:
                            st.tail.setdefault(ev.id, []).append(ev)
                            st.tail_max = ev.seq
                            st.tail_events += 1
                st.epoch += 1
            for ns, revs in uow.rel_events.items():
                st = self.ns(ns)
                if self.rels.loaded:
                    for rev in revs:
                        if rev.seq > st.rel_tail_max:
                            self.rels.apply(ns, rev)
                            st.rel_tail_max = rev.seq
                self.rels.epoch += 1
            self._release(uow)
            for ns, ranges in uow.local_ids.items():
                for r in ranges:
                    self.ids.give(ns, r)
            if count:
                self.unflushed += count
                self.commits += 1
        if count:
            for hook in list(self.after_commit_hooks):
                hook(count)

    def _release(self, uow: UnitOfWork) -> None:
        if uow.inflight:
            for key in uow.overlay:
                self._inflight.pop(key, None)
            uow.inflight = False

    def abort(self, uow: UnitOfWork) -> None:
        with self.lock:
            self._release(uow)
