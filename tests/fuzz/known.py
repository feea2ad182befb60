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


#: none today: the five classes the targets found (a payload nested past the recursion
#: limit, an unhashable op, wrong field types in a record, a 4,301-digit index segment, an
#: int beyond float range in $inc/$mul) are fixed in the library, and their inputs stay in
#: the corpus as ordinary regression cases (files named fail-*)
SIGNATURES: list[Signature] = []


def known(v: Violation) -> str | None:
    """The reason of a known failure `v` is an instance of, or None (a new one)."""
    return next((s.reason for s in SIGNATURES if s.matches(v)), None)


_BY_REASON: dict[str, list[str]] = {}
#: "<target>/<file name>" -> why it fails today
FILES: dict[str, str] = {name: reason for reason, names in _BY_REASON.items() for name in names}
