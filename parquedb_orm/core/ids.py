"""Namespaces, entity ids and references.

Namespaces and ids become directory and file names in the archive, so both are held
to strict patterns here, at the edge, before anything is written.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections import OrderedDict
from functools import lru_cache

from sqids import Sqids

from parquedb_orm.errors import InvalidIdError, InvalidNamespaceError

#: A namespace: a letter, then up to 63 letters, digits, `_` or `-`.
#: No `/`, `.`, spaces or empty string: it is used verbatim as `ns=<ns>` directory.
NAMESPACE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
#: An entity id: what sqids produces with our alphabet (letters and digits), or a tracked
#: model's key that is not one non-negative int: "_" then URL-safe base64 (orm/tracked.py).
#: Neither form holds "/", "." or anything else a path could be built from.
ID_PATTERN = re.compile(r"^(?:[A-Za-z0-9]{1,64}|_[A-Za-z0-9_-]{1,127})$")
#: key ids spread over this many snapshot chunks (their numbers sit above every sqid's)
KEY_BUCKETS = 4096
_KEY_BASE = 1 << 62

SQIDS_MIN_LENGTH = 0  # padding costs two alphabet shuffles per id; short ids are fine


def check_namespace(ns: object) -> str:
    if not isinstance(ns, str) or not NAMESPACE_PATTERN.fullmatch(ns):
        raise InvalidNamespaceError(
            f"invalid namespace {ns!r}: use a letter followed by up to 63 letters, digits, "
            "'_' or '-' (no '/', '.', spaces; it becomes a directory name in the archive)"
        )
    return ns


def check_id(entity_id: object) -> str:
    if not isinstance(entity_id, str) or not ID_PATTERN.fullmatch(entity_id):
        raise InvalidIdError(f"invalid entity id {entity_id!r}: expected 1-64 letters or digits")
    return entity_id


def split_ref(ref: object) -> tuple[str, str]:
    """`"posts/abc"` -> `("posts", "abc")`, validating both parts."""
    if not isinstance(ref, str) or ref.count("/") != 1:
        raise InvalidIdError(f"invalid entity reference {ref!r}: expected 'namespace/id'")
    ns, entity_id = ref.split("/")
    try:
        check_namespace(ns)
    except InvalidNamespaceError as exc:
        raise InvalidIdError(f"invalid entity reference {ref!r}: {exc}") from None
    return ns, check_id(entity_id)


@lru_cache(maxsize=1)
def _sqids() -> Sqids:
    return Sqids(min_length=SQIDS_MIN_LENGTH)


@lru_cache(maxsize=1)
def _unchecked() -> tuple[Sqids, frozenset[str], int]:
    """sqids without its blocklist scan (~15 us per id), plus the blocklist as a set: an id
    none of whose substrings is a blocked word cannot be blocked, and only the others take
    the standard (slow) path, so ids are exactly what the standard encoder gives."""
    from sqids.constants import DEFAULT_BLOCKLIST

    words = frozenset(w.lower() for w in DEFAULT_BLOCKLIST)
    assert min(map(len, words)) >= 3
    return Sqids(min_length=SQIDS_MIN_LENGTH, blocklist=[]), frozenset(w[:3] for w in words), 3


def _maybe_blocked(entity_id: str, starts: frozenset[str], width: int) -> bool:
    """True if some blocked word could start anywhere in the id (a superset test)."""
    low = entity_id.lower()
    return any(low[i : i + width] in starts for i in range(len(low) - width + 1))


#: ids this process encoded lately -> their numbers (oldest dropped first): a flush, get or
#: update of an entity created lately decodes its id without sqids (~20 µs an id, pure Python).
#: Small on purpose, like `_decode`'s cache: entries come and go with every new id, each a few
#: small objects that outlive whatever was allocated around them, so a large cache keeps
#: CPython's 1 MiB object arenas from being freed after a flush or an import (measured at 1M
#: entities: 32k + 64k entries, 545 MiB RSS after the first flush; 4k + 4k, 487 MiB)
_RECENT: OrderedDict[str, int] = OrderedDict()  # popitem(last=False) is O(1); a dict's first key is not
_RECENT_MAX = 1 << 13
_RECENT_LOCK = threading.Lock()


def encode_id(number: int, *, remember: bool = True) -> str:
    """The sqid of a counter value. `remember=False` (create_many: an import's ids would
    only push out the ones single creates are about to flush) skips `_RECENT`."""
    fast, starts, width = _unchecked()
    entity_id: str = fast.encode([number])
    if _maybe_blocked(entity_id, starts, width):
        entity_id = _sqids().encode([number])
    if remember:
        with _RECENT_LOCK:
            if len(_RECENT) >= _RECENT_MAX:
                _RECENT.popitem(last=False)
            _RECENT[entity_id] = number
    return entity_id


def decode_id(entity_id: str) -> int | None:
    """The counter value behind an id, or None if it is not a canonical sqid of ours."""
    number = _RECENT.get(entity_id)
    return number if number is not None else _decode(entity_id)


@lru_cache(maxsize=1 << 13)
def _decode(entity_id: str) -> int | None:
    nums = _sqids().decode(entity_id)
    if len(nums) != 1 or encode_id(nums[0], remember=False) != entity_id:
        return None
    return nums[0]


def chunk_number(entity_id: str) -> int:
    """The number that places an id in its snapshot chunk (`number // chunk_size`): a
    sqid's counter value; for a key id, one of KEY_BUCKETS stable buckets above every
    sqid, 2**20 apart so no chunk size up to 2**20 puts two buckets in one chunk."""
    number = decode_id(entity_id)
    if number is not None:
        return number
    return _KEY_BASE + (zlib.crc32(entity_id.encode()) % KEY_BUCKETS << 20)
