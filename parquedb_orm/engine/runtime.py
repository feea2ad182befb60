"""The engine of one store in one process: its parts, built and wired here.

One `Runtime` exists per database (engine) in a process, shared by every session and by
the `ParqueDB` handles (engine/setup.py keeps the registry). Each part does one job and
shares `known` (state.py), whose lock-and-epoch rule guards every cache:

- `tail`      the WAL tail index (tail.py)
- `archived`  cached reads of the Parquet archive (archived.py)
- `reads`     committed state: cache, WAL tail, archived state (reads.py)
- `rels`      the relationship index (rels.py)
- `ids`       the id pool (ids.py)
- `committer` the commit protocol, and the commit feed the flush policy subscribes to (commit.py)

The flusher (archive/flush.py) sees the engine only through the `FlushSource` protocol it
declares, which the methods below implement; `db.duckdb()` likewise through `LiveView`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import Connection, Engine

from parquedb_orm.archive.files import Archive
from parquedb_orm.core.events import Event, RelEvent, State, Versioned
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.engine.commit import Committer
from parquedb_orm.engine.ids import IdBlocks
from parquedb_orm.engine.reads import Reads
from parquedb_orm.engine.rels import Relationships
from parquedb_orm.engine.state import DEFAULT_CACHE_ENTRIES, Known
from parquedb_orm.engine.tail import WalTail
from parquedb_orm.sql import dialects, manifest, wal
from parquedb_orm.sql.counters import rseq_key, seq_key


class Runtime:
    def __init__(
        self,
        engine: Engine,
        *,
        shared: bool = False,
        id_block: int = 100,
        archive: Archive | None = None,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        self.engine = engine
        self.family = dialects.family(engine)
        self.memory = dialects.is_memory_sqlite(engine)
        self.known = Known(shared=shared, cache_entries=cache_entries)
        self.ids = IdBlocks(dialects.side_engine(engine), id_block)
        self.tail = WalTail(self.known)
        self.archived = ArchivedReads(self.known, archive)
        self.reads = Reads(self.known, self.tail, self.archived)
        self.rels = Relationships(self.known, self.archived)
        self.committer = Committer(self.known, self.tail, self.reads, self.rels, self.archived, self.ids)

    @property
    def archive(self) -> Archive | None:
        return self.archived.archive

    @archive.setter
    def archive(self, value: Archive | None) -> None:
        self.archived.archive = value

    @property
    def shared(self) -> bool:
        return self.known.shared

    @shared.setter
    def shared(self, value: bool) -> None:
        self.known.shared = value

    @property
    def unflushed(self) -> int:
        return self.known.unflushed

    def close(self) -> None:
        """Release what the runtime opened itself (the id blocks' own pool)."""
        if self.ids.engine is not self.engine:
            self.ids.engine.dispose()

    # ------------------------------------------------------------------ FlushSource
    def known_namespaces(self) -> list[str]:
        return self.known.names()

    def memory_tail(
        self, ns: str, ev_mark: int, rel_mark: int, limit: int
    ) -> tuple[list[Event] | None, list[RelEvent] | None, tuple[bool, bool]]:
        return self.tail.memory(
            ns, ev_mark, rel_mark, committing=self.committer.in_flight, rels_loaded=self.rels.loaded, limit=limit
        )

    def retirable(self, ns: str, kind: str, mark: int) -> int:
        """The highest sequence up to which a flush may retire `ns`'s WAL rows (kind "e"
        events, "r" relationships) whatever their age: the rows this single owner wrote
        itself, numbering after its own. Above it, rows younger than wal.RETAIN_SECONDS
        may hold another single owner's next number and are kept (sql/wal.py)."""
        with self.known.lock:
            st = self.known.peek(ns)
            if st is None or self.known.shared:
                return mark
            claim = st.claims[kind]
            if time.monotonic() - claim.foreign_at < wal.RETAIN_SECONDS:
                return mark
            return max(mark, claim.own_last)

    def tail_bases(self, ns: str, ids: Iterable[str]) -> dict[str, Versioned]:
        """States this process knew before each id's first WAL-tail event (single owner)."""
        with self.known.lock:
            st = self.known.peek(ns)
            if st is None or self.known.shared:
                return {}
            return {eid: base for eid in ids if (base := st.tail_base.get(eid)) is not None}

    def lookup(self, conn: Connection, ns: str, ids: list[str]) -> dict[str, tuple[int, int, State | None]]:
        return self.archived.lookup(conn, ns, ids)

    def archive_files(self, conn: Connection, kind: str, ns: str) -> list[manifest.Entry]:
        return self.archived.files(conn, kind, ns)

    def manifest_changed(self, added: list[manifest.Entry], removed: list[manifest.Entry]) -> None:
        self.archived.changed(added, removed)

    def flushed(
        self,
        summary: dict[str, tuple[int, int, int, int, dict[str, tuple[int, int, State | None]]]],
        entries: list[manifest.Entry],
    ) -> None:
        """After a flush committed: archive caches learn the new files, the tail drops what
        the snapshots now hold, and the unflushed count goes down."""
        self.archived.changed(entries, [])
        for e in entries:
            if e.kind == "entities" and e.ns in summary:
                self.archived.delta_written(e.ns, e, list(summary[e.ns][4]))
        with self.known.lock:
            total = 0
            counters = self.known.counters_cached()
            for ns, (ev_mark, rel_mark, n_ev, n_rel, latest) in summary.items():
                st = self.known.ns(ns)
                if ev_mark:
                    self.tail.trim(st, ev_mark, {eid: (v, state) for eid, (v, _seq, state) in latest.items()})
                    # the tail no longer holds what the files now do: a read that looked
                    # the archive up before this must look again (Reads._load)
                    st.epoch += 1
                    self.archived.learn(ns, latest)
                    if counters is not None:
                        counters[seq_key(ns)] = ev_mark
                if rel_mark:
                    st.rel_tail.trim(rel_mark)
                    if counters is not None:
                        counters[rseq_key(ns)] = rel_mark
                total += n_ev + n_rel
            self.known.unflushed = max(0, self.known.unflushed - total)

    # ------------------------------------------------------------------ LiveView
    def namespaces(self, conn: Connection) -> list[str]:
        return self.known.namespaces(conn)

    def committed_many(self, conn: Connection, ns: str, ids: list[str]) -> dict[str, Versioned]:
        self.reads.prefetch(conn, ns, ids)
        return {eid: self.reads.committed(conn, ns, eid) for eid in ids}
