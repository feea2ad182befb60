"""Entity and relationship operations, run inside one unit of work (one transaction).

`Store` is what `pq.store(session)` and `db.transaction()` hand out. Writes only append
events to the unit of work and update its provisional state; SQL is written at commit
(runtime.prepare_commit). Reads see the unit's own changes first, then committed state.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection

from parquedb_orm.archive.bulk import BULK_MIN, write_bulk
from parquedb_orm.core.codec import check_serialisable, clone
from parquedb_orm.core.events import (
    CREATE,
    DELETE,
    LINK,
    RESTORE,
    UNLINK,
    UPDATE,
    Event,
    Link,
    RelEvent,
    State,
    Versioned,
    apply_event,
    now_us,
    public,
    us_to_dt,
)
from parquedb_orm.core.filters import compile_filter, page, validate_filter, validate_sort
from parquedb_orm.core.ids import check_id, check_namespace, decode_id, encode_id, split_ref
from parquedb_orm.core.operators import LINK_OPERATORS, validate_update
from parquedb_orm.core.unit import UnitOfWork
from parquedb_orm.engine.find import find_candidates
from parquedb_orm.engine.ids import reserve_contiguous
from parquedb_orm.engine.runtime import Runtime
from parquedb_orm.errors import EntityNotFoundError, ValidationError, VersionConflictError

#: namespaces with more archived entities than this are filtered by DuckDB, not cached whole
PUSHDOWN_ABOVE = 20_000
PREDICATE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


def _check_predicate(predicate: object, what: str = "predicate") -> str:
    if not isinstance(predicate, str) or not PREDICATE_PATTERN.fullmatch(predicate):
        raise ValidationError(f"invalid {what} {predicate!r}: a letter or '_' then up to 127 of [A-Za-z0-9_.-]")
    return predicate


def _check_actor(actor: object) -> str | None:
    if actor is not None and (not isinstance(actor, str) or not actor or len(actor) > 256):
        raise ValidationError(f"actor must be a non-empty string of at most 256 characters, got {actor!r}")
    return actor


def entity_items(items: object) -> list[Any]:
    """create_many's items as a list; anything but an iterable of them is a ValidationError."""
    if isinstance(items, dict | str | bytes) or not isinstance(items, Iterable):
        raise ValidationError(f"create_many takes an iterable of entity dicts, got {type(items).__name__}")
    return list(items)


def _check_data(data: object, deep: bool = True) -> dict[str, Any]:
    """Validate entity data; `deep=False` leaves the value check to the encoder (which
    raises the same SerializationError), for bulk paths that encode every item anyway."""
    if not isinstance(data, dict):
        raise ValidationError(f"entity data must be a dict, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str) or not key:
            raise ValidationError(f"field name {key!r} must be a non-empty string")
        if "." in key:  # a path separator: find and update could never address the field
            raise ValidationError(f"field name {key!r} cannot contain '.' (dotted names are paths into nested fields)")
        if key.startswith("$") and key != "$type":
            raise ValidationError(f"field {key!r}: names starting with '$' are reserved ('$type' is allowed)")
        if key in ("version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"):
            raise ValidationError(f"field {key!r} is maintained by the store and cannot be set")
    if "$type" in data and (not isinstance(data["$type"], str) or not data["$type"]):
        raise ValidationError(f"$type must be a non-empty string, got {data['$type']!r}")
    if deep:
        for key, value in data.items():  # top-level "$type" is allowed; nested "$" keys are not
            t = type(value)
            if t is str or t is int or t is bool or value is None:
                continue  # a scalar needs no walk
            check_serialisable(value, key)
    return data


def _not_found(ns: str, entity_id: str, *, deleted: bool) -> EntityNotFoundError:
    return EntityNotFoundError(f"entity {ns}/{entity_id} does not exist" + (" (deleted)" if deleted else ""))


def _check_version(expected: object) -> int | None:
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int) or expected < 0):
        raise ValidationError(f"expected_version must be a non-negative int, got {expected!r}")
    return expected


