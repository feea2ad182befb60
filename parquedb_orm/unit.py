"""A unit of work: the events and provisional state of one session transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .events import Event, Link, LinkKey, RelEvent
from .runtime import Versioned


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
    inflight: bool = False
    committing: bool = False
    #: create_many bypass: manifest rows of bulk files written by this unit, committed with it
    bulk: list[tuple[Any, list[tuple[str, dict[str, Any]]]]] = field(default_factory=list)

    def add(self, ns: str, ev: Event) -> None:
        self.events.setdefault(ns, []).append(ev)

    def add_rel(self, ns: str, ev: RelEvent) -> None:
        self.rel_events.setdefault(ns, []).append(ev)

    @property
    def empty(self) -> bool:
        return not self.events and not self.rel_events and not self.bulk

    def event_count(self) -> int:
        return sum(len(v) for v in self.events.values()) + sum(len(v) for v in self.rel_events.values())
