"""Relationships, looked up per reference, with a bounded cache of what was looked up.

The outbound links of `ns/id` fold its LINK/UNLINK events: the rows of the archive's rels
files of `ns` that can hold `from_id` = id (the files are sorted by (from_id, seq), so only
the row groups whose from_id min/max cover it are read), plus the namespace's unflushed
events, plus the caller's transaction (engine/store.py). Its inbound links fold the events
whose `to` is the ref, filed under any namespace: the rels files are not sorted by `to`,
so each file's `to` column is read once into an index of which row groups hold each target
(`TO_INDEX_KEYS` targets over every file, oldest file dropped first; files never change),
and whole rows only of the row groups that match, through the archive's piece cache.

Computed link sets are kept per (ref, direction) in an LRU bounded in refs and in links
(`DEFAULT_LINK_CACHE_REFS`, `DEFAULT_LINK_CACHE_LINKS`), which a single owner's commits
keep current (`append`): memory follows the working set, not the number of links. Shared
mode caches no link set (another process may link at any time) and reads the WAL on use.

A single owner keeps each namespace's unflushed relationship events in memory
(`NsState.rel_tail`), loaded once for all namespaces with one WAL statement (`ensure`);
`loaded` says memory then equals the table, so a flush may take them from there."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Connection

from parquedb_orm.archive import parquet
from parquedb_orm.archive.files import Check
from parquedb_orm.core.events import Link, LinkKey, RelEvent, apply_rel_event
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.engine.state import Known, NsState
from parquedb_orm.errors import ArchiveError
from parquedb_orm.sql import manifest, wal
from parquedb_orm.sql.counters import rseq_key

#: link sets cached per direction, in refs (an empty set counts: most refs have none)
DEFAULT_LINK_CACHE_REFS = 10_000
#: and in links held per direction (a Link is ~0.5 KB in memory); a ref with more links
#: than this is looked up on every use, not cached
DEFAULT_LINK_CACHE_LINKS = 50_000

#: targets held by the per-file `to` indexes (refs -> row groups; ~0.2 KB each), over every file
TO_INDEX_KEYS = 65_536

OUTBOUND = "outbound"
INBOUND = "inbound"


class LinkCache:
    """ref -> its current links (one direction), least recently used first out."""

    def __init__(self, max_refs: int = DEFAULT_LINK_CACHE_REFS, max_links: int = DEFAULT_LINK_CACHE_LINKS) -> None:
        self.max_refs = max_refs
        self.max_links = max_links
        self._d: OrderedDict[str, dict[LinkKey, Link]] = OrderedDict()
        self.links = 0  # links held, over every cached ref
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, ref: str) -> dict[LinkKey, Link] | None:
        hit = self._d.get(ref)
        if hit is not None:
            self._d.move_to_end(ref)
        return hit

    def put(self, ref: str, links: dict[LinkKey, Link]) -> None:
        self.discard(ref)
        if len(links) > self.max_links or self.max_refs <= 0:
            return
        self._d[ref] = links
        self.links += len(links)
        self._shrink()

    def apply(self, ref: str, ns: str, ev: RelEvent) -> None:
        """A committed event of a cached ref (no-op for a ref not cached)."""
        links = self._d.get(ref)
        if links is None:
            return
        before = len(links)
        apply_rel_event(links, ns, ev)
        self.links += len(links) - before
        if len(links) > self.max_links:
            self.discard(ref)
        else:
            self._shrink()

    def discard(self, ref: str) -> None:
        old = self._d.pop(ref, None)
        if old is not None:
            self.links -= len(old)

    def clear(self) -> None:
        self._d.clear()
        self.links = 0

    def _shrink(self) -> None:
        while self._d and (len(self._d) > self.max_refs or self.links > self.max_links):
            _ref, old = self._d.popitem(last=False)
            self.links -= len(old)
            self.evictions += 1


def fold(events: Iterable[tuple[str, RelEvent]]) -> dict[LinkKey, Link]:
    """The links left by (namespace, event) pairs, each namespace's in sequence order."""
    links: dict[LinkKey, Link] = {}
    for ns, ev in events:
        apply_rel_event(links, ns, ev)
    return links


def _merge(archived: list[RelEvent], tail: list[RelEvent]) -> list[RelEvent]:
    """One namespace's archived and unflushed events in sequence order, each once: a flush
    between the two reads may leave an event in both."""
    by_seq = {ev.seq: ev for ev in archived}
    for ev in tail:
        by_seq.setdefault(ev.seq, ev)
    return [by_seq[s] for s in sorted(by_seq)]


