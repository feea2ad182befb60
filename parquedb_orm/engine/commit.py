"""The commit protocol: inside the committing transaction lock, check, number and write a
unit's events (`prepare`); after COMMIT fold them into the caches and tell subscribers
(`finish`); on any other end release what `prepare` took (`abort`).

A single owner numbers from memory; its INSERT claims the numbers or finds them taken
(another process writes the database), and the engine switches to shared mode for good,
where each commit reads its namespaces' floors first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Table

from parquedb_orm.core.events import Event, Versioned, starts_entity
from parquedb_orm.core.unit import UnitOfWork
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.engine.ids import IdBlocks
from parquedb_orm.engine.reads import Reads
from parquedb_orm.engine.rels import Relationships
from parquedb_orm.engine.state import TAIL_BASE_ENTRIES, Known, NsState
from parquedb_orm.engine.tail import WalTail
from parquedb_orm.errors import ArchiveError, TransactionError, VersionConflictError
from parquedb_orm.sql import dialects, manifest, wal
from parquedb_orm.sql.counters import id_key, namespace_of, raise_to, rseq_key, seq_key
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
        #: per namespace: this process's committers take turns (databases without one write lock)
        self._ns_locks: dict[str, threading.Lock] = {}
        self._contended_until = 0.0  # monotonic time until which shared commits lock first
        #: namespaces known to have their counter row (Committer._register)
        self._registered: set[str] = set()

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

    def _switch_to_shared(self) -> None:
        if self.known.shared:
            return
        log.warning(
            "another process writes this database: parquedb-orm switches to shared=True "
            "(pass shared=True to ParqueDB()/enable() when several processes write)"
        )
        with self.lock:
            self.known.shared = True
            self.rels.unload()
            self.known.restart_all()

    def _floors(self, conn: Connection, uow: UnitOfWork) -> dict[tuple[str, str], int]:
        """Shared mode: the namespaces' highest sequences (one statement, one row read per
        namespace: its newest WAL row, which every flush keeps)."""
        floors = wal.seq_floors(conn, list(uow.events), list(uow.rel_events))
        now = time.monotonic()
        with self.lock:
            for (kind, ns), floor in floors.items():
                st = self.known.ns(ns)
                nxt = st.next_seq if kind == "e" else st.rel_next_seq
                if floor and floor >= (nxt or 1):
                    # numbering after a row this process did not write (its own rows end
                    # below its next number): that row's writer may be a single owner whose
                    # next number this commit takes (Claim, archive/flush.py `_retire`)
                    st.claims[kind].foreign_at = now
                if kind == "e" and (st.next_seq or 0) <= floor:
                    st.next_seq = floor + 1
                if kind == "r" and (st.rel_next_seq or 0) <= floor:
                    st.rel_next_seq = floor + 1
        return floors

    def _next_seqs(self, uow: UnitOfWork) -> None:
        """Number the unit's events from the namespaces' next numbers."""
        with self.lock:
            for ns, evs in uow.events.items():
                st = self.known.ns(ns)
                nxt = st.next_seq or 1
                for ev in evs:
                    ev.seq = nxt
                    nxt += 1
                st.next_seq = nxt
            for ns, revs in uow.rel_events.items():
                st = self.known.ns(ns)
                nxt = st.rel_next_seq or 1
                for rev in revs:
                    rev.seq = nxt
                    nxt += 1
                st.rel_next_seq = nxt

    def _lock(self, conn: Connection, uow: UnitOfWork, names: list[str]) -> None:
        """Numbers must follow commit order (a flush takes a prefix of the sequence):
        SQLite's write lock orders every writer; elsewhere this process's committers of a
        namespace take turns on a lock held to the end of the transaction, and other
        processes (shared mode) are ordered by the WAL's primary key or a row lock."""
        dialects.take_write_lock(conn)
        if dialects.capabilities(conn).single_writer:
            return
        with self.lock:
            locks = [self._ns_locks.setdefault(ns, threading.Lock()) for ns in names]
        for lk in locks:
            lk.acquire()
            uow.held.append(lk)

    def _check_versions(self, conn: Connection, uow: UnitOfWork, floors: dict[tuple[str, str], int]) -> None:
        """Concurrent writers: every entity this unit changed must still be at the version it read.
        Shared mode refreshes each namespace's tail once, unless the floor just read says
        nothing was committed since this process last looked."""
        if self.known.shared:
            for ns in {ns for ns, _eid in uow.base_versions}:
                st = self.known.ns(ns)
                if not (st.tail_loaded and floors.get(("e", ns)) == st.tail_max):
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

    def prepare(self, conn: Connection, uow: UnitOfWork) -> None:
        """Inside the committing transaction: check versions, number and write the events.

        A single owner numbers from memory; its one INSERT per table (reading one counter
        row) fails to claim the numbers if another writer used them (`insert_unclaimed`):
        then the runtime switches to shared mode and the commit runs again that way.
        Shared mode reads each namespace's floor first (one row each): under a lock
        (SQLite's write lock, a row lock on MySQL), or none on PostgreSQL, where a taken key
        makes the insert retry from a fresh floor."""
        if uow.bulk:
            manifest.add(conn, [entry for entry, _states in uow.bulk])
        for ns, floor in sorted(uow.id_floors.items()):
            raise_to(conn, id_key(ns), floor)
        if not uow.events and not uow.rel_events:
            return
        with self.lock:
            self._committing += 1
        uow.committing = True
        names = sorted({*uow.events, *uow.rel_events})
        self._lock(conn, uow, names)
        self._register(conn, names)
        # the first commit to a namespace loads its WAL tail (one seek; nothing to read on
        # a fresh database), so later reads and flushes are served from memory
        for ns in uow.events:
            if not self.known.ns(ns).tail_loaded:
                self.tail.ensure(conn, ns)
        if uow.rel_events and not self.rels.loaded:
            self.rels.ensure(conn)
        caps = dialects.capabilities(conn)
        for _attempt in range(100):
            with self.lock:  # a namespace this process has not numbered yet starts from its floor
                unknown = any(self.known.ns(ns).next_seq is None for ns in uow.events) or any(
                    self.known.ns(ns).rel_next_seq is None for ns in uow.rel_events
                )
            # optimistic numbering tries without a lock while there is no contention; a writer
            # that lost the race, and every commit for a second after, queues on the
            # namespaces' lock instead (racing the other writers again costs more than waiting)
            contended = _attempt > 0 or time.monotonic() < self._contended_until
            # a single owner numbering from memory takes no database lock: this process's
            # committers take turns already (`_lock`), and another writer shows as a taken
            # key; a floor read does (on MySQL its snapshot may predate the last commits).
            # A switch to shared mode can then deadlock a locking reader against a lock-free
            # inserter: InnoDB rolls one back, and the group committer runs it again.
            lock = (caps.snapshot_reads and (self.known.shared or unknown)) or (
                self.known.shared and not caps.single_writer and (not caps.optimistic_numbering or contended)
            )
            if lock:
                dialects.lock_namespaces(conn, names, side=self.ids.engine)
            floors = self._floors(conn, uow) if self.known.shared or unknown else {}
            self._check_versions(conn, uow, floors)
            self._next_seqs(uow)
            with self.lock:
                for key, (version, _state) in uow.overlay.items():
                    self._inflight[key] = max(self._inflight.get(key, 0), version)
            uow.inflight = True
            # a floor read under a lock every writer of the namespace takes (SQLite, MySQL) is
            # exact: only the key is checked; otherwise (a single owner, or PostgreSQL, where a
            # lock-free writer and then a flush may land between floor and insert) the mark too
            exact = self.known.shared and not caps.optimistic_numbering
            if self._insert(conn, uow, exact=exact):
                return
            self._contended_until = time.monotonic() + 1.0
            with self.lock:  # numbered again below: its versions are not in flight meanwhile
                for key in uow.overlay:
                    self._inflight.pop(key, None)
                uow.inflight = False
            self._switch_to_shared()
        raise TransactionError(
            f"could not number this commit's events after 100 attempts (namespaces {names}): other writers "
            "keep taking the same sequence numbers; retry the transaction"
        )

    def _insert(self, conn: Connection, uow: UnitOfWork, *, exact: bool) -> bool:
        """Write the unit's WAL rows; False (and nothing of them left) if any number was taken.

        `exact`: the numbers come from floors read under a lock every writer takes, so a
        taken key is the only sign to look for. Otherwise a namespace's first row also
        checks the flushed mark, except where this single owner inserted into it less than
        OWNER_CHECK_SECONDS ago: a flush keeps the row that would have taken its number
        (sql/wal.py), so the key alone tells, and the commit reads no row."""
        written: list[tuple[Table, list[dict[str, Any]]]] = []
        now = time.monotonic()
        for kind, table, per_ns, mark in (
            ("e", wal.EVENTS, uow.events, seq_key),
            ("r", wal.RELS, uow.rel_events, rseq_key),
        ):
            if kind == "e":
                rows = [r for ns, evs in uow.events.items() for r in wal.build_event_rows(ns, evs)]
            else:
                rows = [r for ns, rs in uow.rel_events.items() for r in wal.build_rows(ns, [e.to_record() for e in rs])]
            if not rows:
                continue
            marks: dict[str, str] | None = None
            if not exact:
                with self.lock:
                    claims = {ns: self.known.ns(ns).claims[kind] for ns in per_ns}
                marks = {
                    ns: mark(ns)
                    for ns, claim in claims.items()
                    if self.known.shared or now - claim.inserted_at > wal.OWNER_CHECK_SECONDS
                }
            if not wal.insert_unclaimed(conn, table, rows, marks):
                # rare (the switch to shared mode): take back what of this unit went in
                for done_table, done_rows in [*written, (table, rows)]:
                    wal.delete_own_rows(conn, done_table, done_rows)
                return False
            with self.lock:
                for ns in per_ns:
                    claim = self.known.ns(ns).claims[kind]
                    claim.inserted_at = max(claim.inserted_at, now)
            written.append((table, rows))
        return True

    def finish(self, uow: UnitOfWork) -> None:
        """After COMMIT: fold the unit into the shared caches and tell the flush policy."""
        count = sum(len(v) for v in uow.events.values()) + sum(len(v) for v in uow.rel_events.values())
        archive = self.archived.archive
        for entry, _states in uow.bulk:
            # committed: make the create_many files visible (a crash before this leaves
            # them pending: the next open or flush publishes them, archive/files.py)
            if archive is not None:
                try:
                    archive.publish_pending(entry.path)
                except ArchiveError as exc:  # committed all the same: a reader or the sweep publishes it
                    log.warning("create_many file %s stays pending: %s", entry.path, exc)
        # create_many fills only the cache's free room: an import caches what fits and
        # never evicts the working set; the rest stays in its bulk file (one piece a get)
        uncached: set[tuple[str, str]] = set()
        for entry, states in uow.bulk:
            self.archived.changed([entry], [])
            with self.lock:
                st = self.known.ns(entry.ns)
                room = max(0, self.known.cache.max_entries - len(self.known.cache))
                for eid, state in states[:room]:
                    st.cache[eid] = (1, state)
                uncached.update((entry.ns, eid) for eid, _s in states[room:])
                self.archived.bulk_created(entry.ns, states)
        with self.lock:
            before: dict[tuple[str, str], Versioned | None] = {}
            for (ns, eid), value in uow.overlay.items():
                if uncached and (ns, eid) in uncached:
                    continue
                st = self.known.ns(ns)
                old = before[(ns, eid)] = st.cache.get(eid)
                if old is None or old[0] <= value[0]:
                    st.cache[eid] = value
            for kind, per_ns in (("e", uow.events), ("r", uow.rel_events)):
                for ns, items in per_ns.items():
                    if items:
                        claim = self.known.ns(ns).claims[kind]
                        claim.own_last = max(claim.own_last, items[-1].seq)
            for ns, evs in uow.events.items():
                st = self.known.ns(ns)
                late = (
                    st.tail_loaded
                    and bool(evs)
                    and evs[0].seq <= st.tail_max
                    and not any(e.seq == evs[0].seq for e in st.tail.get(evs[0].id))  # not read in already
                )
                if late and not self.tail.takes_late(st, evs):
                    # a later commit's finish ran first (finishes run after COMMIT, outside
                    # the write lock: ORM sessions commit on their own) and touched the same
                    # entity: its events cannot stay in order, so this namespace starts
                    # again and its next use loads the tail from the table, where both are.
                    # (Other entities' late events just join the tail: `takes_late`.)
                    self.known.restart(ns)
                    st = self.known.ns(ns)
                    late = False
                if st.tail_loaded and not self.known.shared:
                    self._note_tail_bases(st, evs, before)
                self.tail.append(st, evs, late=late)
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

    @staticmethod
    def _note_tail_bases(st: NsState, evs: list[Event], before: dict[tuple[str, str], Versioned | None]) -> None:
        """Remember the state each entity had before its first WAL-tail event, when this
        commit knows it (a create starts from nothing; an update from the cached state it
        was checked against): a flush then folds the tail without reading the archive."""
        seen: set[str] = set()
        for ev in evs:
            if ev.id in seen or ev.id in st.tail or ev.id in st.tail_base:
                seen.add(ev.id)
                continue
            seen.add(ev.id)
            if starts_entity(ev):
                st.tail_base[ev.id] = (0, None)
                continue
            old = before.get((st.name, ev.id))
            if old is not None and old[0] == ev.version - 1 and len(st.tail_base) < TAIL_BASE_ENTRIES:
                st.tail_base[ev.id] = old

    def _register(self, conn: Connection, names: list[str]) -> None:
        """Every namespace with WAL rows has a counter row (`id:`, `seq:` or `rseq:`), so a
        flush knows every namespace from one small table. Namespaces with entities have their
        `id:` row already; any other gets `seq:<ns>` once, ever."""
        if self._registered.issuperset(names):
            return  # the common case: nothing to compute on the commit path
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
        else:
            # registered before this commit: remembered (a row inserted here counts only
            # once its transaction commits, so `missing` ones are checked again next time)
            self._registered.update(names)

    def _release(self, uow: UnitOfWork) -> None:
        while uow.held:
            uow.held.pop().release()
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
            # numbers it took were never written: another writer numbering from the table
            # takes them, in a row whose key starts below this process's next number, where
            # no key collides. So the namespace starts again as at this process's first
            # commit to it: the next one loads its WAL tail and numbers from the table (its
            # lock, or SQLite's write lock, is still held: no commit numbered since)
            for kind, per_ns in (("e", uow.events), ("r", uow.rel_events)):
                for ns, items in per_ns.items():
                    if items and items[0].seq:
                        self.known.restart(ns)
                        st = self.known.ns(ns)
                        if kind == "e":
                            st.next_seq = None
                        else:
                            st.rel_next_seq = None
                            self.rels.unload()
            self._release(uow)
