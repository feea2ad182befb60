"""What one process knows of one database, and the one rule that guards it.

The rule: `Known.lock` guards every cache of the engine, and it is never held across a
SQL statement (a SQLite session in another thread may hold the database write lock while
it waits for this lock). A load reads with the lock released, then installs under it only
if the namespace's `epoch` has not moved meanwhile (every committed change bumps it);
otherwise it reads again.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection

from parquedb_orm.core.codec import dumps, loads
from parquedb_orm.core.events import Event, RelEvent, Versioned, apply_event
from parquedb_orm.sql.counters import load_all, namespace_of

#: default bound of the entity cache, in entities across all namespaces of a store
#: (configurable: `ParqueDB(cache_entries=...)`); a small committed state is ~2 KB in
#: memory (measured: 94 MB for 50,000), so the default holds ~40 MB
DEFAULT_CACHE_ENTRIES = 20_000
#: states of updated entities remembered per namespace as the base of their unflushed
#: events (NsState.tail_base), so a flush folds them without an archive read; beyond
#: it, the flush reads the base from the archive (one piece per entity, batched). The
#: bound keeps a large unflushed tail from holding a full copy of every entity it touched
#: (~1-2 KB each); the events themselves stay until the flush.
TAIL_BASE_ENTRIES = 10_000

#: unflushed events kept as objects before the tail packs them: an update event is ~800 B
#: as objects (the Event, its ints, its operator dicts, a list per entity) and ~150 B packed
#: as one JSON string per entity, decoded again only when that entity is read
TAIL_LOOSE_EVENTS = 20_000

_generations = itertools.count(1)


def _packed(events: list[Event]) -> str:
    """The events as one JSON array of records: the text each one's commit encoded for
    the WAL where it kept it (`Event.text`; the same bytes `dumps` gives), else encoded."""
    return "[" + ",".join(e.text if e.text is not None else dumps(e.to_record()) for e in events) + "]"


def _first_seq(packed: str) -> int:
    """The sequence of the first record of a packed entity (`[[seq,ts,...],...]`: events
    are packed in sequence order), read without decoding the rest; above every mark when
    nothing is packed."""
    if len(packed) < 3:
        return 1 << 62
    return int(packed[2 : packed.index(",", 2)])


class Tail:
    """One namespace's unflushed events per entity, in memory: the events of the last
    TAIL_LOOSE_EVENTS appended stay objects; beyond, every entity's list is packed into
    one compact JSON string (the WAL's own record form), unpacked when read. So a large
    unflushed tail (a manual flush policy, a bulk of updates) costs a fifth of the memory,
    and the reads that touch one entity decode only its events."""

    __slots__ = ("_after", "_d", "_loose", "_next", "packed")

    def __init__(self) -> None:
        self._d: dict[str, list[Event] | str] = {}
        #: events appended to a packed entity since the last pack: appending never decodes
        #: what was packed (100 entities updated round-robin after a pack would each
        #: decode, then re-pack, their whole history on every write)
        self._after: dict[str, list[Event]] = {}
        self._loose = 0  # events held as objects
        #: pack when `_loose` passes this: the bound above what stayed loose at the last
        #: pack, so an entity kept loose (the one being written) costs no pack per event
        self._next = TAIL_LOOSE_EVENTS
        self.packed = 0  # times the tail was packed (tests, stats)

    @staticmethod
    def _unpack(text: str) -> list[Event]:
        return [Event(*rec) for rec in loads(text)]

    def add(self, ev: Event) -> None:
        v = self._d.get(ev.id)
        if v is None:
            self._d[ev.id] = [ev]
        elif type(v) is list:
            v.append(ev)
        else:
            self._after.setdefault(ev.id, []).append(ev)
        self._loose += 1
        if self._loose > max(self._next, TAIL_LOOSE_EVENTS):
            self.pack(keep=ev.id)

    def pack(self, keep: str | None = None) -> None:
        """Pack every entity's events but `keep`'s (the entity being written: packing it
        would unpack it again on its next event)."""
        d = self._d
        kept = 0
        for eid, v in d.items():
            if type(v) is list:
                if eid == keep:
                    kept = len(v)
                else:
                    d[eid] = _packed(v)
        for eid, evs in self._after.items():
            if eid == keep:
                d[eid] = self._unpack(d[eid]) + evs  # type: ignore[arg-type]
                kept = len(d[eid])
            else:
                # two JSON arrays of records joined as text: nothing decoded
                head = d[eid]
                assert isinstance(head, str)
                d[eid] = head[:-1] + "," + _packed(evs)[1:]
        self._after = {}
        self._loose = kept
        self._next = kept + TAIL_LOOSE_EVENTS
        self.packed += 1

    def trim(self, mark: int) -> tuple[int, dict[str, int | None]]:
        """Drop the events numbered at or below `mark` (a flush archived them). Returns how
        many went and, per entity that lost some, the version of its first event left (None:
        none left). An entity whose first event is above the mark is left as it is, packed
        or not: a chunked flush trims after every chunk, and decoding every packed entity
        each time (as objects kept loose until the next pack) cost the flush its memory."""
        removed = 0
        changed: dict[str, int | None] = {}
        d = self._d
        for eid in list(d):
            v = d[eid]
            if type(v) is list:
                if v and v[0].seq > mark:
                    continue
                events = v
                self._loose -= len(events)
            else:
                assert isinstance(v, str)
                if _first_seq(v) > mark:
                    continue
                after = self._after.pop(eid, [])
                self._loose -= len(after)
                events = self._unpack(v) + after
            kept = [e for e in events if e.seq > mark]
            removed += len(events) - len(kept)
            if kept:
                # a packed entity stays packed: its events are not made loose objects again
                loose = type(v) is list
                self._loose += len(kept) if loose else 0
                d[eid] = kept if loose else _packed(kept)
                changed[eid] = kept[0].version
            else:
                del d[eid]
                changed[eid] = None
        return removed, changed

    def takes_after(self, eid: str, seq: int) -> bool:
        """Whether an event numbered `seq` can go at the end of the entity's events in
        sequence order (not checked for a packed entity: False, the caller starts afresh)."""
        v = self._d.get(eid)
        if v is None:
            return True
        return type(v) is list and (not v or v[-1].seq < seq)

    def get(self, eid: str) -> list[Event]:
        """The entity's unflushed events (empty: none)."""
        v = self._d.get(eid)
        if v is None:
            return []
        if type(v) is list:
            return v
        # read without unpacking in place: a read does not make the entry loose again
        evs = self._unpack(v)  # type: ignore[arg-type]
        after = self._after.get(eid)
        return evs + after if after else evs

    def __getitem__(self, eid: str) -> list[Event]:
        if eid not in self._d:
            raise KeyError(eid)
        return self.get(eid)

    def __setitem__(self, eid: str, evs: list[Event]) -> None:
        old = self._d.get(eid)
        if type(old) is list:
            self._loose -= len(old)
        self._loose -= len(self._after.pop(eid, ()))
        self._d[eid] = evs
        self._loose += len(evs)

    def __delitem__(self, eid: str) -> None:
        old = self._d.pop(eid)
        if type(old) is list:
            self._loose -= len(old)
        self._loose -= len(self._after.pop(eid, ()))

    def __contains__(self, eid: object) -> bool:
        return eid in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def items(self) -> Iterator[tuple[str, list[Event]]]:
        for eid in list(self._d):
            yield eid, self.get(eid)

    def values(self) -> Iterator[list[Event]]:
        for _eid, evs in self.items():
            yield evs


class EntityCache:
    """Committed entity states of one process, least recently used first out, bounded in
    entries across namespaces: memory follows the working set, not the data. A miss costs
    a read of the archive's one piece that holds the entity (engine/reads.py)."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._d: OrderedDict[tuple[int, str], Versioned] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: tuple[int, str]) -> Versioned | None:
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
        return hit

    def put(self, key: tuple[int, str], value: Versioned) -> None:
        d = self._d
        d[key] = value
        d.move_to_end(key)
        while len(d) > self.max_entries:
            d.popitem(last=False)
            self.evictions += 1

    def discard(self, key: tuple[int, str]) -> None:
        self._d.pop(key, None)


class NsCache:
    """One namespace's view of the process's EntityCache. Keys carry the generation of the
    NsState they belong to, so a namespace started afresh (Known.restart) never sees the
    states its predecessor cached; those age out."""

    __slots__ = ("_c", "_gen")

    def __init__(self, cache: EntityCache) -> None:
        self._c = cache
        self._gen = next(_generations)

    def get(self, eid: str) -> Versioned | None:
        return self._c.get((self._gen, eid))

    def __getitem__(self, eid: str) -> Versioned:
        hit = self._c.get((self._gen, eid))
        if hit is None:
            raise KeyError(eid)
        return hit

    def __setitem__(self, eid: str, value: Versioned) -> None:
        self._c.put((self._gen, eid), value)

    def __contains__(self, eid: object) -> bool:
        return isinstance(eid, str) and (self._gen, eid) in self._c._d

    def pop(self, eid: str) -> None:
        self._c.discard((self._gen, eid))

    def __iter__(self) -> Iterator[str]:  # pragma: no cover - not used on hot paths
        return (k[1] for k in list(self._c._d) if k[0] == self._gen)


_DEFAULT_CACHE = EntityCache()


@dataclass(slots=True)
class Claim:
    """A single owner's record of its numbering in one WAL table of one namespace: what lets
    its commits skip reading the flushed mark (sql/wal.py, `insert_unclaimed`) and what a
    flush may retire (archive/flush.py, `_retire`). Times are `time.monotonic()`."""

    #: this process's last claiming insert: a row another writer put at this process's next
    #: number was written after it
    inserted_at: float = float("-inf")
    #: the last time this process numbered after a row it had not written (a floor read
    #: above its own numbers): its rows of the next RETAIN_SECONDS may be another writer's next
    foreign_at: float = float("-inf")
    #: highest sequence of a row this process committed (or found written before it joined)
    own_last: int = 0


@dataclass
class NsState:
    """What this process knows of one namespace."""

    name: str
    tail_loaded: bool = False
    tail: Tail = field(default_factory=Tail)  # WAL events per entity
    tail_max: int = 0  # highest sequence folded into `tail`
    tail_events: int = 0
    next_seq: int | None = None  # single owner: next sequence to assign
    epoch: int = 0  # bumped on every committed change, to detect racing loads
    cache: NsCache = field(default_factory=lambda: NsCache(_DEFAULT_CACHE))
    #: the committed state of an entity just before its first event in `tail`, where this
    #: process knew it (its own commits): a flush or a cold read folds the tail onto it
    #: without reading the archive
    tail_base: dict[str, Versioned] = field(default_factory=dict)
    # relationships filed under this namespace
    rel_next_seq: int | None = None
    rel_tail_max: int = 0
    #: relationship events in the WAL above the flushed mark, in sequence order (valid
    #: while the relationship index is loaded)
    rel_tail: RelTail = field(default_factory=lambda: RelTail())
    #: numbering claims per WAL table: "e" events_wal, "r" rels_wal
    claims: dict[str, Claim] = field(default_factory=lambda: {"e": Claim(), "r": Claim()})


class RelTail:
    """A namespace's unflushed relationship events in sequence order, indexed by source id
    and by target ref: `related` of one entity looks up its own events instead of
    scanning every unflushed link (10,000 links: ~1 ms a call)."""

    def __init__(self) -> None:
        self._events: list[RelEvent] = []
        self._from: dict[str, list[RelEvent]] = {}
        self._to: dict[str, list[RelEvent]] = {}

    def append(self, ev: RelEvent) -> None:
        self._events.append(ev)
        self._from.setdefault(ev.from_id, []).append(ev)
        self._to.setdefault(ev.to, []).append(ev)

    def insert(self, ev: RelEvent) -> None:
        """An event numbered below the last one (a late finish), in sequence order."""
        import bisect

        for events in (self._events, self._from.setdefault(ev.from_id, []), self._to.setdefault(ev.to, [])):
            events.insert(bisect.bisect(events, ev.seq, key=lambda e: e.seq), ev)

    def later_on_pair(self, ev: RelEvent) -> bool:
        """Whether an event numbered after `ev` concerns the same (source, predicate, target)."""
        return any(
            e.seq > ev.seq and e.predicate == ev.predicate and e.to == ev.to for e in self._from.get(ev.from_id, ())
        )

    def trim(self, mark: int) -> None:
        """Drop the events at or below `mark` (flushed): the lists lose their flushed head,
        in place. (Rebuilding the index from the events kept, after every chunk of a large
        flush, allocated a second copy of it.)"""
        import bisect

        events = self._events
        cut = bisect.bisect_right(events, mark, key=lambda e: e.seq)
        if any(ev.seq <= mark for ev in events[cut:]):  # not in sequence order: rebuild
            kept = [ev for ev in events if ev.seq > mark]
            self._events, self._from, self._to = [], {}, {}
            for ev in kept:
                self.append(ev)
            return
        flushed = events[:cut]
        for index, keys in ((self._from, {ev.from_id for ev in flushed}), (self._to, {ev.to for ev in flushed})):
            for key in keys:
                lst = index[key]  # in sequence order, as the events are
                i = bisect.bisect_right(lst, mark, key=lambda e: e.seq)
                if i == len(lst):
                    del index[key]
                else:
                    del lst[:i]
        del events[:cut]

    def of_source(self, entity_id: str) -> list[RelEvent]:
        return list(self._from.get(entity_id, ()))

    def of_target(self, ref: str) -> list[RelEvent]:
        return list(self._to.get(ref, ()))

    def __iter__(self) -> Iterator[RelEvent]:
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)


def fold(ns: str, base: Versioned, events: list[Event], after_seq: int) -> Versioned:
    """`base` with the events above `after_seq` applied."""
    version, state = base
    for ev in events:
        if ev.seq > after_seq:
            state = apply_event(ns, state, ev)
            version = ev.version
    return version, state


class Known:
    """The namespaces this process knows, the counters it has read, and the mode."""

    def __init__(self, *, shared: bool, cache_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        self.lock = threading.RLock()
        self.cache = EntityCache(cache_entries)
        #: several processes write: caches are checked against the database before use
        self.shared = shared
        self._ns: dict[str, NsState] = {}
        self._counters: dict[str, int] | None = None
        self.unflushed = 0  # committed events not yet in the archive (in memory: no SQL to know)
        self.commits = 0

    def ns(self, name: str) -> NsState:
        st = self._ns.get(name)  # a dict read is atomic: the lock only guards creating one
        if st is not None:
            return st
        with self.lock:
            st = self._ns.get(name)
            if st is None:
                st = self._ns[name] = NsState(name, cache=NsCache(self.cache))
            return st

    def peek(self, name: str) -> NsState | None:
        with self.lock:
            return self._ns.get(name)

    def restart(self, name: str) -> None:
        """Forget one namespace's entity memory (another process flushed events this one
        never saw, or a late finish), but not the numbers this process has reached in it,
        nor its relationship tail: that one belongs to the relationship index, loaded for
        every namespace at once, and goes only with it (`forget_rel_tails`)."""
        with self.lock:
            old = self._ns.get(name)
            fresh = self._ns[name] = NsState(
                name,
                next_seq=old.next_seq if old else None,
                rel_next_seq=old.rel_next_seq if old else None,
                cache=NsCache(self.cache),
                claims=old.claims if old else {"e": Claim(), "r": Claim()},
            )
            if old is not None:
                fresh.rel_tail, fresh.rel_tail_max = old.rel_tail, old.rel_tail_max

    def forget_rel_tails(self) -> None:
        """Drop every namespace's unflushed relationship events (the relationship index was
        unloaded: its next load reads them all from the table)."""
        with self.lock:
            for st in self._ns.values():
                st.rel_tail, st.rel_tail_max = RelTail(), 0

    def restart_all(self) -> None:
        """Forget every cache, keeping only the sequences this process assigned."""
        with self.lock:
            self._ns = {
                name: NsState(
                    name,
                    next_seq=st.next_seq,
                    rel_next_seq=st.rel_next_seq,
                    cache=NsCache(self.cache),
                    claims=st.claims,
                )
                for name, st in self._ns.items()
            }

    def names(self) -> list[str]:
        with self.lock:
            return sorted(self._ns)

    def counters(self, conn: Connection) -> dict[str, int]:
        """All persisted counters, loaded once per process with one statement (every
        statement in shared mode)."""
        if self._counters is None or self.shared:
            values = load_all(conn)
            with self.lock:
                self._counters = values
        return self._counters

    def counters_cached(self) -> dict[str, int] | None:
        return self._counters

    def namespaces(self, conn: Connection) -> list[str]:
        """Every namespace with data: those with a counter row and those this process knows."""
        names = {ns for n in self.counters(conn) if (ns := namespace_of(n))}
        with self.lock:
            names.update(self._ns)
        return sorted(names)
