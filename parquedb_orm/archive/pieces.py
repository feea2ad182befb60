"""Row-group pruning: which pieces (row groups) of an archive file can hold a key.

Every archive file is sorted by its key column (`number` for entities files, `id` for
events, `from_id` for rels) in row groups of `parquet.PIECE_ROWS` rows with statistics, so
a key's rows sit in one or a few row groups whose min/max cover it. `Ranges` keeps just
those min/max per row group (16 bytes each for integer keys): far smaller than the
footer. Files written before the sort are still answered correctly: their ranges
overlap, so more row groups qualify.

`IdSet`: the ids of a file as a sorted array of 64-bit hashes (8 bytes an id), for
membership tests that need no read at all. A hash collision only costs a needless read
(the rows read are checked by id); the hash is this process's `hash(str)`, never stored.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from parquedb_orm.archive import parquet

#: key column of each manifest kind
KEY_COLUMN = {"entities": "number", "bulk": "number", "events": "id", "bulk_events": "id", "rels": "from_id"}


@dataclass(frozen=True)
class Ranges:
    """Min/max of a file's key column per row group."""

    lo: array[int] | list[Any]
    hi: array[int] | list[Any]
    #: lo and hi both non-decreasing: the row groups of a key are found by bisection
    ordered: bool
    #: row groups without statistics (always candidates)
    unknown: frozenset[int]
    #: the file's `parquedb.fields` map (None: written before it existed)
    fields: dict[str, str] | None

    @classmethod
    def of(cls, metadata: Any, column: str) -> Ranges:
        """From a Parquet FileMetaData."""
        names = metadata.schema.to_arrow_schema().names
        index = names.index(column) if column in names else -1
        lo: list[Any] = []
        hi: list[Any] = []
        unknown = set()
        for g in range(metadata.num_row_groups):
            stats = metadata.row_group(g).column(index).statistics if index >= 0 else None
            if stats is None or not stats.has_min_max:
                unknown.add(g)
                lo.append(None)
                hi.append(None)
            else:
                lo.append(stats.min)
                hi.append(stats.max)
        known = [g for g in range(len(lo)) if g not in unknown]
        ordered = not unknown and all(lo[g] <= lo[g + 1] and hi[g] <= hi[g + 1] for g in range(len(lo) - 1))
        fields = parquet.fields_of(metadata)
        if known and all(isinstance(lo[g], int) for g in known):
            fill = 0
            return cls(
                array("q", [fill if v is None else v for v in lo]),
                array("q", [fill if v is None else v for v in hi]),
                ordered,
                frozenset(unknown),
                fields,
            )
        return cls(lo, hi, ordered, frozenset(unknown), fields)

    def groups(self, key: Any) -> list[int]:
        """The row groups whose min/max cover `key` (plus any without statistics)."""
        if self.ordered:
            return list(range(bisect.bisect_left(self.hi, key), bisect.bisect_right(self.lo, key)))
        return [
            g
            for g in range(len(self.lo))
            if g in self.unknown or (_comparable(self.lo[g], key) and self.lo[g] <= key <= self.hi[g])
        ]

    @property
    def nbytes(self) -> int:
        """Rough memory held (for cache budgets)."""
        per = 16 if isinstance(self.lo, array) else 120
        return 200 + per * len(self.lo)


def _comparable(a: Any, b: Any) -> bool:
    return isinstance(a, str) == isinstance(b, str)


class IdSet:
    """Membership of ids in one file, 8 bytes an id."""

    __slots__ = ("_hashes",)

    def __init__(self, ids: Iterable[str]) -> None:
        self._hashes = array("q", sorted({hash(i) for i in ids}))

    def __contains__(self, entity_id: object) -> bool:
        h = hash(entity_id)
        i = bisect.bisect_left(self._hashes, h)
        return i < len(self._hashes) and self._hashes[i] == h

    def __len__(self) -> int:
        return len(self._hashes)
