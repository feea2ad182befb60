"""What one process knows of one database, and the one rule that guards it.

The rule: `Known.lock` guards every cache of the engine, and it is never held across a
SQL statement (a SQLite session in another thread may hold the database write lock while
it waits for this lock). A load reads with the lock released, then installs under it only
if the namespace's `epoch` has not moved meanwhile (every committed change bumps it);
otherwise it reads again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlalchemy import Connection

from parquedb_orm.core.events import Event, RelEvent, Versioned, apply_event
from parquedb_orm.sql.counters import load_all, namespace_of


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
    #: while the relationship index is loaded)
    rel_tail: list[RelEvent] = field(default_factory=list)


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

    def __init__(self, *, shared: bool) -> None:
        self.lock = threading.RLock()
        #: several processes write: caches are checked against the database before use
        self.shared = shared
        self._ns: dict[str, NsState] = {}
        self._counters: dict[str, int] | None = None
        self.unflushed = 0  # committed events not yet in the archive (in memory: no SQL to know)
        self.commits = 0

    def ns(self, name: str) -> NsState:
        with self.lock:
            st = self._ns.get(name)
            if st is None:
                st = self._ns[name] = NsState(name)
            return st

    def peek(self, name: str) -> NsState | None:
        with self.lock:
            return self._ns.get(name)

    def restart(self, name: str) -> None:
        """Forget one namespace (another process flushed events this one never saw), but
        not the numbers this process has reached in it."""
        with self.lock:
            old = self._ns.get(name)
            self._ns[name] = NsState(
                name, next_seq=old.next_seq if old else None, rel_next_seq=old.rel_next_seq if old else None
            )

    def restart_all(self) -> None:
        """Forget every cache, keeping only the sequences this process assigned."""
        with self.lock:
            self._ns = {
                name: NsState(name, next_seq=st.next_seq, rel_next_seq=st.rel_next_seq)
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
