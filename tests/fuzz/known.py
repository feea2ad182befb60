"""Failures found by the fuzz targets and not fixed yet (the library is fixed elsewhere).

`FILES`: corpus files that break their target's contract today; tests/test_fuzz.py replays
them as xfail(strict=True), so each turns into a failure the day it is fixed (then delete
its line here, and the signature below once no file needs it). `SIGNATURES`: how the
bounded and the long runs recognise these same failures on other inputs, so they keep
looking for new ones instead of stopping at the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from .targets import Violation

DEEP_JSON = (
    "decode_batch: a payload (valid header and CRC) nesting JSON arrays/objects deeper than "
    "the interpreter's recursion limit escapes as RecursionError from json, not CorruptBatchError"
)
UNHASHABLE_OP = (
    "Event/RelEvent.from_record: an unhashable op field (a list or dict) raises TypeError "
    "from `rec[2] not in ENTITY_OPS`, not CorruptBatchError"
)
FIELD_TYPES = (
    "Event/RelEvent.from_record check only the length and op: a record with a string seq, "
    "an int id, non-dict data... is accepted as an event"
)
HUGE_INDEX = (
    "a numeric path segment of more than 4300 digits on an array: int() raises ValueError "
    "(integer string conversion limit) in filters._values / operators._index"
)
INT_FLOAT_OVERFLOW = (
    "$inc/$mul of a float on a stored int beyond float range (>= 2**1024): "
    "OverflowError 'int too large to convert to float' escapes from _arith"
)


@dataclass(frozen=True)
class Signature:
    targets: frozenset[str]
    exc: type[BaseException] | None  # None: a wrong result accepted (no exception)
    text: str  # a part of the violation's message
    reason: str

    def matches(self, v: Violation) -> bool:
        if v.target not in self.targets:
            return False
        if self.exc is None:
            return v.exc is None and self.text in str(v)
        return isinstance(v.exc, self.exc) and self.text in str(v)


SIGNATURES = [
    Signature(frozenset({"codec"}), RecursionError, "maximum recursion depth", DEEP_JSON),
    Signature(frozenset({"records"}), TypeError, "unhashable type", UNHASHABLE_OP),
    Signature(frozenset({"records_types"}), None, "accepted a record with", FIELD_TYPES),
    Signature(frozenset({"filters", "operators", "api"}), ValueError, "integer string conversion", HUGE_INDEX),
    Signature(frozenset({"operators", "api"}), OverflowError, "int too large to convert to float", INT_FLOAT_OVERFLOW),
]


def known(v: Violation) -> str | None:
    """The reason of a known failure `v` is an instance of, or None (a new one)."""
    return next((s.reason for s in SIGNATURES if s.matches(v)), None)


_BY_REASON = {
    DEEP_JSON: ["codec/fail-deep-array.bin", "codec/fail-deep-array-zstd.bin", "codec/fail-deep-object-unclosed.bin"],
    UNHASHABLE_OP: ["records/fail-op-list.json", "records/fail-op-dict.json", "records/fail-rel-op-list.json"],
    FIELD_TYPES: [
        "records/fail-bool-seq.json",
        "records/fail-string-seq.json",
        "records/fail-float-ts.json",
        "records/fail-int-id.json",
        "records/fail-int-actor.json",
        "records/fail-data-not-object.json",
        "records/fail-update-data-list.json",
        "records/fail-string-version.json",
        "records/fail-rel-int-to.json",
        "records/fail-rel-data-string.json",
        "records/fail-rel-null-predicate.json",
    ],
    HUGE_INDEX: [
        "filters/fail-huge-index.json",
        "filters/fail-huge-index-pull.json",
        "operators/fail-huge-index-set.json",
        "operators/fail-huge-index-unset.json",
        "operators/fail-huge-index-pull-filter.json",
    ],
    INT_FLOAT_OVERFLOW: [
        "operators/fail-inc-float-on-huge-int.json",
        "operators/fail-mul-float-on-huge-int.json",
        "operators/fail-inc-huge-int-on-float.json",
    ],
}
#: "<target>/<file name>" -> why it fails today
FILES: dict[str, str] = {name: reason for reason, names in _BY_REASON.items() for name in names}
