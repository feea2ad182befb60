"""The relationship index: every live link, by source and by target, loaded once from the
archive's rels files and every namespace's rels WAL tail, then kept current by commits."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection

from parquedb_orm.core.events import Link, LinkKey, RelEvent, apply_rel_event
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.engine.state import Known, NsState
from parquedb_orm.sql import manifest, wal
from parquedb_orm.sql.counters import rseq_key


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


class Relationships:
    def __init__(self, known: Known, archived: ArchivedReads) -> None:
        self.known = known
        self.lock = known.lock
        self.archived = archived
        self.index = RelIndex()

    @property
    def loaded(self) -> bool:
        return self.index.loaded

    def ensure(self, conn: Connection) -> RelIndex:
        """Load the relationship index once: every namespace's rels files and WAL tail."""
        index = self.index
        if index.loaded and not self.known.shared:
            return index
        while True:
            epoch = index.epoch
            names = self.known.namespaces(conn)
            with self.lock:
                after = {n: (self.known.ns(n).rel_tail_max if index.loaded else -1) for n in names}
            archived: dict[str, list[RelEvent]] = {}
            fresh = [n for n in names if after[n] < 0]
            if fresh and self.archived.archive is not None:
                # every namespace's rels files in one seek (the manifest key starts with kind)
                self.archived.put_files("rels", manifest.load_kind(conn, "rels"), fresh)
                for n in fresh:
                    archived[n] = self.archived.rel_events(conn, n)
            specs = [(n, None if after[n] < 0 else after[n], rseq_key(n)) for n in names]
            loaded = list(wal.read_many(conn, wal.RELS, specs).items())  # one statement
            with self.lock:
                if index.epoch != epoch:
                    continue
                for n, evs in archived.items():
                    st = self.known.ns(n)
                    for ev in sorted(evs, key=lambda e: e.seq):
                        if ev.seq > st.rel_tail_max:
                            index.apply(n, ev)
                            st.rel_tail_max = ev.seq
                for n, rows in loaded:
                    st = self.known.ns(n)
                    for first, _last, records in rows:
                        for ev in wal.decode_rel_events(wal.RELS, n, first, records):
                            if ev.seq > st.rel_tail_max:
                                index.apply(n, ev)
                                st.rel_tail_max = ev.seq
                                st.rel_tail.append(ev)
                index.loaded = True
                return index

    def append(self, st: NsState, events: list[RelEvent]) -> None:
        """A commit's own relationship events (caller holds the lock)."""
        if self.index.loaded:
            for rev in events:
                if rev.seq > st.rel_tail_max:
                    self.index.apply(st.name, rev)
                    st.rel_tail_max = rev.seq
                    st.rel_tail.append(rev)
        self.index.epoch += 1

    def unload(self) -> None:
        """Load again at next use (another process writes this database too)."""
        self.index.loaded = False
