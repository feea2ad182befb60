"""Batch codec: a list of JSON-able records <-> bytes stored in one SQL row.

Layout: magic `PQB` | format version (1 byte) | flags (1 byte: 1 = zstd) |
CRC32 of the uncompressed payload (4 bytes, big endian) | payload.
The payload is compact JSON. zstd is skipped when it saves less than 10%.

Values beyond JSON travel as single-key tagged objects, so a decoded state equals the
live one (value and type); docs/values.md lists them:
`{"$date": iso}` (aware datetimes in UTC, naive ones as given), `{"$decimal": str}`,
`{"$uuid": str}`, `{"$day": "YYYY-MM-DD"}`, `{"$time": iso}`, `{"$interval": microseconds}`,
`{"$bytes": base64}`, `{"$enum": ["module:qualname", value]}` and
`{"$ext": [name, value]}` (types added with `register_type`). Users cannot forge a tag:
dict keys starting with `$` are refused inside stored values (`check_serialisable`).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import struct
import sys
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import zstandard

from parquedb_orm.errors import ConfigurationError, CorruptBatchError, SerializationError

MAGIC = b"PQB"
FORMAT_VERSION = 1
FLAG_ZSTD = 1
_HEADER = struct.Struct(">3sBBI")
_LEVEL = 3

_compressor = zstandard.ZstdCompressor(level=_LEVEL)
#: batches shorter than this are stored uncompressed without trying (~3 µs a commit)
_MIN_COMPRESS = 128

SUPPORTED = (
    "str, int, float, bool, None, list, tuple, dict with str keys, datetime, date, time, timedelta, "
    "Decimal, UUID, bytes, Enum members, and types added with register_type"
)

#: value, path (for messages) -> its JSON-native form
_Encoder = Callable[[Any, str], object]


def _where(path: str) -> str:
    return f"field {path!r}: " if path else ""


def _type_name(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _refuse(value: object, path: str) -> SerializationError:
    return SerializationError(
        f"{_where(path)}value of type {_type_name(type(value))} cannot be stored; supported: {SUPPORTED}"
    )


# ------------------------------------------------------------------ encoders (value -> tag)
def _enc_datetime(value: datetime, path: str) -> object:
    if value.utcoffset() is None:
        # naive: stored as given, comes back naive (the app decides what it means)
        return {"$date": datetime.isoformat(value.replace(tzinfo=None))}
    # aware: one canonical form (UTC); it comes back in UTC, the same instant
    return {"$date": datetime.isoformat(datetime.astimezone(value, UTC))}


def _enc_day(value: date, path: str) -> object:
    return {"$day": date.isoformat(value)}


def _enc_time(value: time, path: str) -> object:
    return {"$time": time.isoformat(value)}  # keeps a fixed offset when there is one


def _enc_interval(value: timedelta, path: str) -> object:
    return {"$interval": (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds}


def _enc_decimal(value: Decimal, path: str) -> object:
    if not value.is_finite():
        raise SerializationError(f"{_where(path)}Decimal {value!r} cannot be stored: NaN and infinity are refused")
    return {"$decimal": Decimal.__str__(value)}  # str keeps the exponent: "1.10" stays "1.10"


def _enc_uuid(value: uuid.UUID, path: str) -> object:
    return {"$uuid": uuid.UUID.__str__(value)}


def _enc_bytes(value: bytes | bytearray | memoryview, path: str) -> object:
    return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}


_BUILTIN_ENCODERS: dict[type, _Encoder] = {
    datetime: _enc_datetime,
    date: _enc_day,
    time: _enc_time,
    timedelta: _enc_interval,
    Decimal: _enc_decimal,
    uuid.UUID: _enc_uuid,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    memoryview: _enc_bytes,
}


# ------------------------------------------------------------------ registries
@dataclass(frozen=True, slots=True)
class _Ext:
    cls: type
    name: str
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


_EXT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_EXT_BY_NAME: dict[str, _Ext] = {}
_EXT_BY_TYPE: dict[type, _Ext] = {}
#: "module:qualname" -> enum class: filled by encoding a member and by register_enum
_ENUMS: dict[str, type[Enum]] = {}
#: type -> encoder, resolved once per type (exact type, then the MRO); reset on register_type
_RESOLVED: dict[type, _Encoder] = {}
#: types `clone` must copy (mutable, or registered custom types we know nothing about)
_COPY: set[type] = {dict, list, tuple, bytearray, memoryview}
_NOT_REGISTRABLE = (str, int, float, bool, type(None), list, tuple, dict, Enum, *_BUILTIN_ENCODERS)


def register_type(cls: type, name: str, encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> None:
    """Store instances of `cls` as `{"$ext": [name, encode(value)]}`; reading calls
    `decode(<the decoded encode(value)>)`. `encode` must return a storable value (tuples
    come back as lists). `name` is what the stored data refers to: keep it stable.
    Subclasses of `cls` use it too unless registered themselves."""
    if not isinstance(cls, type):
        raise ConfigurationError(f"register_type: {cls!r} is not a class")
    if not isinstance(name, str) or not _EXT_NAME.match(name):
        raise ConfigurationError(f"register_type: name {name!r} must match {_EXT_NAME.pattern}")
    if not callable(encode) or not callable(decode):
        raise ConfigurationError("register_type: encode and decode must be callables")
    if cls in _NOT_REGISTRABLE:
        raise ConfigurationError(f"register_type: {_type_name(cls)} is supported natively and cannot be replaced")
    old = _EXT_BY_NAME.get(name)
    if old is not None and old.cls is not cls:
        raise ConfigurationError(
            f"register_type: name {name!r} is already registered for {_type_name(old.cls)}, not {_type_name(cls)}"
        )
    ext = _Ext(cls, name, encode, decode)
    _EXT_BY_NAME[name] = ext  # a class registered again under a new name still reads the old one
    _EXT_BY_TYPE[cls] = ext
    _COPY.add(cls)
    _RESOLVED.clear()  # a subclass resolved before may now have a closer registered base


def register_enum(cls: type[Enum], *aliases: str) -> None:
    """Make `cls` resolvable when reading, before any member was written by this process
    (e.g. a class defined inside a function). `aliases`: older "module:qualname" keys the
    stored data may use (the class was moved or renamed)."""
    if not (isinstance(cls, type) and issubclass(cls, Enum)):
        raise ConfigurationError(f"register_enum: {cls!r} is not an Enum class")
    for key in (_enum_key(cls), *aliases):
        if not isinstance(key, str) or ":" not in key:
            raise ConfigurationError(f"register_enum: alias {key!r} must look like 'module:QualName'")
        _ENUMS[key] = cls


def _enum_key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _enum_encoder(cls: type[Enum]) -> _Encoder:
    key = _enum_key(cls)
    _ENUMS[key] = cls  # the latest class of that name wins (a module reloaded, a class redefined)

    def enc(value: Enum, path: str) -> object:
        return {"$enum": [key, _conv(value._value_, path, True)]}

    return enc


def _ext_encoder(ext: _Ext) -> _Encoder:
    def enc(value: object, path: str) -> object:
        try:
            raw = ext.encode(value)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"{_where(path)}register_type({ext.name!r}) encode failed: {exc!r}") from exc
        # strict: a "$" key in the payload could be read back as a tag
        return {"$ext": [ext.name, _conv(raw, path, True)]}

    return enc


def _same(value: object, path: str) -> object:
    return value


def _float_subclass(value: float, path: str) -> object:
    return _conv(float(value), path, False)


def _resolve(t: type) -> _Encoder | None:
    hit = _EXT_BY_TYPE.get(t)
    if hit is not None:
        return _ext_encoder(hit)
    enc = _BUILTIN_ENCODERS.get(t)
    if enc is not None:
        return enc
    # before the MRO walk: IntEnum/StrEnum members are also ints/strs, and must stay members
    if issubclass(t, Enum):
        return _enum_encoder(t)
    for base in t.__mro__[1:]:
        hit = _EXT_BY_TYPE.get(base)
        if hit is not None:
            return _ext_encoder(hit)
        enc = _BUILTIN_ENCODERS.get(base)
        if enc is not None:
            return enc
    if issubclass(t, dict):
        return _conv_dict_nonstrict
    if issubclass(t, (list, tuple)):
        return _conv_list_nonstrict
    if issubclass(t, float):
        return _float_subclass
    if issubclass(t, (str, int)):
        return _same  # stored as the plain str/int (the JSON encoder writes them so)
    return None


def _encoder_for(t: type) -> _Encoder | None:
    enc = _RESOLVED.get(t)
    if enc is None:
        enc = _resolve(t)
        if enc is None:
            return None
        _RESOLVED[t] = enc
        if any(b in _EXT_BY_TYPE for b in t.__mro__):
            _COPY.add(t)  # a subclass of a registered type: clone copies it like its base
    return enc


# ------------------------------------------------------------------ the walk (check + convert)
#: how deep a stored value may nest (dicts and lists); filters and update paths have the
#: same bound (core/filters.MAX_DEPTH). docs/limits.md
MAX_VALUE_DEPTH = 100


def _conv(value: Any, path: str, strict: bool) -> Any:
    """`value` in JSON-native form (tags for the other types), or `value` itself when it
    already is; raises SerializationError naming the path. `strict`: refuse `$` keys."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return value
    if t is float:
        if value - value == 0.0:  # False for NaN and infinities
            return value
        raise SerializationError(f"{_where(path)}value {value!r} cannot be stored: NaN and infinity are not JSON")
    if t is dict or t is list or t is tuple:
        # a segment is >= 1 character and a separator: only a long path can be too deep
        # (a batch's records wrap each value in a few more levels: "[0][5]...")
        limit = MAX_VALUE_DEPTH + (8 if path.startswith("[") else 0)
        if len(path) >= 2 * MAX_VALUE_DEPTH and path.count(".") + path.count("[") >= limit:
            raise SerializationError(
                f"{_where(path[:60] + '...')}value cannot be stored: nested more than {MAX_VALUE_DEPTH} levels deep"
            )
        return _conv_dict(value, path, strict) if t is dict else _conv_list(value, path, strict)
    enc = _encoder_for(t)
    if enc is None:
        raise _refuse(value, path)
    if enc is _conv_dict_nonstrict:
        return _conv_dict(value, path, strict)
    if enc is _conv_list_nonstrict:
        return _conv_list(value, path, strict)
    return enc(value, path)


