"""The id pool: reserved-but-unissued id numbers of each namespace, committed (process-wide).

Blocks come from the `id:<ns>` counters (sql/counters.py). A block is committed before
any of its ids is handed out, except on SQLite inside a transaction that already holds the
write lock (a second connection would wait on it): there the block is reserved inside the
caller's transaction and belongs to it alone. If that transaction (or the savepoint that
reserved it) rolls back, the block is gone but its ids may have been shown: every later
reservation of this process starts above the highest id it ever issued (`floor`), and the
session extension raises the stored counter to that floor.

Blocks start at 100 ids and double while a namespace keeps using them up (up to 1,000),
so a busy writer reserves rarely and a restart burns few ids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from parquedb_orm.sql import dialects
from parquedb_orm.sql.counters import DEFAULT_BLOCK, id_key, reserve, reserve_autonomous

#: the largest id block a busy namespace grows to (see IdBlocks._sizes)
MAX_BLOCK = 1_000
#: blocks reserved within this many seconds of each other double
BUSY_SECONDS = 2.0


@dataclass
class IdBlocks:
    """Reserved-but-unissued id numbers of each namespace, committed (process-wide)."""

    engine: Engine
    block: int = DEFAULT_BLOCK
    _free: dict[str, list[range]] = field(default_factory=dict)
    #: highest number handed out per namespace: a block reserved inside a transaction that
    #: later rolled back is reserved again above it, so a shown id is never shown twice
    _issued: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: per namespace: (size of its last block, when it was reserved): a namespace whose
    #: blocks run out within BUSY_SECONDS of each other gets blocks twice as large, up to
    #: MAX_BLOCK (a reservation is a transaction of its own, ~1-2 ms on SQLite: 10-20 µs a
    #: create at blocks of 100); an idle one starts again at `block`, so a restart burns
    #: at most MAX_BLOCK unissued ids of a namespace
    _sizes: dict[str, tuple[int, float]] = field(default_factory=dict)

    def namespaces(self) -> set[str]:
        """Namespaces this process reserved ids for (their `id:` counter rows exist)."""
        with self._lock:
            return set(self._issued) | set(self._free)

    def take(self, ns: str, count: int) -> list[int] | None:
        """Up to `count` numbers from the committed pool, or None if it is empty."""
        with self._lock:
            ranges = self._free.get(ns)
            if not ranges:
                return None
            out: list[int] = []
            while ranges and len(out) < count:
                r = ranges[0]
                n = min(count - len(out), len(r))
                out.extend(r[:n])
                if n == len(r):
                    ranges.pop(0)
                else:
                    ranges[0] = r[n:]
            return out

    def give(self, ns: str, numbers: range) -> None:
        if len(numbers):
            with self._lock:
                self._free.setdefault(ns, []).append(numbers)

    def floor(self, ns: str) -> int:
        """The highest id number this process ever handed out in `ns`."""
        with self._lock:
            return self._issued.get(ns, 0)

    def issued(self, ns: str, number: int) -> None:
        """Record that `number` was handed out (ids at or below it are never reserved again)."""
        with self._lock:
            self._issued[ns] = max(self._issued.get(ns, 0), number)

    def allocate(
        self,
        connection: Callable[[], Connection] | None,
        ns: str,
        count: int,
        local: list[range],
        reserved: list[tuple[str, range]] | None = None,
    ) -> list[int]:
        """`count` fresh id numbers for namespace `ns`.

        `connection` gives the caller's connection (called only when a block is needed);
        when it is a SQLite connection already holding the write lock, a second
        connection would wait on ourselves, so the block is reserved inside it and kept
        in `local` (the unit of work's) instead, and logged in `reserved`.
        """
        if count == 1:  # the single create: one number from the pool, under one lock
            with self._lock:
                ranges = self._free.get(ns)
                if ranges:
                    r = ranges[0]
                    number = r[0]
                    if len(r) == 1:
                        ranges.pop(0)
                    else:
                        ranges[0] = r[1:]
                    if number > self._issued.get(ns, 0):
                        self._issued[ns] = number
                    return [number]
        out = self.take(ns, count) or []
        while len(out) < count:
            while local and len(out) < count:
                r = local[0]
                n = min(count - len(out), len(r))
                out.extend(r[:n])
                local[0] = r[n:]
                if not len(local[0]):
                    local.pop(0)
            if len(out) == count:
                break
            want = max(self._block_size(ns), count - len(out))
            conn = connection() if connection is not None else None
            got, inside = self.reserve_block(conn, ns, want, reserved)
            if inside:
                local.append(got)
            else:
                n = count - len(out)
                out.extend(got[:n])
                self.give(ns, got[n:])
        if out:
            self.issued(ns, max(out))
        return out

    def _block_size(self, ns: str) -> int:
        now = time.monotonic()
        with self._lock:
            last, at = self._sizes.get(ns, (0, float("-inf")))
            size = min(MAX_BLOCK, max(self.block, 2 * last)) if now - at < BUSY_SECONDS else self.block
            self._sizes[ns] = (size, now)
            return size

    def reserve_block(
        self, conn: Connection | None, ns: str, count: int, reserved: list[tuple[str, range]] | None = None
    ) -> tuple[range, bool]:
        """A fresh block of `count` ids above every id this process issued, and whether it
        was reserved inside `conn`'s transaction (a SQLite connection holding the write
        lock: a second connection would wait on it; the block is then logged in
        `reserved`) rather than in a transaction of its own, committed already."""
        floor = self.floor(ns)
        if conn is not None and dialects.holds_write_lock(conn):
            block = reserve(conn, id_key(ns), count, floor)
            if reserved is not None:
                reserved.append((ns, block))
            return block, True
        return reserve_autonomous(self.engine, id_key(ns), count, floor), False


def reserve_contiguous(
    ids: IdBlocks, conn: Connection | None, ns: str, count: int, reserved: list[tuple[str, range]] | None = None
) -> range:
    """A fresh contiguous block of ids (the pool's leftovers are not contiguous); all of
    it counts as issued from now on."""
    block, _inside = ids.reserve_block(conn, ns, count, reserved)
    ids.issued(ns, block[-1])
    return block
