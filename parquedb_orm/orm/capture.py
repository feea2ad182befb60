"""Tracked rows become events: from every flush (`after_flush`) and from ORM-enabled bulk
statements (`do_orm_execute`), into the session's unit, so the same COMMIT writes them.

Each changed row is compared with the store's state of its entity:
- absent before, present now: CREATE with the row's fields;
- present before and now, some field differs: UPDATE `{"$set": <every field>,
  "$was": {<changed field>: <old value>}}` (the post-image, and the changeset's old side);
- present before, gone now: DELETE `{"hard": true}`.
Foreign keys that changed become UNLINK/LINK events; many-to-many collections' added and
removed members too. The events carry the session's actor and request metadata
(`session.info["actor"]`, `session.info["parquedb_meta"]`, or `pq.acting_as`).

Bulk statements (docs/tracked.md has the row costs):
- with RETURNING (INSERT everywhere; UPDATE/DELETE on SQLite and PostgreSQL) the
  statement returns the keys and new fields itself: no extra statement;
- without it (UPDATE on MariaDB/MySQL, or a statement with its own RETURNING), one SELECT
  of the affected keys before the statement and one SELECT of their new fields after;
- bulk UPDATE by primary key (a list of parameter dicts) has the keys: one SELECT after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select, tuple_
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.attributes import get_history
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE

from parquedb_orm.core.events import CREATE, DELETE, LINK, UNLINK, UPDATE, State
from parquedb_orm.core.operators import same
from parquedb_orm.engine.store import Store
from parquedb_orm.errors import ConfigurationError, ValidationError
from parquedb_orm.orm.session import _BRIDGE_KEY, _Bridge, bind_of, bridge_of, store
from parquedb_orm.orm.tracked import LinkSpec, Spec, key_id, namespace_of, spec_for

ACTOR_KEY = "actor"
META_KEY = "parquedb_meta"


@contextlib.contextmanager
def acting_as(session: Session, actor: str | None, **meta: Any) -> Iterator[Session]:
    """Within the block, events of `session` carry `actor` and `meta` (e.g. remote_addr=...)."""
    saved = session.info.get(ACTOR_KEY), session.info.get(META_KEY)
    session.info[ACTOR_KEY] = actor
    session.info[META_KEY] = meta or None
    try:
        yield session
    finally:
        session.info[ACTOR_KEY], session.info[META_KEY] = saved


def _who(session: Session) -> tuple[str | None, Any]:
    actor = session.info.get(ACTOR_KEY)
    meta = session.info.get(META_KEY)
    if meta is not None and not isinstance(meta, dict):
        raise ValidationError(f"session.info[{META_KEY!r}] must be a dict, got {type(meta).__name__}")
    return actor, meta or None


@dataclass
class _Row:
    spec: Spec
    key: tuple[Any, ...]
    image: dict[str, Any] | None  # None: the row is gone
    added: dict[str, list[Any]] = field(default_factory=dict)  # many-to-many key -> new members
    removed: dict[str, list[Any]] = field(default_factory=dict)


def _ref_of(mapper: Any, values: tuple[Any, ...]) -> str:
    return f"{namespace_of(mapper)}/{key_id(values)}"


def _target(link: LinkSpec, state: State | dict[str, Any] | None) -> tuple[Any, ...] | None:
    if state is None:
        return None
    values = tuple(state.get(name) for name in link.fields)
    return None if any(v is None for v in values) else values


def record(session: Session, rows: list[_Row]) -> None:
    """Turn changed rows into events of the session's unit."""
    if not rows:
        return
    st = store(session)
    _same_database(session, {id(r.spec): r.spec for r in rows}.values())
    actor, meta = _who(session)
    by_ns: dict[str, list[str]] = {}
    for row in rows:
        by_ns.setdefault(row.spec.ns, []).append(key_id(row.key))
    for ns, ids in by_ns.items():
        st.prefetch(ns, ids)
    for row in rows:
        _record_row(st, row, actor, meta)