def _conv_dict(value: dict[Any, Any], path: str, strict: bool) -> Any:
    out: dict[str, Any] | None = None
    for key, item in value.items():
        if not isinstance(key, str):
            raise SerializationError(f"{_where(path)}dict key {key!r} cannot be stored: keys must be strings")
        if strict and key.startswith("$"):
            raise SerializationError(
                f"{_where(path)}dict key {key!r} cannot be stored: keys starting with '$' are reserved inside values"
            )
        t = type(item)
        if t is str or t is int or t is bool or item is None or (t is float and item - item == 0.0):
            continue
        new = _conv(item, f"{path}.{key}" if path else key, strict)
        if new is not item:
            if out is None:
                out = dict(value)  # copy only when something changes (the common case copies nothing)
            out[key] = new
    return value if out is None else out


def _conv_list(value: list[Any] | tuple[Any, ...], path: str, strict: bool) -> Any:
    out: list[Any] | None = None
    for i, item in enumerate(value):
        t = type(item)
        if t is str or t is int or t is bool or item is None or (t is float and item - item == 0.0):
            continue
        new = _conv(item, f"{path}[{i}]", strict)
        if new is not item:
            if out is None:
                out = list(value)
            out[i] = new
    return value if out is None else out


def _conv_dict_nonstrict(value: Any, path: str) -> object:  # marker for dict subclasses
    return _conv_dict(value, path, False)


