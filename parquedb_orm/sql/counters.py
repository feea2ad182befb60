"""Persisted counters and block allocation of entity ids.

`id:<ns>` holds the highest id number ever reserved. A reservation adds a whole block
(100 by default) in one UPDATE, so N creates cost at most N/100 counter-row writes; an
id is never issued twice because a block is committed before any id of it is handed
out, or (SQLite, inside a transaction that already holds the write lock) belongs only
to that transaction until it commits. Such a block is gone if the transaction (or the
savepoint that reserved it) rolls back, but its ids may have been shown: every later
reservation of this process starts above the highest id it ever issued, and the
session extension raises the stored counter to that floor after the rollback, so no
process issues them again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from parquedb_orm.sql import dialects
from parquedb_orm.sql.models import Counter

DEFAULT_BLOCK = 100


def load_all(conn: Connection) -> dict[str, int]:
    """Every counter in one statement (a cold start reads nothing else)."""
    return {name: value for name, value in conn.execute(select(Counter.name, Counter.value))}


def reserve(conn: Connection, name: str, count: int, floor: int = 0) -> range:
    """Add `count` to counter `name` (raised to `floor` first) inside `conn`'s transaction;
    returns the reserved numbers."""
    start = Counter.value if not floor else dialects.greatest(conn, Counter.value, floor)
    res = conn.execute(update(Counter).where(Counter.name == name).values(value=start + count))
    if res.rowcount == 0:
        conn.execute(insert(Counter).values(name=name, value=floor + count))
        return range(floor + 1, floor + count + 1)
    end = conn.execute(select(Counter.value).where(Counter.name == name)).scalar_one()
    return range(end - count + 1, end + 1)


def raise_to(conn: Connection, name: str, floor: int) -> None:
    """Counter `name` = max(counter, floor): numbers up to `floor` are never reserved again."""
    res = conn.execute(
        update(Counter).where(Counter.name == name, Counter.value < floor).values(value=floor)
    )
    if res.rowcount == 0:
        dialects.insert_ignore(conn, Counter.__table__, [{"name": name, "value": floor}])  # type: ignore[arg-type]


def reserve_autonomous(engine: Engine, name: str, count: int, floor: int = 0) -> range:
    """Reserve in a transaction of its own, committed before the ids are used."""
    for attempt in range(5):
        try:
            with dialects.begin(engine) as conn:
                return reserve(conn, name, count, floor)
        except IntegrityError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


@dataclass
class IdBlocks:
    """Durable reserved-but-unissued id numbers of each namespace (process-wide)."""

    engine: Engine
    block: int = DEFAULT_BLOCK
    _free: dict[str, list[range]] = field(default_factory=dict)
    #: highest number handed out per namespace: a block reserved inside a transaction that
    #: later rolled back is reserved again above it, so a shown id is never shown twice
    _issued: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def namespaces(self) -> set[str]:
        """Namespaces this process reserved ids for (their `id:` counter rows exist)."""
        with self._lock:
            return set(self._issued) | set(self._free)

    def take(self, ns: str, count: int) -> list[int] | None:
        """Up to `count` numbers from the durable pool, or None if it is empty."""
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
            want = max(self.block, count - len(out))
            conn = connection() if connection is not None else None
            floor = self.floor(ns)
            if conn is not None and dialects.family(conn) == "sqlite" and dialects.in_write_transaction(conn):
                block = reserve(conn, f"id:{ns}", want, floor)
                local.append(block)
                if reserved is not None:
                    reserved.append((ns, block))
            else:
                got = reserve_autonomous(self.engine, f"id:{ns}", want, floor)
                n = count - len(out)
                out.extend(got[:n])
                self.give(ns, got[n:])
        if out:
            self.issued(ns, max(out))
        return out
