"""Reading and acting on a tracked row's history: `history`, `as_of`, `revert`.

All three read the entity's events through the session's store (archive, WAL and the
session's own uncommitted events alike), and fold them with the same `apply_event` the
store uses everywhere, so they answer the same before and after a flush.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from parquedb_orm.core import codec
from parquedb_orm.core.events import LINK, Event, RelEvent, State, apply_event, us_to_dt
from parquedb_orm.core.ids import decode_id
from parquedb_orm.errors import ValidationError
from parquedb_orm.orm.session import store
from parquedb_orm.orm.tracked import Spec, key_id, spec_of


@dataclass(frozen=True)
class Version:
    """One change of a tracked row, as `history()` lists it."""

    op: str  # CREATE, UPDATE, DELETE (the row), LINK or UNLINK (a relationship)
    version: int  # the entity's version after this change (a relationship change: the version it was at)
    actor: str | None
    at: datetime
    #: {field: (old, new)}; for LINK/UNLINK {relationship: (old ref or None, new ref or None)}
    changes: dict[str, tuple[Any, Any]]
    meta: dict[str, Any] | None
    #: the tracked fields after this change (None once the row is deleted)
    state: dict[str, Any] | None


def _resolve(target: object, pk: object) -> tuple[Spec, str]:
    spec = spec_of(target)
    if isinstance(target, type):
        if pk is None:
            raise ValidationError(f"history of {spec.cls.__name__}: pass the primary key, or an instance")
        values = pk if isinstance(pk, tuple) else (pk,)
        if len(values) != len(spec.pk):
            raise ValidationError(f"{spec.cls.__name__} has a {len(spec.pk)}-part primary key, got {pk!r}")
        return spec, f"{spec.ns}/{key_id(values)}"
    if pk is not None:
        raise ValidationError("pass either an instance or (Model, primary key), not both")
    return spec, spec.ref(target)


def key_of_id(entity_id: str) -> tuple[Any, ...]:
    """The primary key behind a tracked entity id (the inverse of `key_id`)."""
    number = decode_id(entity_id)
    if number is not None:
        return (number,)
    text = base64.urlsafe_b64decode(entity_id[1:] + "=" * (-len(entity_id[1:]) % 4))
    return tuple(codec.loads(text.decode()))


def _fields(spec: Spec, state: State | None) -> dict[str, Any] | None:
    if state is None or "deletedAt" in state:
        return None
    return {f.name: f.load(state[f.name]) for f in spec.fields if f.name in state}


def _timeline(session: Session, spec: Spec, ref: str) -> list[tuple[Event | RelEvent, int, State | None]]:
    """Every event of the entity in order, each with the version and state after it."""
    st = store(session)
    ns = ref.split("/", 1)[0]
    # entity events in version order; relationship events slot in by time
    ents = sorted(st.entity_events(ref), key=lambda e: e.version)
    rels = sorted(st.relationship_events(ref), key=lambda r: (r.seq == 0, r.seq, r.ts))
    merged: list[Event | RelEvent] = []
    ri = 0
    for ent in ents:
        while ri < len(rels) and rels[ri].ts < ent.ts:
            merged.append(rels[ri])
            ri += 1
        merged.append(ent)
    merged.extend(rels[ri:])
    out: list[tuple[Event | RelEvent, int, State | None]] = []
    state: State | None = None
    version = 0
    for ev in merged:
        if isinstance(ev, Event):
            state = apply_event(ns, state, ev)
            version = ev.version
        out.append((ev, version, state))
    return out


def history(session: Session, target: object, pk: object = None) -> list[Version]:
    """Every change of a tracked row, newest first: `history(session, order)` or
    `history(session, Order, 42)` (composite keys as a tuple)."""
    spec, ref = _resolve(target, pk)
    out: list[Version] = []
    before: dict[str, Any] | None = None
    for ev, version, state in _timeline(session, spec, ref):
        after = _fields(spec, state)
        if isinstance(ev, RelEvent):
            change = (None, ev.to) if ev.op == LINK else (ev.to, None)
            out.append(Version(ev.op, version, ev.actor, us_to_dt(ev.ts), {ev.predicate: change}, None, after))
            continue
        names = dict.fromkeys([*(before or {}), *(after or {})])
        changes = {
            k: ((before or {}).get(k), (after or {}).get(k))
            for k in names
            if (before or {}).get(k) != (after or {}).get(k) or (k in (before or {})) != (k in (after or {}))
        }
        meta = ev.meta if isinstance(ev.meta, dict) else None
        out.append(Version(ev.op, version, ev.actor, us_to_dt(ev.ts), changes, meta, after))
        before = after
    out.reverse()
    return out


def _state_at(
    session: Session, spec: Spec, ref: str, version: int | None, at: datetime | None
) -> tuple[dict[str, Any] | None, set[tuple[str, str]]]:
    """The fields and the relationship links (predicate, to) of the row as of a version or time."""
    if (version is None) == (at is None):
        raise ValidationError("pass exactly one of version= or at=")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValidationError(f"version must be a positive int, got {version!r}")
    if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
        raise ValidationError(f"at must be a timezone-aware datetime, got {at!r}")
    fields: dict[str, Any] | None = None
    links: set[tuple[str, str]] = set()
    seen = False
    for ev, ver, state in _timeline(session, spec, ref):
        if version is not None and ver > version:
            break
        if at is not None and us_to_dt(ev.ts) > at:
            break
        if isinstance(ev, RelEvent):
            (links.add if ev.op == LINK else links.discard)((ev.predicate, ev.to))
        else:
            fields = _fields(spec, state)
            seen = True
    if version is not None and not seen:
        return None, set()
    return fields, links


def as_of(session: Session, model: type, pk: object, *, version: int | None = None, at: datetime | None = None) -> Any:
    """The row as it was at `version` or time `at`: a transient instance (in no session),
    or None if the row did not exist then."""
    spec, ref = _resolve(model, pk)
    fields, _links = _state_at(session, spec, ref, version, at)
    return None if fields is None else spec.instance(fields)


def revert(session: Session, target: object, pk: object = None, *, to: int | datetime) -> Any:
    """Make the row what it was at version (or time) `to`, as a new change in `session`:
    the ORM writes it, and the commit records it like any other. History is never rewritten.
    Returns the instance (None if the row did not exist then, and is now deleted)."""
    spec, ref = _resolve(target, pk)
    version, at = (None, to) if isinstance(to, datetime) else (to, None)
    fields, links = _state_at(session, spec, ref, version, at)
    key = key_of_id(ref.split("/", 1)[1])
    obj = target if not isinstance(target, type) else session.get(spec.cls, key if len(key) > 1 else key[0])
    if fields is None:
        if obj is not None:
            session.delete(obj)
        return None
    if obj is None:
        obj = spec.mapper.class_manager.new_instance()
        session.add(obj)
    for f in spec.fields:
        if (f.name in fields and f.key not in spec.pk) or (f.name in fields and getattr(obj, f.key, None) is None):
            setattr(obj, f.key, fields[f.name])
    for link in spec.links:  # the many-to-one attribute too, or the flush would keep its stale target
        if link.outbound:
            values = tuple(fields.get(name) for name in link.fields)
            key_arg = values if len(values) > 1 else values[0]
            setattr(obj, link.predicate, None if None in values else session.get(link.target.class_, key_arg))
    for many in spec.many:
        wanted = [to_ref for pred, to_ref in links if pred == many.key]
        members = []
        for to_ref in sorted(wanted):
            member_key = key_of_id(to_ref.split("/", 1)[1])
            member = session.get(many.target.class_, member_key if len(member_key) > 1 else member_key[0])
            if member is not None:
                members.append(member)
        setattr(obj, many.key, members)
    return obj