def _same_database(session: Session, specs: Iterable[Spec]) -> None:
    """A tracked table must live in the store's database: its events commit in the same
    transaction as its rows only there."""
    store_bind = bind_of(session, bridge_of(session))
    for spec in specs:
        bind = session.get_bind(mapper=spec.mapper)
        if bind is not store_bind and getattr(bind, "engine", bind) is not store_bind:
            raise ConfigurationError(
                f"{spec.cls.__name__} is bound to {bind!r}, the store to {store_bind!r}: its events could not "
                "commit atomically with its rows; keep tracked tables in the store's database"
            )


def _record_row(st: Store, row: _Row, actor: str | None, meta: Any) -> None:
    spec = row.spec
    eid = key_id(row.key)
    ref = f"{spec.ns}/{eid}"
    _version, old = st.state(spec.ns, eid)
    new = row.image
    if new is None:
        if old is None:
            return  # a row the store never saw (deleted before tracking began)
        st.append(spec.ns, eid, DELETE, {"hard": True}, actor=actor, meta=meta)
    elif old is None:
        st.append(spec.ns, eid, CREATE, dict(new), actor=actor, meta=meta)
    else:
        was = {k: old.get(k) for k, v in new.items() if k not in old or not same(old[k], v)}
        if was:
            st.append(spec.ns, eid, UPDATE, {"$set": dict(new), "$was": was}, actor=actor, meta=meta)
    for link in spec.links:
        before, after = _target(link, old), _target(link, new)
        if before == after:
            continue
        for op, values in ((UNLINK, before), (LINK, after)):
            if values is None:
                continue
            other = _ref_of(link.target, values)
            src, dst = (ref, other) if link.outbound else (other, ref)
            st.append_link(op, src, link.predicate, dst, reverse=link.reverse, actor=actor)
    for many in spec.many:
        if new is None:  # the row is gone, and its secondary rows with it
            for lk in st.links(ref, many.key):
                st.append_link(UNLINK, ref, many.key, lk["to"], reverse=None, actor=actor)
            continue
        for op, members in ((UNLINK, row.removed.get(many.key, ())), (LINK, row.added.get(many.key, ()))):
            for member in members:
                other = _ref_of(many.target, tuple(many.target.primary_key_from_instance(member)))
                st.append_link(op, ref, many.key, other, reverse=many.reverse, actor=actor)


# --------------------------------------------------------------------------- flushes


def _members(obj: object, key: str) -> tuple[list[Any], list[Any]]:
    hist = get_history(obj, key, passive=PASSIVE_NO_INITIALIZE)
    return list(hist.added or ()), list(hist.deleted or ())


def _after_flush(session: Session, _context: Any) -> None:
    if not isinstance(session.info.get(_BRIDGE_KEY), _Bridge):
        return
    rows: list[_Row] = []
    for objs, gone in ((session.new, False), (session.dirty, False), (session.deleted, True)):
        for obj in objs:
            spec = spec_for(type(obj))
            if spec is None:
                continue  # an untracked model: one dict lookup
            row = _Row(spec, spec.key_of(obj), None if gone else spec.image(obj))
            if not gone:
                for many in spec.many:
                    row.added[many.key], row.removed[many.key] = _members(obj, many.key)
            rows.append(row)
    record(session, rows)


# --------------------------------------------------------------------------- bulk statements


class _DmlResult(IteratorResult[Any]):
    """What a DML statement without RETURNING gives the app, after the store took the rows
    its added RETURNING produced: no rows, and the rowcount."""

    def __init__(self, rowcount: int) -> None:
        super().__init__(SimpleResultMetaData([]), iter([]))
        self._count = rowcount

    @property
    def rowcount(self) -> int:
        return self._count


def _key_filter(spec: Spec, keys: list[tuple[Any, ...]]) -> Any:
    if len(spec.pk_columns) == 1:
        return spec.pk_columns[0].in_([k[0] for k in keys])
    return tuple_(*spec.pk_columns).in_(keys)