class Relationships:
    def __init__(
        self,
        known: Known,
        archived: ArchivedReads,
        *,
        cache_refs: int = DEFAULT_LINK_CACHE_REFS,
        cache_links: int = DEFAULT_LINK_CACHE_LINKS,
    ) -> None:
        self.known = known
        self.lock = known.lock
        self.archived = archived
        self.outbound = LinkCache(cache_refs, cache_links)
        self.inbound = LinkCache(cache_refs, cache_links)
        self._loaded = False
        #: single owner: the namespaces whose rels files the archive cache lists (None: not yet)
        self._rels_names: set[str] | None = None
        #: bumped by every commit with relationship events: a lookup that raced one is not cached
        self.epoch = 0
        #: per rels file: target ref -> the row groups holding it (`_to_groups`)
        self._to_index: OrderedDict[str, dict[str, tuple[int, ...]]] = OrderedDict()
        self._to_keys = 0

    @property
    def loaded(self) -> bool:
        """Single owner: every namespace's unflushed relationship events are in memory
        (`NsState.rel_tail`, above each namespace's flushed mark, in sequence order; older,
        already flushed ones may linger until the next flush trims them) and commits keep
        them current, so memory equals the WAL table."""
        return self._loaded and not self.known.shared

    def ensure(self, conn: Connection) -> None:
        """Single owner: load every namespace's unflushed relationship events once (one
        statement; nothing but the WAL tail). Shared mode keeps nothing: a no-op."""
        if self.known.shared or self._loaded:
            return
        while True:
            with self.lock:
                epoch = self.epoch
            names = self.known.namespaces(conn)
            rows = wal.read_many(conn, wal.RELS, [(n, None, rseq_key(n)) for n in names])
            with self.lock:
                if self.epoch != epoch:
                    continue  # a commit landed while we read: read again
                if self._loaded or self.known.shared:
                    return
                for n, ns_rows in rows.items():
                    st = self.known.ns(n)
                    for first, _last, records in ns_rows:
                        for ev in wal.decode_rel_events(wal.RELS, n, first, records):
                            if ev.seq > st.rel_tail_max:
                                st.rel_tail.append(ev)
                                st.rel_tail_max = ev.seq
                self._loaded = True
                return

    def append(self, st: NsState, events: list[RelEvent]) -> None:
        """A commit's own relationship events (caller holds the lock)."""
        late = (
            self._loaded
            and not self.known.shared
            and bool(events)
            and events[0].seq <= st.rel_tail_max
            and not any(r.seq == events[0].seq for r in st.rel_tail.of_source(events[0].from_id))
        )
        if late:
            # a later commit's finish ran first (finishes run after COMMIT, outside the write
            # lock): skipping these events would let a flush from memory miss them. They go
            # in in sequence order, unless a later event concerns the same link: then the
            # cached links may be wrong, and everything reloads from the table.
            if any(st.rel_tail.later_on_pair(rev) for rev in events):
                self.unload()
            else:
                for rev in events:
                    st.rel_tail.insert(rev)
                    self.outbound.apply(f"{st.name}/{rev.from_id}", st.name, rev)
                    self.inbound.apply(rev.to, st.name, rev)
                self.epoch += 1
                return
        if self._loaded and not self.known.shared:
            for rev in events:
                if rev.seq > st.rel_tail_max:
                    st.rel_tail.append(rev)
                    st.rel_tail_max = rev.seq
                    self.outbound.apply(f"{st.name}/{rev.from_id}", st.name, rev)
                    self.inbound.apply(rev.to, st.name, rev)
        self.epoch += 1

    def unload(self) -> None:
        """Forget everything, every namespace's unflushed relationship events included: the
        next use loads them again (caller holds the lock)."""
        self._loaded = False
        self._rels_names = None
        self.outbound.clear()
        self.inbound.clear()
        self.known.forget_rel_tails()

    # ------------------------------------------------------------------ lookups
    def links(self, connection: Callable[[], Connection], ref: str, direction: str) -> dict[LinkKey, Link]:
        """The committed links of `ref` in one direction (a copy). A single owner's cached
        ref takes no connection."""
        cache = self.outbound if direction == OUTBOUND else self.inbound
        if not self.known.shared:
            with self.lock:
                hit = cache.get(ref)
                if hit is not None:
                    return dict(hit)
        conn = connection()
        self.ensure(conn)
        with self.lock:
            epoch = self.epoch
        if direction == OUTBOUND:
            ns, eid = ref.split("/", 1)
            found = fold((ns, ev) for ev in self.outbound_events(conn, ns, eid))
        else:
            found = fold(self.inbound_events(conn, ref))
        with self.lock:
            # kept current from here on by append; not if a commit landed meanwhile
            if self.loaded and self.epoch == epoch:
                cache.put(ref, dict(found))
        return found

    def outbound_events(self, conn: Connection, ns: str, entity_id: str) -> list[RelEvent]:
        """Every committed LINK/UNLINK from `ns/entity_id`, in sequence order: the pruned
        archived rows, then the unflushed ones (read first: a flush in between moves
        events from the tail to a file this then lists)."""
        tail = self._tail(conn, ns, source=entity_id)
        return _merge(self.archived.rel_events_of(conn, ns, entity_id), tail)

    def inbound_events(self, conn: Connection, ref: str) -> list[tuple[str, RelEvent]]:
        """Every committed LINK/UNLINK whose target is `ref`, whatever namespace filed it:
        (namespace, event), each namespace's in sequence order."""
        tails = self._tails(conn, target=ref)
        per_ns: dict[str, tuple[list[RelEvent], list[RelEvent]]] = {}
        for ns, evs in tails.items():
            per_ns[ns] = ([], evs)
        if self.archived.archive is not None:
            for entry in self._all_rels_files(conn):
                found = self._inbound_of_file(entry.path, ref, Check.of(entry), entry)
                if found:
                    per_ns.setdefault(entry.ns, ([], []))[0].extend(found)
        return [(ns, ev) for ns in sorted(per_ns) for ev in _merge(*per_ns[ns])]

    # ------------------------------------------------------------------ the parts
    def _tail(self, conn: Connection, ns: str, *, source: str) -> list[RelEvent]:
        """One namespace's unflushed relationship events from `source` (memory, or its WAL
        rows in shared mode)."""
        if self.known.shared:
            rows = wal.read_unflushed(conn, wal.RELS, ns, rseq_key(ns))
            evs = [ev for first, _l, recs in rows for ev in wal.decode_rel_events(wal.RELS, ns, first, recs)]
            return [ev for ev in evs if ev.from_id == source]
        self.ensure(conn)
        with self.lock:
            st = self.known.peek(ns)
            return [] if st is None else st.rel_tail.of_source(source)

    def _tails(self, conn: Connection, *, target: str) -> dict[str, list[RelEvent]]:
        """Every namespace's unflushed relationship events to `target` (shared mode: one
        statement)."""
        if self.known.shared:
            names = self.known.namespaces(conn)
            rows = wal.read_many(conn, wal.RELS, [(n, None, rseq_key(n)) for n in names])
            return {
                n: [
                    ev
                    for first, _l, recs in ns_rows
                    for ev in wal.decode_rel_events(wal.RELS, n, first, recs)
                    if ev.to == target
                ]
                for n, ns_rows in rows.items()
            }
        self.ensure(conn)
        with self.lock:
            return {
                n: st.rel_tail.of_target(target)
                for n in self.known.names()
                if (st := self.known.peek(n)) and st.rel_tail
            }

    def _all_rels_files(self, conn: Connection) -> list[manifest.Entry]:
        """Every namespace's rels files: one manifest statement (a single owner's first use
        lists them for the archive cache, which later flushes keep current)."""
        if self.known.shared:
            return manifest.load_kind(conn, "rels")
        listed = self._rels_names
        if listed is None:
            entries = manifest.load_kind(conn, "rels")
            listed = set(self.known.namespaces(conn)) | {e.ns for e in entries}
            self.archived.put_files("rels", entries, sorted(listed))
            with self.lock:
                self._rels_names = listed
        # a namespace new since then is listed on its own, once, by the archive cache
        names = sorted(listed | set(self.known.namespaces(conn)))
        return [e for n in names for e in self.archived.files(conn, "rels", n)]

    def _inbound_of_file(
        self, path: str, ref: str, check: Check | None = None, entry: manifest.Entry | None = None
    ) -> list[RelEvent]:
        """The events of one rels file whose `to` is `ref`. The file is sorted by from_id,
        not by `to`: its `to` column is read once into an index (`_to_groups`), then whole
        rows of the row groups that hold `ref` (through the piece cache when the file's
        manifest `entry` is given). `check`: the file's manifest check (archive/files.py
        reads it checked)."""
        import pyarrow.compute as pc

        archive = self.archived.archive
        assert archive is not None
        meta = self.archived.metadata(entry) if entry is not None else None
        if meta is None:
            meta = archive.footer(path, check)
        groups = self._to_groups(path, meta).get(ref)
        if not groups:
            return []
        if entry is not None:
            table = self.archived.cached_pieces(entry, list(groups), meta)
        else:
            table = archive.read_row_groups(path, list(groups), metadata=meta)
        with archive.decoding(path):
            return parquet.table_rel_events(table.filter(pc.equal(table.column("to"), ref)))

    def _to_groups(self, path: str, meta: Any) -> dict[str, tuple[int, ...]]:
        """Target ref -> row groups of one rels file, built from its `to` column (read once
        while the index has room: of the groups whose min/max can hold any ref, all)."""
        import pyarrow.compute as pc

        with self.lock:
            hit = self._to_index.get(path)
            if hit is not None:
                self._to_index.move_to_end(path)
                return hit
        archive = self.archived.archive
        assert archive is not None
        names = meta.schema.to_arrow_schema().names
        if "to" not in names:
            raise ArchiveError(f"rels file {archive.path(path)} has no column 'to'")
        groups = list(range(meta.num_row_groups))
        index: dict[str, list[int]] = {}
        if groups:
            keys = archive.read_row_groups(path, groups, ["to"], metadata=meta).column(0)
            start = 0
            for g in groups:
                n = meta.row_group(g).num_rows
                for value in pc.unique(keys.slice(start, n)).to_pylist():
                    if isinstance(value, str):
                        index.setdefault(value, []).append(g)
                start += n
        out = {k: tuple(v) for k, v in index.items()}
        with self.lock:
            if path not in self._to_index and len(out) <= TO_INDEX_KEYS:
                self._to_index[path] = out
                self._to_keys += len(out)
                while self._to_keys > TO_INDEX_KEYS:
                    _p, old = self._to_index.popitem(last=False)
                    self._to_keys -= len(old)
        return out