def _conv_list_nonstrict(value: Any, path: str) -> object:  # marker for list/tuple subclasses
    return _conv_list(value, path, False)


def _default(value: object) -> object:
    # every value went through _conv first: reaching this is a bug, never silent
    raise _refuse(value, "")


# ------------------------------------------------------------------ decoders (tag -> value)
def _str_arg(tag: str, raw: object) -> str:
    if type(raw) is not str:
        raise SerializationError(f"stored {tag} value {raw!r} is not a string")
    return raw


def _dec_decimal(raw: object) -> Decimal:
    return Decimal(_str_arg("$decimal", raw))  # construction from a string is exact, whatever the context


def _dec_uuid(raw: object) -> uuid.UUID:
    return uuid.UUID(_str_arg("$uuid", raw))


def _dec_interval(raw: object) -> timedelta:
    if type(raw) is not int:
        raise SerializationError(f"stored $interval value {raw!r} is not an integer")
    return timedelta(microseconds=raw)


def _dec_bytes(raw: object) -> bytes:
    return base64.b64decode(_str_arg("$bytes", raw), validate=True)


def _pair(tag: str, raw: object) -> tuple[str, Any]:
    if type(raw) is not list or len(raw) != 2 or type(raw[0]) is not str:
        raise SerializationError(f"stored {tag} value {raw!r} is not a [name, value] pair")
    return raw[0], raw[1]