def _select_images(conn: Connection, spec: Spec, keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
    out: dict[tuple[Any, ...], Any] = {}
    cols = [*spec.pk_columns, *(f.column for f in spec.fields)]
    for start in range(0, len(keys), 500):  # keep IN lists to a size every backend takes
        part = keys[start : start + 500]
        for r in conn.execute(select(*cols).where(_key_filter(spec, part))):
            out[spec.key_of_row(r)] = spec.image_of_row(r)
    return out


def _keys_from_params(spec: Spec, params: Any, what: str) -> list[tuple[Any, ...]]:
    items = params if isinstance(params, list) else [params or {}]
    keys = []
    for p in items:
        try:
            keys.append(tuple(p[k] for k in spec.pk))
        except (KeyError, TypeError):
            raise ConfigurationError(
                f"{what} on tracked {spec.cls.__name__}: this database has no RETURNING for it, so the "
                f"primary key ({', '.join(spec.pk)}) must be in every parameter set"
            ) from None
    return keys


def _do_orm_execute(state: ORMExecuteState) -> Any:
    if not (state.is_update or state.is_delete or state.is_insert):
        return None
    mapper = state.bind_mapper
    spec = spec_for(mapper.class_) if mapper is not None else None
    if spec is None or not isinstance(state.session.info.get(_BRIDGE_KEY), _Bridge):
        return None
    return _Bulk(state, spec).run()


class _Bulk:
    def __init__(self, state: ORMExecuteState, spec: Spec) -> None:
        self.state = state
        self.spec = spec
        self.session = state.session
        self.stmt: Any = state.statement
        self.many = isinstance(state.parameters, list)
        self.own_returning = bool(getattr(self.stmt, "_returning", ()))

    def _conn(self) -> Connection:
        return self.session.connection(bind_arguments={"bind": bind_of(self.session, bridge_of(self.session))})

    def _returning(self) -> Callable[[], Any] | None:
        dialect = self._conn().dialect
        if self.own_returning:
            return None
        if self.state.is_insert:
            ok = dialect.insert_executemany_returning if self.many else dialect.insert_returning
        elif self.many:
            ok = False  # bulk UPDATE/DELETE by primary key: the ORM runs executemany
        else:
            ok = dialect.update_returning if self.state.is_update else dialect.delete_returning
        return self._run_returning if ok else None

    def run(self) -> Any:
        via_returning = self._returning()
        if via_returning is not None:
            return via_returning()
        return self._run_selecting()

    def _run_returning(self) -> Any:
        spec = self.spec
        cols = spec.pk_columns if self.state.is_delete else (*spec.pk_columns, *(f.column for f in spec.fields))
        result = self.state.invoke_statement(statement=self.stmt.returning(*cols))
        got = result.all()
        rows = [_Row(spec, spec.key_of_row(r), None if self.state.is_delete else spec.image_of_row(r)) for r in got]
        record(self.session, rows)
        return _DmlResult(len(got))

    def _run_selecting(self) -> Any:
        spec, conn = self.spec, self._conn()
        if self.state.is_insert or self.many:
            what = "INSERT" if self.state.is_insert else ("UPDATE" if self.state.is_update else "DELETE")
            keys = _keys_from_params(spec, self.state.parameters, what)
        else:
            where = self.stmt.whereclause
            query = select(*spec.pk_columns)
            if where is not None:
                query = query.where(where)
            if conn.dialect.name in ("mysql", "mariadb"):
                query = query.with_for_update()  # InnoDB next-key locks: no row joins the set meanwhile
            keys = [spec.key_of_row(r) for r in conn.execute(query)]
        result = self.state.invoke_statement()
        if self.state.is_delete:
            rows = [_Row(spec, k, None) for k in keys]
        else:
            images = _select_images(conn, spec, keys) if keys else {}
            rows = [_Row(spec, k, images[k]) for k in keys if k in images]
        record(self.session, rows)
        return result


LISTENERS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("after_flush", _after_flush),
    ("do_orm_execute", _do_orm_execute),
)
