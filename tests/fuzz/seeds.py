"""The hand-written seed inputs of the corpus: `python -m tests.fuzz --write-seeds` (re)writes
them as corpus/<target>/seed-<name>.{bin,json}. Inputs found by fuzzing are saved next to
them as found-<hash> (and the failing ones listed in known.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from parquedb_orm.core import codec

from . import corpus
from .strategies import frame

_REC = [1, 1_700_000_000_000_000, "CREATE", "Uk", None, {"title": "a"}, 1]
_REL = [2, 1_700_000_000_000_001, "LINK", "Uk", "author", "users/x", "posts", "me", None]
_TYPED = [
    datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(2024, 1, 2, 3, 4, 5),
    date(2024, 2, 29),
    time(1, 2, 3),
    timedelta(days=-1, microseconds=5),
    Decimal("1.10"),
    uuid.UUID(int=1),
    b"\x00\xff",
]


def _codec() -> dict[str, bytes]:
    ok = codec.encode_batch([_REC, _REL])
    big = codec.encode_batch([_REC] * 50)  # compressed
    assert big[4] == codec.FLAG_ZSTD
    return {
        "empty": b"",
        "magic-only": b"PQB",
        "header-short": ok[:8],
        "header-only": ok[:9],
        "valid-plain": ok,
        "valid-zstd": big,
        "valid-empty-list": codec.encode_batch([]),
        "valid-typed": codec.encode_batch([_TYPED]),
        "bad-magic": b"PQX" + ok[3:],
        "bad-version": ok[:3] + b"\x02" + ok[4:],
        "bad-flags": ok[:4] + b"\x06" + ok[5:],
        "zstd-flag-plain-payload": ok[:4] + b"\x01" + ok[5:],
        "bad-crc": ok[:5] + b"\x00\x00\x00\x00" + ok[9:],
        "truncated": ok[:-3],
        "truncated-zstd": big[:-5],
        "bitflip-zstd": big[:20] + bytes([big[20] ^ 0x10]) + big[21:],
        "zstd-no-content-size": frame(b"", False)[:4]
        + b"\x01"
        + frame(b"", False)[5:9]
        + bytes.fromhex("28b52ffd0058010000"),
        "not-a-list": frame(b'{"a": 1}', False),
        "not-json": frame(b"[1, 2", False),
        "not-utf8": frame(b'["\xff\xfe"]', False),
        "huge-int": frame(b"[" + b"9" * 5000 + b"]", False),
        "nan-literal": frame(b"[NaN, Infinity]", False),
        "tag-date-bad": frame(b'[{"$date": 5}]', False),
        "tag-decimal-bad": frame(b'[{"$decimal": "x"}]', False),
        "tag-bytes-bad": frame(b'[{"$bytes": "!!"}]', False),
        "tag-interval-huge": frame(b'[{"$interval": 99999999999999999999999}]', False),
        "tag-enum-unknown": frame(b'[{"$enum": ["no.such:Enum", 1]}]', False),
        "tag-enum-not-pair": frame(b'[{"$enum": 1}]', False),
        "tag-ext-unregistered": frame(b'[{"$ext": ["nope", 1]}]', False),
        "nested-100": frame(b"[" * 100 + b"]" * 100, False),
        "nested-100-zstd": frame(b"[" * 100 + b"]" * 100, True),
    }


def _records() -> dict[str, Any]:
    return {
        "valid-event": [_REC],
        "valid-event-meta": [[*_REC, {"ip": "::1"}]],
        "valid-update": [[3, 5, "UPDATE", "Uk", "me", {"$set": {"a": 1}}, 2]],
        "valid-delete": [[3, 5, "DELETE", "Uk", None, {"hard": True}, 3]],
        "valid-restore": [[3, 5, "RESTORE", "Uk", None, None, 4]],
        "valid-rel": [_REL],
        "valid-unlink": [[2, 3, "UNLINK", "Uk", "author", "users/x", None, None, None]],
        "empty": [],
        "not-a-list-record": [{"seq": 1}],
        "string-record": ["CREATE"],
        "short": [_REC[:6]],
        "long": [[*_REC, None, None]],
        "rel-short": [_REL[:8]],
        "unknown-op": [[1, 2, "MERGE", "a", None, {}, 1]],
        "rel-op-in-event": [[1, 2, "LINK", "a", None, {}, 1]],
        "entity-op-in-rel": [[1, 2, "CREATE", "a", "p", "x/y", None, None, None]],
        "op-int": [[1, 2, 5, "a", None, {}, 1]],
        "op-null": [[1, 2, None, "a", None, {}, 1]],
        "mixed": [_REC, 5, _REL],
    }


def _records_types() -> dict[str, Any]:
    return {
        "string-seq": [["1", 2, "CREATE", "a", None, {}, 1]],
        "float-ts": [[1, 2.5, "CREATE", "a", None, {}, 1]],
        "int-id": [[1, 2, "CREATE", 5, None, {}, 1]],
        "int-actor": [[1, 2, "CREATE", "a", 7, {}, 1]],
        "data-not-object": [[1, 2, "CREATE", "a", None, "x", 1]],
        "update-data-list": [[1, 2, "UPDATE", "a", None, [1], 2]],
        "string-version": [[1, 2, "CREATE", "a", None, {}, "1"]],
        "bool-seq": [[True, 2, "CREATE", "a", None, {}, 1]],
        "rel-int-to": [[1, 2, "LINK", "a", "p", 5, None, None, None]],
        "rel-data-string": [[1, 2, "LINK", "a", "p", "x/y", None, None, "d"]],
        "rel-null-predicate": [[1, 2, "UNLINK", "a", None, "x/y", None, None, None]],
    }


def _unhashable_op() -> dict[str, Any]:
    return {
        "op-list": [[1, 2, [], "a", None, {}, 1]],
        "op-dict": [[1, 2, {}, "a", None, {}, 1]],
        "rel-op-list": [[1, 2, ["LINK"], "a", "p", "x/y", None, None, None]],
    }


_STATE = {"a": 1, "b": "x", "tags": [{"name": "t", "n": 2}, {"name": "u"}], "n": None, "d": {"e": [1, 2]}}


def _filters() -> dict[str, Any]:
    f = {
        "empty": {},
        "null": None,
        "eq": {"a": 1},
        "dotted-array": {"tags.name": "t"},
        "index": {"tags.0.n": {"$gte": 2}},
        "in": {"b": {"$in": ["x", "y"]}},
        "nin-not-list": {"b": {"$nin": "x"}},
        "and-empty": {"$and": []},
        "or": {"$or": [{"a": 1}, {"b": "y"}]},
        "nor-not-list": {"$nor": {"a": 1}},
        "not-top": {"$not": {"a": 1}},
        "not-field": {"a": {"$not": {"$gt": 0}}},
        "not-literal": {"a": {"$not": 5}},
        "unknown-op": {"a": {"$regex": "x"}},
        "unknown-top": {"$where": "1"},
        "mixed": {"a": {"$gt": 1, "b": 2}},
        "operand-op-doc": {"a": {"$eq": {"$gt": 1}}},
        "range-list": {"a": {"$gt": [1]}},
        "exists-int": {"a": {"$exists": 1}},
        "nan": {"a": float("nan")},
        "int-key": {1: 2},
        "empty-key": {"": 1},
        "dollar-segment": {"a.$b": 1},
        "double-dot": {"a..b": 1},
        "typed": {"a": {"$gt": datetime(2024, 1, 1, tzinfo=UTC)}, "b": {"$lt": Decimal("2")}},
        "deep": _nest({"a": 1}, 101),
        "deep-ok": _nest({"a": 1}, 99),
        "bad-sort": {"filter": {"a": 1}, "sort": {"a": 2}},
        "sort-typed": {"filter": {}, "sort": {"a": 1, "b": -1}},
        "not-a-dict": [1, 2],
    }
    return {k: v if isinstance(v, dict) and "filter" in v else {"filter": v, "doc": _STATE} for k, v in f.items()}


def _nest(inner: dict[str, Any], depth: int) -> dict[str, Any]:
    for _ in range(depth):
        inner = {"$not": inner}
    return inner


def _operators() -> dict[str, Any]:
    u = {
        "set": {"$set": {"a": 2, "d.e.5": 1}},
        "set-index-pad": {"$set": {"tags.10000": 1}},
        "set-index-too-far": {"$set": {"tags.10003": 1}},
        "set-in-scalar": {"$set": {"a.b": 1}},
        "set-meta": {"$set": {"version": 3}},
        "set-dollar-key": {"$set": {"a": {"$date": "x"}}},
        "unset": {"$unset": {"tags.0": ""}},
        "inc": {"$inc": {"a": 1, "z": 2.5}},
        "inc-null": {"$inc": {"n": 1}},
        "inc-string": {"$inc": {"b": 1}},
        "inc-bool": {"$inc": {"a": True}},
        "inc-decimal-float": {"$inc": {"a": Decimal("1")}, "$set": {"q": 1}},
        "mul-overflow-float": {"$mul": {"a": 1e308}, "$inc": {"z": 1e308}},
        "min-max": {"$min": {"a": 0}, "$max": {"b": "z"}},
        "min-docs": {"$min": {"d": {"e": 1}}},
        "push-each": {"$push": {"tags": {"$each": [1, 2]}}},
        "push-slice": {"$push": {"tags": {"$each": [1], "$slice": 1}}},
        "push-scalar": {"$push": {"a": 1}},
        "addtoset": {"$addToSet": {"d.e": {"$each": [1, 3]}}},
        "pull-cond": {"$pull": {"d.e": {"$gte": 2}}},
        "pull-doc": {"$pull": {"tags": {"name": "t"}}},
        "pull-bad": {"$pull": {"tags": {"$foo": 1}}},
        "rename": {"$rename": {"a": "z"}},
        "rename-same": {"$rename": {"a": "a"}},
        "rename-not-str": {"$rename": {"a": 5}},
        "rename-array": {"$rename": {"tags.0": "z"}},
        "current-date": {"$currentDate": {"c": True, "e": {"$type": "date"}}},
        "current-date-bad": {"$currentDate": {"c": 1}},
        "conflict": {"$set": {"d": 1}, "$inc": {"d.e": 1}},
        "unknown-op": {"$pop": {"tags": 1}},
        "link": {"$link": {"author": "users/x"}},
        "empty": {},
        "not-a-dict": [1],
        "fields-not-dict": {"$set": 5},
        "int-path": {"$set": {5: 1}},
        "path-101-segments": {"$set": {".".join(["a"] * 101): 1}},
        "index-newline": {"$set": {"tags.0\n": 1}},
    }
    return {k: {"update": v, "state": _STATE} for k, v in u.items()}


#: target -> name -> input; the names of inputs that fail today are in known.py
SEEDS: dict[str, dict[str, Any]] = {
    "codec": _codec(),
    "records": _records(),
    "filters": _filters(),
    "operators": _operators(),
}

#: failing inputs found by the fuzzers (kept here too, so --write-seeds rewrites them)
FOUND: dict[str, dict[str, Any]] = {
    "codec": {
        "deep-array": frame(b"[" * 1000 + b"]" * 1000, False),
        "deep-array-zstd": frame(b"[" * 1000 + b"]" * 1000, True),
        "deep-object-unclosed": frame(b'{"a":' * 3000, False),
    },
    "records": {**_records_types(), **_unhashable_op()},
    "filters": {
        "huge-index": {"filter": {"a." + "9" * 4301: 1}, "doc": {"a": [1]}},
        "huge-index-pull": {"filter": {"tags." + "1" * 4301 + ".name": "t"}, "doc": _STATE},
    },
    "operators": {
        "huge-index-set": {"update": {"$set": {"a." + "9" * 4301: 1}}, "state": {"a": [1]}},
        "huge-index-unset": {"update": {"$unset": {"a." + "9" * 4301: 1}}, "state": {"a": [1]}},
        "huge-index-pull-filter": {
            "update": {"$pull": {"a": {"b." + "9" * 4301: 1}}},
            "state": {"a": [{"b": [1]}]},
        },
        "inc-float-on-huge-int": {"update": {"$inc": {"a": 0.5}}, "state": {"a": 2**1024}},
        "mul-float-on-huge-int": {"update": {"$mul": {"a": 0.5}}, "state": {"a": 2**1024}},
        "inc-huge-int-on-float": {"update": {"$inc": {"a": 2**1024}}, "state": {"a": 0.5}},
    },
}


def write() -> list[str]:
    written = []
    for group in (SEEDS, FOUND):
        prefix = "seed" if group is SEEDS else "fail"
        for target, inputs in group.items():
            folder = corpus.CORPUS / target
            folder.mkdir(parents=True, exist_ok=True)
            for name, value in inputs.items():
                if target in corpus.BINARY_TARGETS:
                    path = folder / f"{prefix}-{name}.bin"
                    path.write_bytes(value)
                else:
                    path = folder / f"{prefix}-{name}.json"
                    path.write_text(corpus.dumps_input(value), "utf-8")
                written.append(str(path.relative_to(corpus.CORPUS)))
    return written