def _enum_class(key: str) -> type[Enum] | None:
    cls = _ENUMS.get(key)
    if cls is not None:
        return cls
    module, _, qualname = key.partition(":")
    # only modules already imported: importing one named by stored data would run its code
    obj: Any = sys.modules.get(module)
    for part in qualname.split(".") if obj is not None and qualname else ():
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and issubclass(obj, Enum):
        _ENUMS[key] = obj
        return obj
    return None


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if type(value) is list else value


def _dec_enum(raw: object) -> Enum:
    key, value = _pair("$enum", raw)
    cls = _enum_class(key)
    if cls is None:
        module, _, qualname = key.partition(":")
        raise SerializationError(
            f"stored enum class {key!r} cannot be resolved: import module {module!r} before reading, "
            f"or call parquedb_orm.codec.register_enum({qualname.rsplit('.', 1)[-1]})"
        )
    try:
        return cls(value)
    except (ValueError, TypeError):
        if type(value) is list:  # tuple-valued members: tuples are stored as lists
            try:
                return cls(_tuples(value))
            except (ValueError, TypeError):
                pass
    raise SerializationError(f"stored value {value!r} is not a member of enum {key!r}")


def _dec_ext(raw: object) -> object:
    name, value = _pair("$ext", raw)
    ext = _EXT_BY_NAME.get(name)
    if ext is None:
        raise SerializationError(
            f"stored custom type {name!r} is not registered: call "
            f"parquedb_orm.core.codec.register_type(cls, {name!r}, encode, decode) before reading"
        )
    try:
        return ext.decode(value)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"register_type({name!r}) decode failed on {value!r}: {exc!r}") from exc


_DECODERS: dict[str, Callable[[Any], object]] = {
    "$date": datetime.fromisoformat,  # no wrapper: the hot tag (a non-str raises TypeError, caught by _hook)
    "$decimal": _dec_decimal,
    "$uuid": _dec_uuid,
    "$day": date.fromisoformat,
    "$time": time.fromisoformat,
    "$interval": _dec_interval,
    "$bytes": _dec_bytes,
    "$enum": _dec_enum,
    "$ext": _dec_ext,
}
#: any tag key in a text; "$type"/"$id" (in every state) and operators ("$set") are not tags
_TAG_TEXT = re.compile('"\\$(?:' + "|".join(re.escape(k[1:]) for k in _DECODERS) + ')"')


def _hook(obj: dict[str, Any]) -> Any:
    # called for every decoded object: the common multi-key case leaves at once
    if len(obj) != 1:
        return obj
    for key in obj:
        dec = _DECODERS.get(key)
        if dec is None:
            return obj
        try:
            return dec(obj[key])
        except SerializationError:
            raise
        except (ValueError, TypeError, ArithmeticError) as exc:  # binascii.Error is a ValueError
            raise SerializationError(f"stored value {obj!r} is not a valid {key}: {exc}") from None
    return obj


#: one encoder for the process: building a JSONEncoder per call costs more than encoding
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder()
#: the C encoder of `_ENCODER`'s settings, built once (JSONEncoder.encode builds one per
#: call, ~1.4 µs of a ~3 µs record) and without the cycle check: only values that
#: `_json_native` bounded in depth reach it
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # None on a pure-Python json
_NATIVE_ENCODER: Callable[[object, int], Any] | None = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(None, _default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
)
_TAGGED_DECODER = json.JSONDecoder(object_hook=_hook)


def dumps(value: object) -> str:
    """Compact JSON with the non-JSON types tagged; raises SerializationError (naming the
    path inside `value`) on anything else."""
    if _json_native(value, 0):  # nothing to tag or refuse: the C encoder alone (a commit's records)
        return "".join(_NATIVE_ENCODER(value, 0)) if _NATIVE_ENCODER is not None else _ENCODER.encode(value)
    return _encode(lambda: _conv(value, "", False))


