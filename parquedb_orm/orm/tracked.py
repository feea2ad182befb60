"""Tracked models: which of the application's classes become events, and as what.

A class is tracked by the `Tracked` mixin or by `track(cls)`. Its `Spec` (built once, on
first use, when the mappers are configured) says:
- the namespace: the table name, or the declared `namespace`;
- the entity id: the row's primary key. One non-negative int is encoded as the sqid of
  that number (so snapshot chunks group neighbouring keys); any other key (strings,
  UUIDs, composite keys) as "_" + URL-safe base64 of its JSON. No extra column;
- the fields: every mapped column but the excluded ones, stored under their attribute
  names (or a `rename`d name where one collides with the store's own keys);
- the relationships that become LINK/UNLINK events: many-to-one foreign keys,
  one-to-many ones declared only on the parent, and many-to-many secondary tables.
"""

from __future__ import annotations

import base64
import enum
import sys
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, overload

from sqlalchemy import Column, inspect
from sqlalchemy.orm import Mapper, RelationshipDirection
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.types import Enum as EnumType

from parquedb_orm.core import codec
from parquedb_orm.core.ids import NAMESPACE_PATTERN, encode_id
from parquedb_orm.errors import ConfigurationError, ValidationError

T = TypeVar("T", bound=type)

#: names the store keeps on every entity: a column of that name needs `rename`
RESERVED = frozenset({"version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"})
_MAX_KEY_JSON = 95  # "_" + base64 of 95 bytes = 128 characters, the id limit


class Tracked:
    """Mixin: `class Order(pq.Tracked, Base)`. Every insert, update and delete of the model
    in a session of an enabled sessionmaker becomes an event, committed with the row.

    Class attributes (all optional): `__pq_namespace__` (default: the table name),
    `__pq_exclude__` (attribute names left out of the events), `__pq_rename__`
    ({attribute: stored name}, for a column named like one of the store's own keys)."""

    __pq_namespace__: ClassVar[str | None] = None
    __pq_exclude__: ClassVar[Iterable[str]] = ()
    __pq_rename__: ClassVar[dict[str, str]] = {}


@dataclass(frozen=True)
class _Options:
    namespace: str | None
    exclude: frozenset[str]
    rename: dict[str, str]


# classes -> options given to track(); weak, so classes made by tests do not pile up
_tracked: weakref.WeakKeyDictionary[type, _Options] = weakref.WeakKeyDictionary()
_specs: weakref.WeakKeyDictionary[type, Spec | None] = weakref.WeakKeyDictionary()


@overload
def track(
    cls: T, *, namespace: str | None = None, exclude: Iterable[str] = (), rename: dict[str, str] | None = None
) -> T: ...
@overload
def track(
    cls: None = None, *, namespace: str | None = None, exclude: Iterable[str] = (), rename: dict[str, str] | None = None
) -> Callable[[T], T]: ...
def track(
    cls: T | None = None,
    *,
    namespace: str | None = None,
    exclude: Iterable[str] = (),
    rename: dict[str, str] | None = None,
) -> T | Callable[[T], T]:
    """Track a mapped class without the mixin: `pq.track(Order)` or `@pq.track(exclude=["secret"])`."""

    def apply(target: T) -> T:
        if not isinstance(target, type):
            raise ConfigurationError(f"track() takes a mapped class, got {type(target).__name__}")
        if isinstance(exclude, str):
            raise ConfigurationError("track(exclude=...) takes a list of attribute names, not one string")
        _tracked[target] = _Options(namespace, frozenset(exclude), dict(rename or {}))
        _specs.clear()
        return target

    return apply if cls is None else apply(cls)


def untrack(cls: type) -> None:
    """Stop tracking a class given to `track()` (its history stays)."""
    _tracked.pop(cls, None)
    _specs.clear()


def _options(cls: type) -> _Options | None:
    for klass in cls.__mro__:
        found = _tracked.get(klass)
        if found is not None:
            return found
    if issubclass(cls, Tracked):
        return _Options(cls.__pq_namespace__, frozenset(cls.__pq_exclude__), dict(cls.__pq_rename__))
    return None


def spec_for(cls: type) -> Spec | None:
    """The spec of a tracked class, None for any other (one dict lookup once cached)."""
    try:
        return _specs[cls]
    except KeyError:
        pass
    opts = _options(cls)
    spec = None if opts is None else _build(cls, opts)
    _specs[cls] = spec
    return spec


