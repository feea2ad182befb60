"""Events and how they fold into state.

An entity event is stored in a WAL batch as the compact list
`[seq, ts_us, op, id, actor, data, version]`; a relationship event as
`[seq, ts_us, op, from_id, predicate, to_ref, reverse, actor, data]`
(filed under the namespace of the source entity). `apply_event` is the only place
that turns events into state: the live calls and every replay go through it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from parquedb_orm.core.codec import clone
from parquedb_orm.core.operators import apply_update
from parquedb_orm.errors import CorruptBatchError

CREATE, UPDATE, DELETE, RESTORE, LINK, UNLINK = "CREATE", "UPDATE", "DELETE", "RESTORE", "LINK", "UNLINK"
ENTITY_OPS = frozenset({CREATE, UPDATE, DELETE, RESTORE})
REL_OPS = frozenset({LINK, UNLINK})

State = dict[str, Any]
#: (version, state) of one entity; state None = absent (version 0) or hard-deleted
Versioned = tuple[int, State | None]


def now_us() -> int:
    return time.time_ns() // 1000  # the same clock as datetime.now(UTC), without the object


def us_to_dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def dt_to_us(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000)


@dataclass(slots=True)
class Event:
    seq: int
    ts: int  # microseconds since the epoch, UTC
    op: str
    id: str
    actor: str | None
    data: Any  # CREATE: initial fields; UPDATE: the operator document; DELETE: {"hard": bool}
    version: int  # entity version after this event
    #: request metadata stored with the event (e.g. a remote address), or None
    meta: Any = None
    #: the record's JSON as its commit wrote it to the WAL: the tail packs that text
    #: instead of encoding the event again (None: decoded from a row, or not written yet)
    text: str | None = field(default=None, compare=False, repr=False)

    def to_record(self) -> list[Any]:
        rec = [self.seq, self.ts, self.op, self.id, self.actor, self.data, self.version]
        if self.meta is not None:  # an eighth field only when there is one: older rows stay readable
            rec.append(self.meta)
        return rec

    @classmethod
    def from_record(cls, rec: Any, *, table: str, row: str) -> Event:
        why = _entity_record_fault(rec)
        if why:
            raise CorruptBatchError(
                f"corrupt event record in {table} row {row} ({why}): {rec!r:.200}", table=table, row=row
            )
        return cls(*rec)


@dataclass(slots=True)
class RelEvent:
    seq: int
    ts: int
    op: str
    from_id: str  # local id; the namespace is the WAL row's
    predicate: str
    to: str  # "ns/id"
    reverse: str | None
    actor: str | None
    data: Any

    def to_record(self) -> list[Any]:
        return [self.seq, self.ts, self.op, self.from_id, self.predicate, self.to, self.reverse, self.actor, self.data]

    @classmethod
    def from_record(cls, rec: Any, *, table: str, row: str) -> RelEvent:
        why = _rel_record_fault(rec)
        if why:
            raise CorruptBatchError(
                f"corrupt relationship record in {table} row {row} ({why}): {rec!r:.200}", table=table, row=row
            )
        return cls(*rec)


# A record can pass its batch's checksum and still be wrong (written by a bug, or by hand):
# every field is type-checked at decode, so damage is reported here, naming the row, and
# not later as an AttributeError in a fold or as a wrong answer.
def _is_int(v: Any) -> bool:
    return type(v) is int


def _opt_str(v: Any) -> bool:
    return v is None or type(v) is str


def _entity_record_fault(rec: Any) -> str | None:
    if type(rec) is not list or len(rec) not in (7, 8):
        return "not a list of 7 or 8 fields"
    seq, ts, op, eid, actor, data, version = rec[:7]
    if not (_is_int(seq) and _is_int(ts) and _is_int(version)):
        return "seq, ts and version must be integers"
    if type(op) is not str or op not in ENTITY_OPS:
        return "unknown op"
    if type(eid) is not str or not eid:
        return "id must be a non-empty string"
    if not _opt_str(actor):
        return "actor must be a string or null"
    if op in (CREATE, UPDATE) and type(data) is not dict:
        return "data must be an object"
    if op in (DELETE, RESTORE) and data is not None and type(data) is not dict:
        return "data must be an object or null"
    return None


def _rel_record_fault(rec: Any) -> str | None:
    if type(rec) is not list or len(rec) != 9:
        return "not a list of 9 fields"
    seq, ts, op, from_id, predicate, to, reverse, actor, _data = rec
    if not (_is_int(seq) and _is_int(ts)):
        return "seq and ts must be integers"
    if type(op) is not str or op not in REL_OPS:
        return "unknown op"
    if type(from_id) is not str or not from_id or type(predicate) is not str or not predicate:
        return "from_id and predicate must be non-empty strings"
    if type(to) is not str or "/" not in to:
        return "to must be a 'ns/id' string"
    if not (_opt_str(reverse) and _opt_str(actor)):
        return "reverse and actor must be strings or null"
    return None  # a link's data is any stored value


def apply_event(ns: str, state: State | None, ev: Event) -> State | None:
    """The state after `ev`; None means the entity does not exist (never created, hard-deleted)."""
    when = us_to_dt(ev.ts)
    if ev.op == CREATE:
        # shallow: the state shares the event's nested values (neither is changed in
        # place: updates fold into a clone, callers get a clone), one copy fewer a create
        data = dict(ev.data)
        entity: State = {"$id": f"{ns}/{ev.id}", "$type": data.pop("$type", ns)}
        entity.update(data)
        entity.update(version=ev.version, createdAt=when, createdBy=ev.actor, updatedAt=when, updatedBy=ev.actor)
        return entity
    if state is None:
        return None  # an event for an entity we do not have: nothing to fold into
    if ev.op == UPDATE:
        body = {k: v for k, v in state.items() if k not in _META_KEYS}
        new = apply_update(body, ev.data, when)
        out = {k: v for k, v in state.items() if k in _META_KEYS}
        out.update(new)
    elif ev.op == DELETE:
        if ev.data and ev.data.get("hard"):
            return None
        out = dict(state)
        out["deletedAt"] = when
        out["deletedBy"] = ev.actor
    else:  # RESTORE
        out = {k: v for k, v in state.items() if k not in ("deletedAt", "deletedBy")}
    out["version"] = ev.version
    out["updatedAt"] = when
    out["updatedBy"] = ev.actor
    return out


_META_KEYS = frozenset(
    {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}
)


def public(state: State | None, include_deleted: bool = False) -> State | None:
    """A copy safe to hand to callers (they may mutate it); None for deleted unless asked."""
    if state is None or ("deletedAt" in state and not include_deleted):
        return None
    return clone(state)  # type: ignore[no-any-return]


@dataclass(slots=True)
class Link:
    """The current state of one relationship."""

    from_ref: str
    predicate: str
    to: str
    reverse: str | None
    data: Any
    created_at: int
    created_by: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.from_ref,
            "predicate": self.predicate,
            "to": self.to,
            "reverse": self.reverse,
            "data": copy.deepcopy(self.data),
            "createdAt": us_to_dt(self.created_at),
            "createdBy": self.created_by,
        }


LinkKey = tuple[str, str, str]  # (from_ref, predicate, to_ref)


def apply_rel_event(links: dict[LinkKey, Link], ns: str, ev: RelEvent) -> None:
    key = (f"{ns}/{ev.from_id}", ev.predicate, ev.to)
    if ev.op == LINK:
        links[key] = Link(key[0], ev.predicate, ev.to, ev.reverse, clone(ev.data), ev.ts, ev.actor)
    else:
        links.pop(key, None)


def starts_entity(ev: Event) -> bool:
    """The event begins an entity's history (its first CREATE): the state before it is
    nothing, so no read is needed to fold it."""
    return ev.op == CREATE and ev.version == 1