def _json_native(value: object, depth: int) -> bool:
    """Whether `value` is JSON as it stands: dicts with str keys, lists, str, int, bool,
    None, finite floats (exact types), within the depth bound. Cheaper than the converting
    walk, which then runs only for values that need it (and raises for the bad ones)."""
    t = type(value)
    if t is dict:
        items: Any = value.values()  # type: ignore[attr-defined]
        for key in value:  # type: ignore[attr-defined]
            if type(key) is not str:
                return False
    elif t is list:
        items = value
    else:
        return t is str or t is int or t is bool or value is None or (t is float and value - value == 0.0)  # type: ignore[operator]
    if depth >= MAX_VALUE_DEPTH:
        return False
    for item in items:
        ti = type(item)
        if ti is str or ti is int or ti is bool or item is None:
            continue
        if ti is float:
            if item - item != 0.0:
                return False
            continue
        if not _json_native(item, depth + 1):
            return False
    return True


def _encode(build: Callable[[], object]) -> str:
    """Encode what `build` converts; what either raises becomes the SerializationError a
    caller can act on."""
    try:
        return _ENCODER.encode(build())
    except SerializationError:
        raise
    except RecursionError:
        raise SerializationError("value cannot be stored: nested too deeply (or it contains itself)") from None
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"value cannot be stored: {exc}") from None