def spec_of(target: object) -> Spec:
    """The spec of a tracked class or instance; ConfigurationError for anything else."""
    cls = target if isinstance(target, type) else type(target)
    spec = spec_for(cls)
    if spec is None:
        raise ConfigurationError(
            f"{cls.__name__} is not tracked: add pq.Tracked to its bases or call pq.track({cls.__name__})"
        )
    return spec


# --------------------------------------------------------------------------- keys


def key_id(values: tuple[Any, ...]) -> str:
    """The entity id of a primary key (see the module docstring)."""
    if len(values) == 1 and type(values[0]) is int and 0 <= values[0] <= sys.maxsize:
        return encode_id(values[0])
    if any(v is None for v in values):
        raise ValidationError(f"primary key {values!r} has no value yet (flush the session first)")
    text = codec.dumps(list(values)).encode()
    if len(text) > _MAX_KEY_JSON:
        raise ValidationError(
            f"primary key {values!r} is too long to track ({len(text)} bytes of JSON, at most {_MAX_KEY_JSON})"
        )
    return "_" + base64.urlsafe_b64encode(text).decode().rstrip("=")


def namespace_of(mapper: Mapper[Any]) -> str:
    """A mapped class's namespace: its spec's, or for an untracked class its table name."""
    spec = spec_for(mapper.class_)
    if spec is not None:
        return spec.ns
    name = getattr(mapper.local_table, "name", None)
    if not isinstance(name, str) or not NAMESPACE_PATTERN.fullmatch(name):
        raise ConfigurationError(
            f"{mapper.class_.__name__}: table name {name!r} cannot be a namespace (a letter, then up to 63 "
            "letters, digits, '_' or '-'); track it with pq.track(cls, namespace=...)"
        )
    return name


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class FieldSpec:
    key: str  # the attribute
    name: str  # the stored field name
    column: Column[Any]
    enum_class: type[enum.Enum] | None  # stored by member name, rebuilt on the way back

    def store(self, value: Any) -> Any:
        if self.enum_class is not None and isinstance(value, enum.Enum):
            return value.name
        return value

    def load(self, value: Any) -> Any:
        if self.enum_class is not None and isinstance(value, str):
            return self.enum_class[value]
        return value


@dataclass(frozen=True)
class LinkSpec:
    """A foreign key that makes a relationship: the target's key is `fields` of this row."""

    predicate: str
    reverse: str | None
    fields: tuple[str, ...]  # stored field names, in the order of the target's primary key
    target: Mapper[Any]
    #: True: a link from this row to the target (many-to-one); False: from the target to
    #: this row (a one-to-many relationship declared only on the parent)
    outbound: bool


@dataclass(frozen=True)
class ManySpec:
    """A many-to-many relationship through a secondary table, recorded from this side."""

    key: str
    reverse: str | None
    target: Mapper[Any]


@dataclass
class Spec:
    cls: type
    mapper: Mapper[Any]
    ns: str
    pk: tuple[str, ...]  # attribute keys of the primary key, in mapper order
    pk_columns: tuple[Any, ...]  # the primary key's Columns
    fields: tuple[FieldSpec, ...]
    links: list[LinkSpec] = field(default_factory=list)
    many: list[ManySpec] = field(default_factory=list)

    def key_of(self, obj: object) -> tuple[Any, ...]:
        state = inspect(obj)
        ident = state.identity
        if ident is not None:
            return tuple(ident)
        return tuple(self.mapper.primary_key_from_instance(obj))

    def id_of(self, obj: object) -> str:
        return key_id(self.key_of(obj))

    def ref(self, obj: object) -> str:
        return f"{self.ns}/{self.id_of(obj)}"

    def image(self, obj: object) -> dict[str, Any]:
        """The tracked fields of an instance (loads expired attributes)."""
        return {f.name: f.store(getattr(obj, f.key)) for f in self.fields}

    def image_of_row(self, row: Any) -> dict[str, Any]:
        """The tracked fields of a result row holding `self.fields`' columns by key."""
        mapping = row._mapping
        return {f.name: f.store(mapping[f.column]) for f in self.fields}

    def key_of_row(self, row: Any) -> tuple[Any, ...]:
        mapping = row._mapping
        return tuple(mapping[c] for c in self.pk_columns)

    def instance(self, state: dict[str, Any]) -> Any:
        """A transient instance holding a stored state's fields (not added to any session)."""
        obj = self.mapper.class_manager.new_instance()
        for f in self.fields:
            if f.name in state:
                set_committed_value(obj, f.key, f.load(state[f.name]))
        return obj