def _refs(value: object, op: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        split_ref(item)
    return items  # type: ignore[return-value]


def _created(d: State) -> Any:
    return d["createdAt"]


def _creation(d: State) -> tuple[Any, int, str]:
    return (d["createdAt"], decode_id(d["$id"].split("/", 1)[1]) or 0, d["$id"])


class _Deferred:
    """A connection opened on first use: a cold read served by the archive and the caches
    (a single owner whose namespace's tail is loaded) needs none, and a pool checkout and
    return cost about as much as the read itself."""

    __slots__ = ("_conn", "_factory")

    def __init__(self, factory: Callable[[], Connection]) -> None:
        self._factory = factory
        self._conn: Connection | None = None

    def __getattr__(self, name: str) -> Any:
        conn = self._conn
        if conn is None:
            conn = self._conn = self._factory()
        return getattr(conn, name)


class Store:
    """Operations bound to one unit of work and a way to get its SQL connection."""

    def __init__(
        self,
        runtime: Runtime,
        uow: Callable[[], UnitOfWork],
        connection: Callable[[], Connection],
        write_uow: Callable[[], UnitOfWork] | None = None,
    ) -> None:
        self._rt = runtime
        # resolved per call: a session's unit belongs to its current transaction. Reads
        # take the unit if there is one; writes make sure there is (a session autobegins)
        self._uow_of = uow
        self._write_of = write_uow or uow
        self._connection = connection

    @property
    def _uow(self) -> UnitOfWork:
        return self._uow_of()

    @property
    def _w(self) -> UnitOfWork:
        return self._write_of()

    # ------------------------------------------------------------------ state access
    def _current(self, ns: str, entity_id: str) -> Versioned:
        key = (ns, entity_id)
        if key in self._uow.overlay:
            return self._uow.overlay[key]
        hit = self._rt.reads.cached(ns, entity_id)  # no connection for a cache hit
        if hit is not None:
            return hit
        return self._rt.reads.committed(cast(Connection, _Deferred(self._connection)), ns, entity_id)

    def _existing(self, ns: str, entity_id: str, *, allow_deleted: bool = False) -> Versioned:
        version, state = self._current(ns, entity_id)
        if state is None or ("deletedAt" in state and not allow_deleted):
            raise _not_found(ns, entity_id, deleted=state is not None)
        return version, state

    def _check_exists(self, ns: str, entity_id: str) -> None:
        """`_existing` where only existence matters (a link's endpoints): a cold entity's
        archived document is not read, only whether it is live (`Reads.presence`, which
        also answers from the entity cache)."""
        if (ns, entity_id) in self._uow.overlay:
            self._existing(ns, entity_id)
            return
        alive = self._rt.reads.presence(cast(Connection, _Deferred(self._connection)), ns, entity_id)
        if not alive:
            raise _not_found(ns, entity_id, deleted=alive is not None)

    def _record(self, ns: str, entity_id: str, base_version: int, ev: Event, state: State | None) -> None:
        key = (ns, entity_id)
        uow = self._w
        # a CREATE over a hard-deleted entity (a tracked row inserted again) has a base too
        if (ev.op != CREATE or base_version) and key not in uow.base_versions and key not in uow.overlay:
            uow.base_versions[key] = base_version
        uow.add(ns, ev)
        uow.overlay[key] = (ev.version, state)

    @staticmethod
    def _expect(ns: str, entity_id: str, expected: int | None, actual: int) -> None:
        if expected is not None and expected != actual:
            raise VersionConflictError(
                f"{ns}/{entity_id} is at version {actual}, not the expected {expected}; nothing was written",
                expected=expected,
                actual=actual,
            )

    # ------------------------------------------------------------------ entities
    def create(self, ns: str, data: dict[str, Any], *, actor: str | None = None) -> State:
        """Create an entity; returns it with its new `$id` (`ns/<sqid>`)."""
        check_namespace(ns)
        data = clone(_check_data(data))
        _check_actor(actor)
        uow = self._w
        number = self._rt.ids.allocate(self._connection, ns, 1, uow.local_ids.setdefault(ns, []), uow.reserved)[0]
        entity_id = encode_id(number)
        ev = Event(0, now_us(), CREATE, entity_id, actor, data, 1)
        state = apply_event(ns, None, ev)
        self._record(ns, entity_id, 0, ev, state)
        return public(state) or {}

    def create_many(self, ns: str, items: Iterable[dict[str, Any]], *, actor: str | None = None) -> list[State]:
        """Create several entities in this transaction; ids are reserved in one block.

        With an archive and >= 5 items the entities bypass the WAL: a Parquet file of them
        and one of their CREATE events, two manifest rows (committed with this
        transaction), instead of events in SQL."""
        check_namespace(ns)
        _check_actor(actor)
        datas = [clone(_check_data(item, deep=False)) for item in entity_items(items)]
        uow = self._w
        if self._rt.archive is not None and len(datas) >= BULK_MIN:
            block = reserve_contiguous(self._rt.ids, self._connection(), ns, len(datas), uow.reserved)
            entry, events_entry, states = write_bulk(self._rt.archive, ns, block, datas, actor)
            # both rows commit with the unit; the events twin carries no states to publish
            uow.bulk.append((entry, states))
            uow.bulk.append((events_entry, []))
            out_states = []
            for eid, state in states:
                uow.overlay[(ns, eid)] = (1, state)
                out_states.append(clone(state))
            return out_states
        for data in datas:
            for key, value in data.items():
                check_serialisable(value, key)
        numbers = self._rt.ids.allocate(
            self._connection, ns, len(datas), uow.local_ids.setdefault(ns, []), uow.reserved
        )
        ts = now_us()
        out = []
        for number, data in zip(numbers, datas, strict=True):
            ev = Event(0, ts, CREATE, encode_id(number), actor, data, 1)
            created = apply_event(ns, None, ev)
            self._record(ns, ev.id, 0, ev, created)
            out.append(public(created) or {})
        return out

    def get(
        self, ns: str, entity_id: str, *, include_deleted: bool = False, as_of: datetime | int | None = None
    ) -> State | None:
        """The entity as a dict, or None. `as_of`: a datetime or a version number."""
        check_namespace(ns)
        check_id(entity_id)
        if as_of is not None:
            return self._as_of(ns, entity_id, as_of, include_deleted)
        return public(self._current(ns, entity_id)[1], include_deleted)

    def update(
        self,
        ns: str,
        entity_id: str,
        update: dict[str, Any],
        *,
        expected_version: int | None = None,
        actor: str | None = None,
    ) -> State:
        """Apply update operators; returns the new state. `$link`/`$unlink` add relationships."""
        check_namespace(ns)
        check_id(entity_id)
        update = validate_update(update)
        _check_version(expected_version)
        _check_actor(actor)
        links = {op: update[op] for op in LINK_OPERATORS if op in update}
        for op, fields in links.items():
            for pred, refs in fields.items():
                _check_predicate(pred)
                _refs(refs, op)
        version, state = self._existing(ns, entity_id)
        self._expect(ns, entity_id, expected_version, version)
        ops = {op: fields for op, fields in update.items() if op not in LINK_OPERATORS}
        if ops:
            ev = Event(0, now_us(), UPDATE, entity_id, actor, clone(ops), version + 1)
            new = apply_event(ns, state, ev)  # raises on a type error before anything is recorded
            self._record(ns, entity_id, version, ev, new)
            state = new
        for pred, refs in links.get("$link", {}).items():
            for ref in _refs(refs, "$link"):
                self.link(f"{ns}/{entity_id}", pred, ref, actor=actor)
        for pred, refs in links.get("$unlink", {}).items():
            for ref in _refs(refs, "$unlink"):
                self.unlink(f"{ns}/{entity_id}", pred, ref, actor=actor)
        return public(state) or {}

    def delete(
        self,
        ns: str,
        entity_id: str,
        *,
        hard: bool = False,
        expected_version: int | None = None,
        actor: str | None = None,
    ) -> bool:
        """Soft-delete (default) or hard-delete an entity. False if it was already (soft-)deleted."""
        check_namespace(ns)
        check_id(entity_id)
        _check_version(expected_version)
        _check_actor(actor)
        if not isinstance(hard, bool):  # hard="false" must not hard-delete
            raise ValidationError(f"hard must be True or False, got {hard!r}")
        version, state = self._current(ns, entity_id)
        if state is None:
            raise EntityNotFoundError(f"entity {ns}/{entity_id} does not exist")
        self._expect(ns, entity_id, expected_version, version)
        if "deletedAt" in state and not hard:
            return False
        ev = Event(0, now_us(), DELETE, entity_id, actor, {"hard": bool(hard)}, version + 1)
        self._record(ns, entity_id, version, ev, apply_event(ns, state, ev))
        return True

    def restore(
        self, ns: str, entity_id: str, *, expected_version: int | None = None, actor: str | None = None
    ) -> State:
        """Undo a soft delete."""
        check_namespace(ns)
        check_id(entity_id)
        _check_version(expected_version)
        _check_actor(actor)
        version, state = self._current(ns, entity_id)
        if state is None:
            raise EntityNotFoundError(f"entity {ns}/{entity_id} does not exist")
        self._expect(ns, entity_id, expected_version, version)
        if "deletedAt" not in state:
            return public(state) or {}
        ev = Event(0, now_us(), RESTORE, entity_id, actor, None, version + 1)
        new = apply_event(ns, state, ev)
        self._record(ns, entity_id, version, ev, new)
        return public(new) or {}

    def find(
        self,
        ns: str,
        filter: dict[str, Any] | None = None,
        *,
        sort: dict[str, int] | None = None,
        limit: int | None = None,
        skip: int = 0,
        include_deleted: bool = False,
    ) -> list[State]:
        """Entities of a namespace matching a filter, sorted, paged."""
        check_namespace(ns)
        flt = validate_filter(filter)
        order = validate_sort(sort)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValidationError(f"limit must be a non-negative int, got {limit!r}")
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise ValidationError(f"skip must be a non-negative int, got {skip!r}")
        conn = self._connection()
        own = {eid: st for (ens, eid), (_v, st) in self._uow.overlay.items() if ens == ns}
        if self._rt.archive is not None and self._rt.archived.count(conn, ns) > PUSHDOWN_ABOVE:
            # a large archived namespace: one DuckDB scan (filter, sort, limit) of its files;
            # the WAL tail and this unit's own changes are folded here
            want = None if limit is None else skip + limit
            cand = find_candidates(
                self._rt, conn, ns, flt, order, want=want, include_deleted=include_deleted, exclude=own
            )
            states = {eid: v[1] for eid, v in cand.states.items()}
            for eid in cand.tail_ids:
                if eid not in own:
                    states[eid] = self._rt.reads.committed(conn, ns, eid)[1]
        else:
            # the namespace's committed states, shared with the next find (not modified)
            states = self._rt.reads.committed_states(conn, ns)
        if own:
            states = {**states, **own}
        test = compile_filter(flt)
        docs = [
            st for st in states.values() if st is not None and (include_deleted or "deletedAt" not in st) and test(st)
        ]
        # creation order first (createdAt, then the id number: ids are issued in order; then
        # the id, for key ids), so ties of an explicit sort come out the same whichever path
        # found the documents
        docs = page(docs, order, skip, limit, _creation, _created)
        return [copy.deepcopy(d) for d in docs]

    # ------------------------------------------------------------------ relationships
    def link(
        self,
        from_ref: str,
        predicate: str,
        to_ref: str,
        *,
        reverse: str | None = None,
        data: dict[str, Any] | None = None,
        actor: str | None = None,
    ) -> None:
        """Link two existing entities: (from, predicate, to), with an optional reverse name and data."""
        from_ns, from_id = split_ref(from_ref)
        to_ns, to_id = split_ref(to_ref)
        _check_predicate(predicate)
        if reverse is not None:
            _check_predicate(reverse, "reverse name")
        if data is not None:
            if not isinstance(data, dict):
                raise ValidationError(f"link data must be a dict, got {type(data).__name__}")
            check_serialisable(data, "link data")
        _check_actor(actor)
        self._check_exists(from_ns, from_id)
        self._check_exists(to_ns, to_id)
        ev = RelEvent(0, now_us(), LINK, from_id, predicate, to_ref, reverse, actor, copy.deepcopy(data))
        uow = self._w
        uow.add_rel(from_ns, ev)
        uow.links[(from_ref, predicate, to_ref)] = Link(from_ref, predicate, to_ref, reverse, ev.data, ev.ts, actor)

    def unlink(self, from_ref: str, predicate: str, to_ref: str, *, actor: str | None = None) -> None:
        """Remove a relationship (a no-op event if it does not exist)."""
        from_ns, from_id = split_ref(from_ref)
        split_ref(to_ref)
        _check_predicate(predicate)
        _check_actor(actor)
        ev = RelEvent(0, now_us(), UNLINK, from_id, predicate, to_ref, None, actor, None)
        uow = self._w
        uow.add_rel(from_ns, ev)
        uow.links[(from_ref, predicate, to_ref)] = None

    def links(self, ref: str, predicate: str | None = None, *, direction: str = "outbound") -> list[dict[str, Any]]:
        """The relationships themselves (from, predicate, to, reverse, data, createdAt, createdBy)."""
        split_ref(ref)
        if predicate is not None:
            _check_predicate(predicate)
        if direction not in ("outbound", "inbound"):
            raise ValidationError(f"direction must be 'outbound' or 'inbound', got {direction!r}")
        # committed links: a single owner's cached ref needs no connection
        found = self._rt.rels.links(self._connection, ref, direction)
        for key, link in self._uow.links.items():
            side = key[0] if direction == "outbound" else key[2]
            if side != ref:
                continue
            if link is None:
                found.pop(key, None)
            else:
                found[key] = link
        out = [
            lk
            for lk in found.values()
            if predicate is None or lk.predicate == predicate or (direction == "inbound" and lk.reverse == predicate)
        ]
        out.sort(key=lambda lk: (lk.created_at, lk.from_ref, lk.predicate, lk.to))
        return [lk.as_dict() for lk in out]

    def related(
        self,
        ref: str,
        predicate: str | None = None,
        *,
        direction: str = "outbound",
        include_deleted: bool = False,
    ) -> list[State]:
        """Entities linked from `ref` (outbound) or to it (inbound), optionally by predicate
        (inbound also matches the reverse name)."""
        out = []
        seen = set()
        for link in self.links(ref, predicate, direction=direction):
            other = link["to"] if direction == "outbound" else link["from"]
            if other in seen:
                continue
            seen.add(other)
            ns, eid = split_ref(other)
            state = public(self._current(ns, eid)[1], include_deleted)
            if state is not None:
                out.append(state)
        return out

    # ------------------------------------------------------------------ tracked rows
    # What orm/capture.py records for the application's own models: the row is already
    # validated by the database, the id is the row's key, and the event is built here.
    def state(self, ns: str, entity_id: str) -> Versioned:
        """(version, state) as this transaction sees it; state None if absent or hard-deleted."""
        return self._current(ns, entity_id)

    def prefetch(self, ns: str, ids: list[str]) -> None:
        """Read the committed state of many entities at once (one snapshot query)."""
        uow = self._uow
        todo = [eid for eid in ids if (ns, eid) not in uow.overlay]
        if todo:
            self._rt.reads.prefetch(self._connection(), ns, todo)

    def append(
        self, ns: str, entity_id: str, op: str, data: Any, *, actor: str | None = None, meta: Any = None
    ) -> State | None:
        """Record one event of a tracked row at the entity's next version; returns the new state."""
        check_namespace(ns)
        check_id(entity_id)
        _check_actor(actor)
        for key, value in (data or {}).items():  # fields, or an operator's fields ($set, $was)
            for name, item in value.items() if key.startswith("$") and isinstance(value, dict) else [(key, value)]:
                check_serialisable(item, name)
        if meta is not None:
            check_serialisable(meta, "event metadata")
        version, state = self._current(ns, entity_id)
        ev = Event(0, now_us(), op, entity_id, actor, data, version + 1, meta)
        new = apply_event(ns, state, ev)
        self._record(ns, entity_id, version, ev, new)
        return new

    def append_link(
        self, op: str, from_ref: str, predicate: str, to_ref: str, *, reverse: str | None, actor: str | None
    ) -> None:
        """A LINK/UNLINK of a tracked row's relationship: the database's foreign keys already
        hold both ends, so neither is looked up."""
        from_ns, from_id = split_ref(from_ref)
        split_ref(to_ref)
        _check_predicate(predicate)
        ev = RelEvent(0, now_us(), op, from_id, predicate, to_ref, reverse if op == LINK else None, actor, None)
        uow = self._w
        uow.add_rel(from_ns, ev)
        uow.links[(from_ref, predicate, to_ref)] = (
            Link(from_ref, predicate, to_ref, reverse, None, ev.ts, actor) if op == LINK else None
        )

    def entity_events(self, ref: str) -> list[Event]:
        """Every event of one entity, oldest first, across archive, WAL and this transaction."""
        ns, entity_id = split_ref(ref)
        return [copy.deepcopy(e) for e in self._events_of(ns, entity_id)]

    def relationship_events(self, ref: str) -> list[RelEvent]:
        """Every LINK/UNLINK made from one entity, oldest first."""
        ns, entity_id = split_ref(ref)
        return [copy.deepcopy(r) for r in self._rel_events_of(ns, entity_id)]

    # ------------------------------------------------------------------ history
    def _events_of(self, ns: str, entity_id: str) -> list[Event]:
        conn = self._connection()
        st = self._rt.tail.ensure(conn, ns)
        with self._rt.known.lock:
            tail = list(st.tail.get(entity_id))
        archived = self._rt.archived.events(conn, ns, entity_id)
        newest = max((e.seq for e in archived), default=0)
        evs = archived + [e for e in tail if e.seq > newest or e.seq == 0]
        evs += [e for e in self._uow.events.get(ns, []) if e.id == entity_id]
        return evs

    def history(self, ref: str) -> list[dict[str, Any]]:
        """Every event of an entity, oldest first: entity events and the links it made."""
        ns, entity_id = split_ref(ref)
        out = [
            {
                "seq": e.seq or None,
                "ts": us_to_dt(e.ts),
                "op": e.op,
                "$id": ref,
                "actor": e.actor,
                "data": copy.deepcopy(e.data),
                "version": e.version,
            }
            for e in self._events_of(ns, entity_id)
        ]
        rels = self._rel_events_of(ns, entity_id)
        out += [
            {
                "seq": r.seq or None,
                "ts": us_to_dt(r.ts),
                "op": r.op,
                "$id": ref,
                "actor": r.actor,
                "data": {"predicate": r.predicate, "to": r.to, "reverse": r.reverse, "data": copy.deepcopy(r.data)},
                "version": None,
            }
            for r in rels
        ]
        out.sort(key=lambda d: (d["ts"], d["op"] in (LINK, UNLINK), d["seq"] or 0))
        return out

    def _rel_events_of(self, ns: str, entity_id: str) -> list[RelEvent]:
        # the archived rows that can hold this from_id (pruned row groups) + the WAL tail
        evs = self._rt.rels.outbound_events(self._connection(), ns, entity_id)
        evs += [r for r in self._uow.rel_events.get(ns, []) if r.from_id == entity_id]
        return evs

    def _as_of(self, ns: str, entity_id: str, as_of: datetime | int, include_deleted: bool) -> State | None:
        if isinstance(as_of, bool) or not isinstance(as_of, (datetime, int)):
            raise ValidationError(f"as_of must be a datetime or a version number, got {as_of!r}")
        if isinstance(as_of, datetime) and as_of.tzinfo is None:
            raise ValidationError("as_of must be a timezone-aware datetime")
        state: State | None = None
        for ev in self._events_of(ns, entity_id):
            if isinstance(as_of, int) and ev.version > as_of:
                break
            if isinstance(as_of, datetime) and us_to_dt(ev.ts) > as_of:
                break
            state = apply_event(ns, state, ev)
        return public(state, include_deleted)