def loads(text: str | bytes | bytearray | memoryview) -> Any:
    """Decode `dumps` output. SerializationError for a tag this process cannot resolve
    (an enum whose module is not imported, an unregistered custom type)."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")
    # fast path: plain JSON (most states) never pays for the object hook
    if _TAG_TEXT.search(text) is None:
        return _DECODER.decode(text)
    return _TAGGED_DECODER.decode(text)


# ------------------------------------------------------------------ plain JSON + a types sidecar
#: one typed value of a plain document: [path, tag] or, for enums and custom types,
#: [path, tag, class key or type name]; the path is a list of keys and list indexes
TypedPath = list[Any]


def plain_dumps(value: object) -> tuple[str, list[TypedPath] | None]:
    """`value` as plain JSON (no tags: datetimes as ISO-8601 text, dates 'YYYY-MM-DD',
    Decimal/UUID/time as text, timedelta as integer microseconds, bytes as base64, enum
    members and custom types as their plain value) and the paths of its typed values
    (None when it has none), which `plain_loads` re-applies: lossless, like `dumps`."""
    fast = _plain_fast(value)
    if fast is not None:
        return fast
    paths: list[TypedPath] = []
    text = _encode(lambda: _plain(value, [], paths))
    return text, paths or None


def _plain_fast(value: object) -> tuple[str, list[TypedPath] | None] | None:
    """`plain_dumps` of the common shapes without the typed walk: a JSON-native value, or a
    state (a dict whose only typed values are the store's own UTC timestamps at the top
    level). None: anything else, left to the walk (which converts or refuses it)."""
    if _NATIVE_ENCODER is None:
        return None
    if type(value) is not dict:
        return ("".join(_NATIVE_ENCODER(value, 0)), None) if _json_native(value, 0) else None
    out: dict[str, Any] | None = None
    paths: list[TypedPath] = []
    for key, item in value.items():
        if type(key) is not str:
            return None
        t = type(item)
        if t is str or t is int or t is bool or item is None:
            continue
        if t is datetime and item.tzinfo is UTC:
            if out is None:
                out = dict(value)
            out[key] = datetime.isoformat(item)
            paths.append([[key], "$date"])
            continue
        if not _json_native(item, 1):
            return None
    return "".join(_NATIVE_ENCODER(value if out is None else out, 0)), paths or None


def untag(text: str) -> tuple[str, list[TypedPath] | None]:
    """`dumps` output as (plain JSON, typed paths or None). Text without a tag is already
    plain and is returned as it is (the fast path: no walk)."""
    if _TAG_TEXT.search(text) is None:
        return text, None
    paths: list[TypedPath] = []
    out = _untag(_DECODER.decode(text), [], paths)
    if not paths:
        return text, None
    return _ENCODER.encode(out), paths


def _plain(value: Any, path: list[Any], paths: list[TypedPath]) -> Any:
    """`_conv` (non-strict) giving each typed value's plain form and recording its path and
    tag in `paths`: one walk, `path` a stack of the keys above `value`."""
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return value
    if t is dict or t is list or t is tuple:
        return _plain_container(value, path, paths)
    if t is datetime:  # every state holds a few (createdAt, updatedAt): tagged and untagged at once
        paths.append([list(path), "$date"])
        if value.tzinfo is UTC:  # the store's own timestamps: already the canonical form
            return datetime.isoformat(value)
        tagged: Any = _enc_datetime(value, "")
        return tagged["$date"]
    enc = _encoder_for(t)
    if enc is _conv_dict_nonstrict or enc is _conv_list_nonstrict:
        return _plain_container(value, path, paths)
    # floats (finite check), typed values, refusals: as dumps does them, then untagged
    return _untag(_conv(value, ".".join(map(str, path)), False), path, paths)


def _plain_container(value: Any, path: list[Any], paths: list[TypedPath]) -> Any:
    if len(path) > MAX_VALUE_DEPTH + 8:  # as _conv: a state's fields sit a level or two down
        raise SerializationError(
            f"{_where('.'.join(map(str, path[:20])) + '...')}value cannot be stored: "
            f"nested more than {MAX_VALUE_DEPTH} levels deep"
        )
    if isinstance(value, dict):
        out: dict[str, Any] | None = None
        for key, item in value.items():
            t = type(item)
            scalar = t is str or t is int or t is bool or item is None or (t is float and item - item == 0.0)
            if scalar and type(key) is str:
                continue
            if not isinstance(key, str):
                where = _where(".".join(map(str, path)))
                raise SerializationError(f"{where}dict key {key!r} cannot be stored: keys must be strings")
            path.append(key)
            new = _plain(item, path, paths)
            path.pop()
            if new is not item:
                if out is None:
                    out = dict(value)  # copy only when something changes
                out[key] = new
        return value if out is None else out
    items: list[Any] | None = None
    for i, item in enumerate(value):
        t = type(item)
        if t is str or t is int or t is bool or item is None or (t is float and item - item == 0.0):
            continue
        path.append(i)
        new = _plain(item, path, paths)
        path.pop()
        if new is not item:
            if items is None:
                items = list(value)
            items[i] = new
    return value if items is None else items


def _untag(value: Any, path: list[Any], paths: list[TypedPath]) -> Any:
    t = type(value)
    if t is dict:
        if len(value) == 1:
            for key, raw in value.items():
                if key in _DECODERS:
                    if key in ("$enum", "$ext"):
                        # [name, value]: the value may hold tags itself, restored first
                        inner = _untag(raw[1], path, paths)
                        paths.append([list(path), key, raw[0]])
                        return inner
                    paths.append([list(path), key])
                    return raw
        out: dict[str, Any] | None = None
        for k, v in value.items():
            tv = type(v)
            if tv is dict or tv is list:  # scalars hold no tag: skipped without a call
                new = _untag(v, [*path, k], paths)
                if new is not v:
                    if out is None:
                        out = dict(value)  # copied only when a tag inside changes it
                    out[k] = new
        return value if out is None else out
    if t is list:
        items: list[Any] | None = None
        for i, v in enumerate(value):
            tv = type(v)
            if tv is dict or tv is list:
                new = _untag(v, [*path, i], paths)
                if new is not v:
                    if items is None:
                        items = list(value)
                    items[i] = new
        return value if items is None else items
    return value


def plain_loads(text: str | bytes | bytearray | memoryview, paths: list[TypedPath] | None) -> Any:
    """Decode `plain_dumps` output: the JSON, then each typed path's value restored (in
    the order given: an enum's own typed parts come before it)."""
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")
    value = _DECODER.decode(text)
    if not paths:
        return value
    for entry in paths:
        if type(entry) is not list or len(entry) < 2 or type(entry[0]) is not list:
            raise SerializationError(f"stored type entry {entry!r} is not [path, tag(, name)]")
        path, tag = entry[0], entry[1]
        tagged = {tag: [entry[2], None] if tag in ("$enum", "$ext") else None}
        try:
            if not path:
                tagged[tag] = _retag(tagged[tag], value)
                value = _hook(tagged)
                continue
            parent = value
            for step in path[:-1]:
                parent = parent[step]
            tagged[tag] = _retag(tagged[tag], parent[path[-1]])
            parent[path[-1]] = _hook(tagged)
        except (KeyError, IndexError, TypeError) as exc:
            raise SerializationError(f"stored type entry {entry!r} does not match its document: {exc!r}") from None
    return value


