"""The WAL tail: this process's index of committed events not yet flushed, per entity.

Loaded once per namespace (one seek above the flushed mark); a single owner then keeps it
current from its own commits, shared mode fetches what is new on each use.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from parquedb_orm.core.events import Event, RelEvent, Versioned, apply_event
from parquedb_orm.engine.state import Known, NsState
from parquedb_orm.sql import wal
from parquedb_orm.sql.counters import seq_key
from parquedb_orm.sql.models import Counter


class WalTail:
    def __init__(self, known: Known) -> None:
        self.known = known
        self.lock = known.lock

    def _install(self, st: NsState, rows: list[tuple[int, int, list[Any]]]) -> None:
        for first, _last, records in rows:
            for ev in wal.decode_events(wal.EVENTS, st.name, first, records):
                if ev.seq <= st.tail_max:
                    continue  # already folded in by the commit that wrote it
                st.tail.add(ev)
                st.tail_max = ev.seq
                st.tail_events += 1
                cached = st.cache.get(ev.id)
                if cached is not None and cached[0] < ev.version:
                    st.cache[ev.id] = (ev.version, apply_event(st.name, cached[1], ev))

    def ensure(self, conn: Connection, ns: str) -> NsState:
        """Load the namespace's WAL tail once (single owner) or fetch what is new (shared)."""
        st = self.known.ns(ns)
        if st.tail_loaded and not self.known.shared:
            return st
        while True:
            epoch, after = st.epoch, (st.tail_max if st.tail_loaded else -1)
            if self.known.shared and st.tail_loaded:
                flushed = conn.execute(select(Counter.value).where(Counter.name == seq_key(ns))).scalar()
                if flushed is not None and flushed > st.tail_max:
                    # another process flushed events we never saw: start this namespace afresh
                    self.known.restart(ns)
                    return self.ensure(conn, ns)
            if st.tail_loaded:
                rows = wal.read_tail(conn, wal.EVENTS, ns, after)
            else:
                rows = wal.read_unflushed(conn, wal.EVENTS, ns, seq_key(ns))
            with self.lock:
                if st.epoch != epoch and not (st.tail_loaded and self.known.shared):
                    continue  # a commit landed while we read: read again
                if not st.tail_loaded and rows:
                    st.tail_max = max(st.tail_max, rows[0][0] - 1)
                self._install(st, rows)
                st.tail_loaded = True
                if rows:
                    st.epoch += 1
                return st

    def memory(
        self, ns: str, ev_mark: int, rel_mark: int, *, committing: bool, rels_loaded: bool, limit: int
    ) -> tuple[list[Event] | None, list[RelEvent] | None, tuple[bool, bool]]:
        """The namespace's unflushed entity and relationship events from memory, each only if
        memory is known to equal the WAL (single owner, that tail loaded, no commit in
        flight) and holds at most `limit` events; None for a part means: read it from the
        table. The flags say which part was refused for its size: that one is flushed in
        chunks read from the table (taking one chunk from memory would unpack all of it)."""
        with self.lock:
            st = self.known.peek(ns)
            if self.known.shared or committing or st is None:
                return None, None, (False, False)
            events = None
            big = (st.tail_loaded and st.tail_events > limit, rels_loaded and len(st.rel_tail) > limit)
            if st.tail_loaded and not big[0]:
                events = sorted((e for evs in st.tail.values() for e in evs if e.seq > ev_mark), key=lambda e: e.seq)
            rels = [r for r in st.rel_tail if r.seq > rel_mark] if rels_loaded and not big[1] else None
            return events, rels, big

    def trim(self, st: NsState, ev_mark: int, latest: dict[str, Versioned] | None = None) -> None:
        """Drop what a flush moved to the archive (caller holds the lock). `latest`: the
        states the flush archived, the new base of an entity whose later events stay."""
        removed, changed = st.tail.trim(ev_mark)
        st.tail_events -= removed
        # an entity the flush did not reach keeps its base: its first event is the same
        for eid, first_version in changed.items():
            base = None if latest is None else latest.get(eid)
            if first_version is not None and base is not None and base[0] == first_version - 1:
                st.tail_base[eid] = base
            else:
                st.tail_base.pop(eid, None)
        for eid in [e for e in st.tail_base if e not in st.tail]:
            del st.tail_base[eid]

    def created(self, st: NsState, entity_id: str) -> bool:
        with self.lock:
            return any(ev.op == "CREATE" for ev in st.tail.get(entity_id))

    @staticmethod
    def takes_late(st: NsState, events: list[Event]) -> bool:
        """Whether a commit whose finish runs after a later commit's can add its events:
        each entity's events stay in sequence order (the common case: the two commits
        touched different entities). False: the namespace starts afresh instead."""
        last: dict[str, int] = {}
        for ev in events:
            if ev.id in last:
                if last[ev.id] >= ev.seq:
                    return False
            elif not st.tail.takes_after(ev.id, ev.seq):
                return False
            last[ev.id] = ev.seq
        return True

    def append(self, st: NsState, events: list[Event], *, late: bool = False) -> None:
        """A commit's own events (caller holds the lock). `late`: numbered below events
        already in the tail (its finish ran after a later commit's; `takes_late` said yes)."""
        if st.tail_loaded:
            for ev in events:
                if ev.seq > st.tail_max:
                    st.tail.add(ev)
                    st.tail_max = ev.seq
                    st.tail_events += 1
                elif late:
                    st.tail.add(ev)
                    st.tail_events += 1
