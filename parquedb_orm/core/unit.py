"""A unit of work: the events and provisional state of one transaction.

A session's unit belongs to its outermost `SessionTransaction`; each savepoint inside it
takes a `Mark`. Releasing the savepoint keeps what it added (it merges into the parent);
rolling it back returns the unit to the mark, so only that savepoint's work is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parquedb_orm.core.events import Event, Link, LinkKey, RelEvent, Versioned


@dataclass(frozen=True)
class Mark:
    """What a unit held when a savepoint began."""

    events: dict[str, int]
    rel_events: dict[str, int]
    overlay: dict[tuple[str, str], Versioned]
    base_versions: dict[tuple[str, str], int]
    links: dict[LinkKey, Link | None]
    bulk: int
    reserved: int


@dataclass
class UnitOfWork:
    events: dict[str, list[Event]] = field(default_factory=dict)
    rel_events: dict[str, list[RelEvent]] = field(default_factory=dict)
    #: provisional state of every entity this unit changed, seen by its own reads
    overlay: dict[tuple[str, str], Versioned] = field(default_factory=dict)
    #: committed version each changed entity had when this unit first read it
    base_versions: dict[tuple[str, str], int] = field(default_factory=dict)
    links: dict[LinkKey, Link | None] = field(default_factory=dict)
    #: id blocks reserved inside this transaction (SQLite): usable by it alone until commit
    local_ids: dict[str, list[range]] = field(default_factory=dict)
    #: every block reserved inside this transaction, in order (savepoints undo the newest)
    reserved: list[tuple[str, range]] = field(default_factory=list)
    #: id counters to raise to at least this value when the unit commits: ids of a block
    #: whose reservation a savepoint rolled back were shown, so they are never issued again
    id_floors: dict[str, int] = field(default_factory=dict)
    inflight: bool = False
    committing: bool = False
    #: locks a commit holds until its transaction ends (released by finish/abort)
    held: list[Any] = field(default_factory=list)
    #: create_many bypass: manifest rows of bulk files written by this unit, committed with it
    bulk: list[tuple[Any, list[tuple[str, dict[str, Any]]]]] = field(default_factory=list)

    def add(self, ns: str, ev: Event) -> None:
        self.events.setdefault(ns, []).append(ev)

    def add_rel(self, ns: str, ev: RelEvent) -> None:
        self.rel_events.setdefault(ns, []).append(ev)

    @property
    def empty(self) -> bool:
        return not self.events and not self.rel_events and not self.bulk and not self.id_floors

    def event_count(self) -> int:
        return sum(len(v) for v in self.events.values()) + sum(len(v) for v in self.rel_events.values())

    # ------------------------------------------------------------------ savepoints
    def mark(self) -> Mark:
        return Mark(
            {ns: len(v) for ns, v in self.events.items()},
            {ns: len(v) for ns, v in self.rel_events.items()},
            dict(self.overlay),
            dict(self.base_versions),
            dict(self.links),
            len(self.bulk),
            len(self.reserved),
        )

    def rollback_to(self, mark: Mark | None, issued: dict[str, int]) -> None:
        """Drop everything added since `mark` (None: since the unit began).

        `issued` is the highest id number handed out per namespace: blocks reserved since
        the mark are gone with the savepoint, so the commit raises the counter above
        whatever of them was shown."""
        m = mark or _EMPTY
        for attr, lengths in (("events", m.events), ("rel_events", m.rel_events)):
            per_ns: dict[str, list[Any]] = getattr(self, attr)
            for ns in list(per_ns):
                keep = lengths.get(ns, 0)
                if keep:
                    del per_ns[ns][keep:]
                else:
                    del per_ns[ns]
        self.overlay = dict(m.overlay)
        self.base_versions = dict(m.base_versions)
        self.links = dict(m.links)
        del self.bulk[m.bulk :]
        dropped = self.reserved[m.reserved :]
        del self.reserved[m.reserved :]
        for ns, block in dropped:
            local = self.local_ids.get(ns, [])
            local[:] = [r for r in local if not (len(r) and r.start in block)]
            if issued.get(ns, 0) >= block.start:
                self.id_floors[ns] = max(self.id_floors.get(ns, 0), issued[ns])


_EMPTY = UnitOfWork().mark()