def _build(cls: type, opts: _Options) -> Spec:
    try:
        mapper: Mapper[Any] = inspect(cls)
    except Exception:
        raise ConfigurationError(f"{cls.__name__} is tracked but not a mapped class") from None
    ns = opts.namespace or getattr(mapper.local_table, "name", None)
    if not isinstance(ns, str) or not NAMESPACE_PATTERN.fullmatch(ns):
        raise ConfigurationError(
            f"{cls.__name__}: {ns!r} cannot be a namespace (a letter, then up to 63 letters, digits, '_' or '-'); "
            "declare one: __pq_namespace__ = '...' or pq.track(cls, namespace='...')"
        )
    unknown = (opts.exclude | set(opts.rename)) - {p.key for p in mapper.column_attrs}
    if unknown:
        raise ConfigurationError(f"{cls.__name__}: exclude/rename name no mapped column: {sorted(unknown)}")
    pk_props = [mapper.get_property_by_column(c) for c in mapper.primary_key]
    fields: list[FieldSpec] = []
    for prop in mapper.column_attrs:
        if prop.key in opts.exclude and prop not in pk_props:
            continue
        if len(prop.columns) != 1 or not isinstance(prop.columns[0], Column):
            continue  # column_property() expressions are not stored columns
        name = opts.rename.get(prop.key, prop.key)
        if name in RESERVED or name.startswith("$") or not name:
            raise ConfigurationError(
                f"{cls.__name__}.{prop.key}: the store keeps {name!r} itself; "
                f"rename it: __pq_rename__ = {{{prop.key!r}: 'row_{name}'}} (or exclude it)"
            )
        column = prop.columns[0]
        enum_class = column.type.enum_class if isinstance(column.type, EnumType) else None
        fields.append(FieldSpec(prop.key, name, column, enum_class))
    spec = Spec(
        cls,
        mapper,
        ns,
        tuple(p.key for p in pk_props),
        tuple(mapper.primary_key),
        tuple(fields),
    )
    _relationships(spec)
    return spec


def _reverse_key(rel: Any) -> str | None:
    reverse = getattr(rel, "_reverse_property", ())
    return next((r.key for r in reverse), None)


def _field_of_column(spec: Spec, column: Any) -> str | None:
    for f in spec.fields:
        if f.column is column:
            return f.name
    return None


def _relationships(spec: Spec) -> None:
    mapper = spec.mapper
    for rel in mapper.relationships:
        if rel.direction is RelationshipDirection.MANYTOONE and rel.secondary is None:
            local = {remote: loc for loc, remote in rel.local_remote_pairs or ()}
            target_pk = list(rel.mapper.primary_key)
            if set(local) != set(target_pk):
                continue  # a foreign key to a non-key column: no id to link to without a query
            names = [_field_of_column(spec, local[c]) for c in target_pk]
            if all(n is not None for n in names):
                spec.links.append(LinkSpec(rel.key, _reverse_key(rel), tuple(n for n in names if n), rel.mapper, True))
        elif rel.direction is RelationshipDirection.MANYTOMANY and rel.secondary is not None:
            reverse = _reverse_key(rel)
            # a pair declared on both sides is recorded once, from the side that sorts first
            if reverse is not None and _options(rel.mapper.class_) is not None:
                mine = (mapper.class_.__name__, rel.key)
                theirs = (rel.mapper.class_.__name__, reverse)
                if theirs < mine:
                    continue
            spec.many.append(ManySpec(rel.key, reverse, rel.mapper))
    # one-to-many relationships declared only on a parent: this row's foreign key says it
    for other in mapper.registry.mappers:
        for rel in other.relationships:
            if rel.direction is not RelationshipDirection.ONETOMANY or rel.mapper is not mapper:
                continue
            if any(r.direction is RelationshipDirection.MANYTOONE for r in getattr(rel, "_reverse_property", ())):
                continue  # the child's many-to-one records it
            remote = {loc: rem for loc, rem in rel.local_remote_pairs or ()}
            parent_pk = list(other.primary_key)
            if set(remote) != set(parent_pk):
                continue
            names = [_field_of_column(spec, remote[c]) for c in parent_pk]
            if all(n is not None for n in names):
                spec.links.append(LinkSpec(rel.key, None, tuple(n for n in names if n), other, False))


def ref(obj: object) -> str:
    """The store reference ("namespace/id") of a tracked instance: for `related()`, `links()`."""
    return spec_of(obj).ref(obj)
