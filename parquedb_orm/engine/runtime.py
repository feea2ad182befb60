"""Process-wide state of one store: caches, WAL tail index, sequences, and the commit step.

One `Runtime` exists per database (engine) in a process, shared by every session and by
the `ParqueDB` facade. It never holds its lock across a SQL statement: SQLite sessions in
other threads may hold the database write lock while waiting for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, select

from parquedb_orm.archive import parquet
from parquedb_orm.archive.files import Archive
from parquedb_orm.core import codec
from parquedb_orm.core.events import Event, Link, LinkKey, RelEvent, State, apply_event, apply_rel_event
from parquedb_orm.core.ids import decode_id
from parquedb_orm.errors import VersionConflictError
from parquedb_orm.sql import dialects, manifest, snapshots, wal
from parquedb_orm.sql.counters import IdBlocks, load_all, raise_to
from parquedb_orm.sql.models import Counter

if TYPE_CHECKING:
    from parquedb_orm.archive.flush import Flusher
    from parquedb_orm.archive.policy import Scheduler
    from parquedb_orm.core.unit import UnitOfWork

log = logging.getLogger("parquedb_orm")

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
    #: relationship events in the WAL above the flushed mark, in sequence order (valid
    #: while the runtime's relationship index is loaded)
    rel_tail: list[RelEvent] = field(default_factory=list)


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
    def __init__(
        self,
        engine: Engine,
        *,
        shared: bool = False,
        chunk_size: int = 128,
        id_block: int = 100,
        archive: Archive | None = None,
    ) -> None:
        self.engine = engine
        self.archive = archive
        self._manifest: dict[tuple[str, str], list[manifest.Entry]] = {}
        self._archived_states: dict[str, dict[str, tuple[int, int, State | None]]] = {}
        self._bulk_files: dict[str, tuple[dict[str, int], Any]] = {}
        self._arrow_entities: dict[str, Any] = {}  # ns -> the archive's entity files as one Arrow table
        self.family = dialects.family(engine)
        self.memory = dialects.is_memory_sqlite(engine)
        self.shared = shared
        self.chunk_size = chunk_size
        self.ids = IdBlocks(dialects.side_engine(engine), id_block)
        self.lock = threading.RLock()
        self.rels = RelIndex()
        self.unflushed = 0  # committed events not yet in the archive (in memory: no SQL to know)
        self.commits = 0
        self._ns: dict[str, NsState] = {}
        self._counters: dict[str, int] | None = None
        self._inflight: dict[tuple[str, str], int] = {}
        #: units between prepare_commit and finish_commit/abort: while any is in flight the
        #: in-memory WAL tail may lag the table, so a flush reads the table instead
        self._committing = 0
        #: called after every commit with the number of new events (the flush policy hooks in)
        self.after_commit_hooks: list[Callable[[int], None]] = []
        self.flusher: Flusher | None = None
        self.scheduler: Scheduler | None = None

    def close(self) -> None:
        """Release what the runtime opened itself (the id blocks' own pool)."""
        if self.ids.engine is not self.engine:
            self.ids.engine.dispose()

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
            if st.tail_loaded:
                rows = wal.read_tail(conn, wal.EVENTS, ns, after)
            else:
                rows = wal.read_unflushed(conn, wal.EVENTS, ns, f"seq:{ns}")
            with self.lock:
                if st.epoch != epoch and not (st.tail_loaded and self.shared):
                    continue  # a commit landed while we read: read again
                if not st.tail_loaded and rows:
                    st.tail_max = max(st.tail_max, rows[0][0] - 1)
                self._install_tail(st, rows)
                st.tail_loaded = True
                if rows:
                    st.epoch += 1
                return st

    # ------------------------------------------------------------------ archive
    def archive_files(self, conn: Connection, kind: str, ns: str) -> list[manifest.Entry]:
        """Manifest entries of one kind and namespace (cached by a single owner)."""
        key = (kind, ns)
        with self.lock:
            hit = self._manifest.get(key)
        if hit is not None and not self.shared:
            return hit
        entries = manifest.load(conn, kind, ns)
        with self.lock:
            self._manifest[key] = entries
        return entries

    def manifest_changed(self, added: list[manifest.Entry], removed: list[manifest.Entry]) -> None:
        with self.lock:
            for e in (*added, *removed):
                if e.kind in ("entities", manifest.BULK):
                    self._arrow_entities.pop(e.ns, None)
            for e in removed:
                cached = self._manifest.get((e.kind, e.ns))
                if cached is not None:
                    self._manifest[(e.kind, e.ns)] = [x for x in cached if x.path != e.path]
            for e in added:
                cached = self._manifest.get((e.kind, e.ns))
                if cached is not None:
                    self._manifest[(e.kind, e.ns)] = sorted([*cached, e], key=lambda x: x.first_seq)

    def bulk_base(self, conn: Connection, ns: str, entity_id: str) -> Versioned:
        """The state a bulk file (create_many) holds for an id: its number maps to one file."""
        number = decode_id(entity_id)
        if self.archive is None or number is None:
            return (0, None)
        for entry in self.archive_files(conn, manifest.BULK, ns):
            if entry.first_seq <= number <= entry.last_seq:
                index, table = self._bulk_file(entry)
                row = index.get(entity_id)
                if row is not None:
                    text = table.column("state")[row].as_py()
                    return (1, codec.loads(text))
        return (0, None)

    def _bulk_file(self, entry: manifest.Entry) -> tuple[dict[str, int], Any]:
        """A bulk file's (id -> row, table), read once per process (it never changes)."""
        with self.lock:
            hit = self._bulk_files.get(entry.path)
        if hit is None:
            assert self.archive is not None
            table = self.archive.read_table(entry.path, columns=["id", "state"])
            hit = ({eid: i for i, eid in enumerate(table.column("id").to_pylist())}, table)
            with self.lock:
                self._bulk_files[entry.path] = hit
        return hit

    def archived_states(self, conn: Connection, ns: str) -> dict[str, tuple[int, int, State | None]]:
        """Latest archived state of every entity of `ns` (flushed and bulk files)."""
        if self.archive is None:
            return {}
        with self.lock:
            hit = self._archived_states.get(ns)
        if hit is not None and not self.shared:
            return hit
        merged: dict[str, tuple[int, int, State | None]] = {}
        for entry in [*self.archive_files(conn, manifest.BULK, ns), *self.archive_files(conn, "entities", ns)]:
            for eid, value in parquet.table_states(self.archive.read_table(entry.path)).items():
                old = merged.get(eid)
                if old is None or old[0] <= value[0]:
                    merged[eid] = value
        with self.lock:
            self._archived_states[ns] = merged
        return merged

    def archived_events(self, conn: Connection, ns: str, entity_id: str) -> list[Event]:
        """Every archived event of one entity, oldest first (bulk creates included)."""
        if self.archive is None:
            return []
        out: list[Event] = []
        number = decode_id(entity_id)
        for entry in self.archive_files(conn, manifest.BULK, ns):
            if number is not None and entry.first_seq <= number <= entry.last_seq:
                table = self.archive.read_table(entry.path, filters=[("id", "=", entity_id)])
                out.extend(parquet.bulk_create_events(ns, table))
        for entry in self.archive_files(conn, "events", ns):
            table = self.archive.read_table(entry.path, filters=[("id", "=", entity_id)])
            out.extend(parquet.table_events(table))
        return out

    def archived_rel_events(self, conn: Connection, ns: str) -> list[RelEvent]:
        if self.archive is None:
            return []
        out: list[RelEvent] = []
        for entry in self.archive_files(conn, "rels", ns):
            out.extend(parquet.table_rel_events(self.archive.read_table(entry.path)))
        return out

    # ------------------------------------------------------------------ committed reads
    def _base(self, ns: str, chunk: snapshots.Chunk | None, entity_id: str) -> tuple[Versioned, int]:
        if chunk is not None and entity_id in chunk.entities:
            return chunk.entities[entity_id], chunk.wal_seq
        return (0, None), (chunk.wal_seq if chunk is not None else 0)

    def committed(self, conn: Connection, ns: str, entity_id: str, *, fresh: bool = False) -> Versioned:
        """The committed state of one entity: cache, else snapshot chunk + WAL tail.
        `fresh`: the caller has just refreshed this namespace's tail (shared mode)."""
        st = self.ns(ns)
        if not self.shared or fresh:
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
            bulk: Versioned | None = None
            if (chunk is None or entity_id not in chunk.entities) and not self._created_in_tail(st, entity_id):
                bulk = self.bulk_base(conn, ns, entity_id)
            with self.lock:
                if st.epoch != epoch:
                    continue
                result: Versioned = (0, None)
                ids = set(chunk.entities) if chunk else set()
                ids.add(entity_id)
                for eid in ids:
                    base, after = self._base(ns, chunk, eid)
                    if eid == entity_id and bulk is not None and bulk[1] is not None:
                        base = bulk
                    value = fold(ns, base, st.tail.get(eid, []), after)
                    old = st.cache.get(eid)
                    if old is None or old[0] <= value[0]:
                        st.cache[eid] = value
                    if eid == entity_id:
                        result = st.cache[eid]
                return result

    def _created_in_tail(self, st: NsState, entity_id: str) -> bool:
        with self.lock:
            return any(ev.op == "CREATE" for ev in st.tail.get(entity_id, ()))

    def committed_all(self, conn: Connection, ns: str) -> dict[str, Versioned]:
        """Every entity of a namespace (for find): all chunks + tail, cached as complete."""
        st = self.ns(ns)
        if st.complete and not self.shared:
            with self.lock:
                return dict(st.cache)
        st = self.ensure_tail(conn, ns)
        while True:
            epoch = st.epoch
            archived = self.archived_states(conn, ns)  # Parquet: no SQL row per archived entity
            with self.lock:
                if st.epoch != epoch:
                    continue
                seen: dict[str, Versioned] = {}
                for eid, (version, seq, state) in archived.items():
                    seen[eid] = fold(ns, (version, state), st.tail.get(eid, []), seq)
                for eid, evs in st.tail.items():
                    if eid not in seen:
                        seen[eid] = fold(ns, (0, None), evs, 0)
                for eid, value in seen.items():
                    old = st.cache.get(eid)
                    if old is None or old[0] <= value[0]:
                        st.cache[eid] = value
                st.complete = True
                return dict(st.cache)

    def archived_count(self, conn: Connection, ns: str) -> int:
        return sum(e.row_count for kind in ("entities", manifest.BULK) for e in self.archive_files(conn, kind, ns))

    def find_states(self, conn: Connection, ns: str, flt: dict[str, Any]) -> dict[str, Versioned]:
        """Candidates for `find` on a large archived namespace: DuckDB filters the archive's
        latest states with the pushed-down predicate; the WAL tail is folded on top (an
        entity the tail touched is always a candidate, whatever its archived state)."""
        import duckdb
        import pyarrow as pa

        from parquedb_orm.core import codec, pushdown

        st = self.ensure_tail(conn, ns)
        with self.lock:
            tail_ids = list(st.tail)
            tail = {eid: list(evs) for eid, evs in st.tail.items()}
        assert self.archive is not None
        with self.lock:
            table = self._arrow_entities.get(ns)
        if table is None or self.shared:
            parts = [
                self.archive.read_table(e.path, columns=["id", "version", "seq", "type", "state"])
                for kind in (manifest.BULK, "entities")
                for e in self.archive_files(conn, kind, ns)
            ]
            table = pa.concat_tables(parts) if parts else None
            with self.lock:
                self._arrow_entities[ns] = table
        out: dict[str, Versioned] = {}
        if table is not None:
            con = duckdb.connect()
            con.register("ents", table)
            con.register("tail_ids", pa.table({"id": pa.array(tail_ids, pa.string())}))
            rows = con.execute(
                f"""SELECT id, version, seq, state FROM (
                      SELECT *, row_number() OVER (PARTITION BY id ORDER BY version DESC) AS rn FROM ents)
                    WHERE rn = 1 AND (({pushdown.to_sql(flt)}) OR id IN (SELECT id FROM tail_ids))"""
            ).fetchall()
            con.close()
            for eid, version, seq, text in rows:
                state = None if text is None else codec.loads(text)
                out[eid] = fold(ns, (int(version), state), tail.get(eid, []), int(seq))
        for eid, evs in tail.items():
            if eid not in out:
                out[eid] = fold(ns, (0, None), evs, 0)
        return out

    def ensure_rels(self, conn: Connection) -> RelIndex:
        """Load the relationship index once: every namespace's rels WAL tail."""
        if self.rels.loaded and not self.shared:
            return self.rels
        while True:
            epoch = self.rels.epoch
            names = self.namespaces(conn)
            with self.lock:
                after = {n: (self.ns(n).rel_tail_max if self.rels.loaded else -1) for n in names}
            archived: dict[str, list[RelEvent]] = {}
            fresh = [n for n in names if after[n] < 0]
            if fresh and self.archive is not None:
                # every namespace's rels files in one seek (the manifest key starts with kind)
                entries = manifest.load_kind(conn, "rels")
                with self.lock:
                    for n in fresh:
                        self._manifest[("rels", n)] = [e for e in entries if e.ns == n]
                for n in fresh:
                    archived[n] = self.archived_rel_events(conn, n)
            specs = [(n, None if after[n] < 0 else after[n], f"rseq:{n}") for n in names]
            loaded = list(wal.read_many(conn, wal.RELS, specs).items())  # one statement
            with self.lock:
                if self.rels.epoch != epoch:
                    continue
                for n, evs in archived.items():
                    st = self.ns(n)
                    for ev in sorted(evs, key=lambda e: e.seq):
                        if ev.seq > st.rel_tail_max:
                            self.rels.apply(n, ev)
                            st.rel_tail_max = ev.seq
                for n, rows in loaded:
                    st = self.ns(n)
                    for first, _last, records in rows:
                        for ev in wal.decode_rel_events(wal.RELS, n, first, records):
                            if ev.seq > st.rel_tail_max:
                                self.rels.apply(n, ev)
                                st.rel_tail_max = ev.seq
                                st.rel_tail.append(ev)
                self.rels.loaded = True
                return self.rels

    # ------------------------------------------------------------------ after a flush
    def known_namespaces(self) -> list[str]:
        with self.lock:
            return sorted(self._ns)

    def flushed(
        self,
        summary: dict[str, tuple[int, int, int, int, dict[str, tuple[int, int, State | None]]]],
        entries: list[manifest.Entry],
    ) -> None:
        """After a flush committed: archive caches learn the new files, the tail drops what
        the snapshots now hold, and the unflushed count goes down."""
        self.manifest_changed(entries, [])
        with self.lock:
            total = 0
            for ns, (ev_mark, rel_mark, n_ev, n_rel, latest) in summary.items():
                st = self.ns(ns)
                if ev_mark:
                    for eid in list(st.tail):
                        kept = [e for e in st.tail[eid] if e.seq > ev_mark]
                        st.tail_events -= len(st.tail[eid]) - len(kept)
                        if kept:
                            st.tail[eid] = kept
                        else:
                            del st.tail[eid]
                    cached = self._archived_states.get(ns)
                    if cached is not None:
                        for eid, value in latest.items():
                            old = cached.get(eid)
                            if old is None or old[0] <= value[0]:
                                cached[eid] = value
                    if self._counters is not None:
                        self._counters[f"seq:{ns}"] = ev_mark
                if rel_mark:
                    st.rel_tail = [r for r in st.rel_tail if r.seq > rel_mark]
                    if self._counters is not None:
                        self._counters[f"rseq:{ns}"] = rel_mark
                total += n_ev + n_rel
            self.unflushed = max(0, self.unflushed - total)

    # ------------------------------------------------------------------ commit
    def _check_floors(self, conn: Connection, uow: UnitOfWork) -> dict[tuple[str, str], int]:
        """Read the namespaces' highest sequences (one statement, ~2 rows read per
        namespace) under the commit locks. If they are beyond what this process knows,
        another process writes this database: the runtime switches to shared mode for
        good, so caches are checked against the database from now on."""
        floors = wal.seq_floors(conn, list(uow.events), list(uow.rel_events))
        foreign = False
        with self.lock:
            for (kind, ns), floor in floors.items():
                st = self.ns(ns)
                known = st.next_seq if kind == "e" else st.rel_next_seq
                if known is not None and floor >= known:
                    foreign = True
        if foreign and not self.shared:
            log.warning(
                "another process writes this database: parquedb-orm switches to shared=True "
                "(pass shared=True to ParqueDB()/enable() when several processes write)"
            )
            with self.lock:
                self.shared = True
                self.rels.loaded = False
                self._ns = {
                    name: NsState(name, next_seq=st.next_seq, rel_next_seq=st.rel_next_seq)
                    for name, st in self._ns.items()
                }
        return floors

    def _next_seqs(self, conn: Connection, uow: UnitOfWork, floors: dict[tuple[str, str], int]) -> None:
        """Number the unit's events; the caller holds the namespaces' commit locks."""
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
        if uow.bulk:
            manifest.add(conn, [entry for entry, _states in uow.bulk])
        for ns, floor in sorted(uow.id_floors.items()):
            raise_to(conn, f"id:{ns}", floor)
        if not uow.events and not uow.rel_events:
            return
        with self.lock:
            self._committing += 1
        uow.committing = True
        dialects.lock_namespaces(conn, [*uow.events, *uow.rel_events])
        self._register_namespaces(conn, [*uow.events, *uow.rel_events])
        floors = self._check_floors(conn, uow)
        # the first commit to a namespace loads its WAL tail (one seek; nothing to read on
        # a fresh database), so later reads and flushes are served from memory
        for ns in uow.events:
            if not self.ns(ns).tail_loaded:
                self.ensure_tail(conn, ns)
        if uow.rel_events and not self.rels.loaded:
            self.ensure_rels(conn)
        # concurrent writers: every entity this unit changed must still be at the version it read
        if self.shared:  # one refresh per namespace, not one per entity
            for ns in {ns for ns, _eid in uow.base_versions}:
                self.ensure_tail(conn, ns)
        for (ns, eid), base in uow.base_versions.items():
            current = self.committed(conn, ns, eid, fresh=self.shared)[0]
            with self.lock:
                current = max(current, self._inflight.get((ns, eid), 0))
            if current != base:
                raise VersionConflictError(
                    f"{ns}/{eid} changed concurrently (now version {current}, this transaction read {base}); "
                    "retry the transaction",
                    expected=base,
                    actual=current,
                )
        self._next_seqs(conn, uow, floors)
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
        for entry, states in uow.bulk:
            self.manifest_changed([entry], [])
            with self.lock:
                st = self.ns(entry.ns)
                archived = self._archived_states.get(entry.ns)
                for eid, state in states:
                    st.cache[eid] = (1, state)
                    if archived is not None:
                        archived[eid] = (1, 0, state)
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
                            st.rel_tail.append(rev)
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

    def _register_namespaces(self, conn: Connection, names: list[str]) -> None:
        """Every namespace with WAL rows has a counter row (`id:`, `seq:` or `rseq:`), so a
        flush knows every namespace from one small table. Namespaces with entities have their
        `id:` row already; any other gets `seq:<ns>` once, ever."""
        known = self._counters if self._counters is not None else self.counters(conn)
        with self.lock:
            have = {n.split(":", 1)[1] for n in known if ":" in n} | self.ids.namespaces()
        if set(names) - have and self.shared:  # another process may have registered it
            known = self.counters(conn)
            with self.lock:
                have |= {n.split(":", 1)[1] for n in known if ":" in n}
        missing = sorted(f"seq:{ns}" for ns in set(names) - have)
        if missing:
            dialects.insert_ignore(conn, Counter.__table__, [{"name": n, "value": 0} for n in missing])  # type: ignore[arg-type]
            with self.lock:
                for n in missing:
                    known.setdefault(n, 0)

    def memory_tail(self, ns: str, ev_mark: int, rel_mark: int) -> tuple[list[Event] | None, list[RelEvent] | None]:
        """The namespace's unflushed entity and relationship events from memory, each only if
        memory is known to equal the WAL (single owner, that tail loaded, no commit in
        flight); None for a part means: read it from the table."""
        with self.lock:
            st = self._ns.get(ns)
            if self.shared or self._committing or st is None:
                return None, None
            events = None
            if st.tail_loaded:
                events = sorted((e for evs in st.tail.values() for e in evs if e.seq > ev_mark), key=lambda e: e.seq)
            rels = [r for r in st.rel_tail if r.seq > rel_mark] if self.rels.loaded else None
            return events, rels

    def _release(self, uow: UnitOfWork) -> None:
        if uow.inflight:
            for key in uow.overlay:
                self._inflight.pop(key, None)
            uow.inflight = False
        if uow.committing:
            self._committing -= 1
            uow.committing = False

    def abort(self, uow: UnitOfWork) -> None:
        with self.lock:
            self._release(uow)
