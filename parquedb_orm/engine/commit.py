"""The commit protocol: inside the committing transaction lock, check, number and write a
unit's events (`prepare`); after COMMIT fold them into the caches and tell subscribers
(`finish`); on any other end release what `prepare` took (`abort`).

A commit reads the namespaces' sequence floors under the commit locks: beyond what this
process knows, another process writes the database, and the engine switches to shared mode
for good.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Connection

from parquedb_orm.core.unit import UnitOfWork
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.engine.ids import IdBlocks
from parquedb_orm.engine.reads import Reads
from parquedb_orm.engine.rels import Relationships
from parquedb_orm.engine.state import Known
from parquedb_orm.engine.tail import WalTail
from parquedb_orm.errors import VersionConflictError
from parquedb_orm.sql import dialects, manifest, wal
from parquedb_orm.sql.counters import id_key, namespace_of, raise_to, seq_key
from parquedb_orm.sql.models import Counter

log = logging.getLogger("parquedb_orm")


class Committer:
    def __init__(
        self,
        known: Known,
        tail: WalTail,
        reads: Reads,
        rels: Relationships,
        archived: ArchivedReads,
        ids: IdBlocks,
    ) -> None:
        self.known = known
        self.lock = known.lock
        self.tail = tail
        self.reads = reads
        self.rels = rels
        self.archived = archived
        self.ids = ids
        self._inflight: dict[tuple[str, str], int] = {}
        #: units between prepare and finish/abort: while any is in flight the in-memory WAL
        #: tail may lag the table, so a flush reads the table instead
        self._committing = 0
        self._subscribers: list[Callable[[int], None]] = []

    @property
    def unflushed(self) -> int:
        return self.known.unflushed

    @property
    def in_flight(self) -> bool:
        return self._committing > 0

    def subscribe(self, hook: Callable[[int], None]) -> None:
        """Call `hook(new events)` after every commit (the flush policy does)."""
        self._subscribers.append(hook)

    def unsubscribe(self, hook: Callable[[int], None]) -> None:
        if hook in self._subscribers:
            self._subscribers.remove(hook)

    def _check_floors(self, conn: Connection, uow: UnitOfWork) -> dict[tuple[str, str], int]:
        """Read the namespaces' highest sequences (one statement, ~2 rows read per
        namespace) under the commit locks. If they are beyond what this process knows,
        another process writes this database: the runtime switches to shared mode for
        good, so caches are checked against the database from now on."""
        floors = wal.seq_floors(conn, list(uow.events), list(uow.rel_events))
        foreign = False
        with self.lock:
            for (kind, ns), floor in floors.items():
                st = self.known.ns(ns)
                known = st.next_seq if kind == "e" else st.rel_next_seq
                if known is not None and floor >= known:
                    foreign = True
        if foreign and not self.known.shared:
            log.warning(
                "another process writes this database: parquedb-orm switches to shared=True "
                "(pass shared=True to ParqueDB()/enable() when several processes write)"
            )
            with self.lock:
                self.known.shared = True
                self.rels.unload()
                self.known.restart_all()
        return floors

    def _next_seqs(self, conn: Connection, uow: UnitOfWork, floors: dict[tuple[str, str], int]) -> None:
        """Number the unit's events; the caller holds the namespaces' commit locks."""
        with self.lock:
            for ns, evs in uow.events.items():
                st = self.known.ns(ns)
                nxt = max(st.next_seq or 0, floors.get(("e", ns), 0) + 1)
                for ev in evs:
                    ev.seq = nxt
                    nxt += 1
                st.next_seq = nxt
            for ns, revs in uow.rel_events.items():
                st = self.known.ns(ns)
                nxt = max(st.rel_next_seq or 0, floors.get(("r", ns), 0) + 1)
                for rev in revs:
                    rev.seq = nxt
                    nxt += 1
                st.rel_next_seq = nxt

    def prepare(self, conn: Connection, uow: UnitOfWork) -> None:
        """Inside the committing transaction: lock, check versions, number and write the events."""
        if uow.bulk:
            manifest.add(conn, [entry for entry, _states in uow.bulk])
        for ns, floor in sorted(uow.id_floors.items()):
            raise_to(conn, id_key(ns), floor)
        if not uow.events and not uow.rel_events:
            return
        with self.lock:
            self._committing += 1
        uow.committing = True
        dialects.lock_namespaces(conn, [*uow.events, *uow.rel_events])
        self._register(conn, [*uow.events, *uow.rel_events])
        floors = self._check_floors(conn, uow)
        # the first commit to a namespace loads its WAL tail (one seek; nothing to read on
        # a fresh database), so later reads and flushes are served from memory
        for ns in uow.events:
            if not self.known.ns(ns).tail_loaded:
                self.tail.ensure(conn, ns)
        if uow.rel_events and not self.rels.loaded:
            self.rels.ensure(conn)
        # concurrent writers: every entity this unit changed must still be at the version it read
        if self.known.shared:  # one refresh per namespace, not one per entity
            for ns in {ns for ns, _eid in uow.base_versions}:
                self.tail.ensure(conn, ns)
        for (ns, eid), base in uow.base_versions.items():
            current = self.reads.committed(conn, ns, eid, fresh=self.known.shared)[0]
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


    def finish(self, uow: UnitOfWork) -> None:
        """After COMMIT: fold the unit into the shared caches and tell the flush policy."""
        count = sum(len(v) for v in uow.events.values()) + sum(len(v) for v in uow.rel_events.values())
        for entry, states in uow.bulk:
            self.archived.changed([entry], [])
            with self.lock:
                st = self.known.ns(entry.ns)
                for eid, state in states:
                    st.cache[eid] = (1, state)
                self.archived.bulk_created(entry.ns, states)
        with self.lock:
            for (ns, eid), value in uow.overlay.items():
                st = self.known.ns(ns)
                old = st.cache.get(eid)
                if old is None or old[0] <= value[0]:
                    st.cache[eid] = value
            for ns, evs in uow.events.items():
                st = self.known.ns(ns)
                self.tail.append(st, evs)
                st.epoch += 1
            for ns, revs in uow.rel_events.items():
                self.rels.append(self.known.ns(ns), revs)
            self._release(uow)
            for ns, ranges in uow.local_ids.items():
                for r in ranges:
                    self.ids.give(ns, r)
            if count:
                self.known.unflushed += count
                self.known.commits += 1
        if count:
            for hook in list(self._subscribers):
                hook(count)

    def _register(self, conn: Connection, names: list[str]) -> None:
        """Every namespace with WAL rows has a counter row (`id:`, `seq:` or `rseq:`), so a
        flush knows every namespace from one small table. Namespaces with entities have their
        `id:` row already; any other gets `seq:<ns>` once, ever."""
        known = self.known.counters_cached()
        if known is None:
            known = self.known.counters(conn)
        with self.lock:
            have = {ns for n in known if (ns := namespace_of(n))} | self.ids.namespaces()
        if set(names) - have and self.known.shared:  # another process may have registered it
            known = self.known.counters(conn)
            with self.lock:
                have |= {ns for n in known if (ns := namespace_of(n))}
        missing = sorted(seq_key(ns) for ns in set(names) - have)
        if missing:
            dialects.insert_ignore(conn, Counter.__table__, [{"name": n, "value": 0} for n in missing])  # type: ignore[arg-type]
            with self.lock:
                for n in missing:
                    known.setdefault(n, 0)


    def _release(self, uow: UnitOfWork) -> None:
        if uow.inflight:
            for key in uow.overlay:
                self._inflight.pop(key, None)
            uow.inflight = False
        if uow.committing:
            self._committing -= 1
            uow.committing = False

    def abort(self, uow: UnitOfWork) -> None:
        """The unit's transaction ended without commit."""
        with self.lock:
            self._release(uow)