def _retag(slot: Any, raw: Any) -> Any:
    if type(slot) is list:
        slot[1] = raw
        return slot
    return raw


def clone(value: Any) -> Any:
    """Deep copy of stored data (dicts, lists; datetimes, Decimals, UUIDs, enum members...
    are immutable and shared): ~10x faster than copy.deepcopy, which matters on the
    cached-read path. bytearray/memoryview become bytes and tuples lists, as they come
    back from storage; registered custom types are deep-copied (they may be mutable)."""
    t = type(value)
    if t is dict:
        return {k: clone(v) if type(v) in _COPY else v for k, v in value.items()}
    if t is list or t is tuple:
        return [clone(v) if type(v) in _COPY else v for v in value]
    if t is bytearray or t is memoryview:
        return bytes(value)
    if t in _COPY or isinstance(value, (dict, list)):
        return copy.deepcopy(value)
    return value


def check_serialisable(value: object, field: str | None = None) -> None:
    """Validate a user value early, so a bad one fails the call and not the commit; it
    accepts exactly what `dumps` accepts. `field` (the field name or path the value is
    stored under) is named in the message.

    Keys starting with `$` are reserved inside stored values (`{"$date": ...}` is how a
    datetime is stored; a user dict of that shape would come back as something else)."""
    try:
        _conv(value, field or "", True)
    except RecursionError:
        raise SerializationError(
            f"{_where(field or '')}value cannot be stored: nested too deeply (or it contains itself)"
        ) from None


def encode_batch(records: list[Any]) -> bytes:
    return encode_json(dumps(records))


def encode_json(text: str) -> bytes:
    """Frame JSON text that is already a list of records (callers that hold encoded parts)."""
    raw = text.encode("utf-8")
    crc = zlib.crc32(raw)
    if len(raw) < _MIN_COMPRESS:  # a single small event: zstd's frame eats what it saves
        return _HEADER.pack(MAGIC, FORMAT_VERSION, 0, crc) + raw
    packed = _compressor.compress(raw)
    if len(packed) <= 0.9 * len(raw):
        return _HEADER.pack(MAGIC, FORMAT_VERSION, FLAG_ZSTD, crc) + packed
    return _HEADER.pack(MAGIC, FORMAT_VERSION, 0, crc) + raw


def decode_batch(blob: bytes, *, table: str, row: str) -> list[Any]:
    """Decode a stored batch; any damage raises CorruptBatchError naming table and row (a
    tag this process cannot resolve raises SerializationError: the data is fine)."""

    def corrupt(why: str) -> CorruptBatchError:
        return CorruptBatchError(f"corrupt batch in {table} row {row}: {why}", table=table, row=row)

    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise corrupt(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _HEADER.size:
        raise corrupt(f"{len(blob)} bytes is shorter than the header")
    magic, version, flags, crc = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise corrupt("bad magic bytes")
    if version != FORMAT_VERSION:
        raise corrupt(f"unknown format version {version} (this library reads {FORMAT_VERSION})")
    payload = blob[_HEADER.size :]
    if flags & FLAG_ZSTD:
        try:
            payload = zstandard.ZstdDecompressor().decompress(payload)
        except zstandard.ZstdError as exc:
            raise corrupt(f"zstd: {exc}") from None
    elif flags:
        raise corrupt(f"unknown flags {flags:#x}")
    if zlib.crc32(payload) != crc:
        raise corrupt("checksum mismatch")
    try:
        records = loads(payload)
    except SerializationError:
        raise  # SerializationError is a ValueError, but this is not damage
    except ValueError as exc:
        raise corrupt(f"payload is not JSON: {exc}") from None
    except RecursionError:  # our writers nest at most MAX_VALUE_DEPTH levels
        raise corrupt("payload nests too deeply") from None
    if not isinstance(records, list):
        raise corrupt("payload is not a list of records")
    return records
