"""Persisted counters and block allocation of entity ids.

`id:<ns>` holds the highest id number ever reserved. A reservation adds a whole block
(100 by default) in one UPDATE, so N creates cost at most N/100 counter-row writes
(the process pool that hands them out is engine/ids.py).
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, insert, select, update

from parquedb_orm.sql import dialects
from parquedb_orm.sql.models import Counter

DEFAULT_BLOCK = 100


# The counter rows' names, spelled here only. `id:<ns>`: highest id number reserved;
# `seq:<ns>` / `rseq:<ns>`: the flushed marks of the namespace's entity / relationship events.
def id_key(ns: str) -> str:
    return f"id:{ns}"


def seq_key(ns: str) -> str:
    return f"seq:{ns}"


def rseq_key(ns: str) -> str:
    return f"rseq:{ns}"


def namespace_of(name: str) -> str | None:
    """The namespace a counter row belongs to (None for a row of no namespace)."""
    return name.split(":", 1)[1] if ":" in name else None


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
    res = conn.execute(update(Counter).where(Counter.name == name, Counter.value < floor).values(value=floor))
    if res.rowcount == 0:
        dialects.insert_ignore(conn, Counter.__table__, [{"name": name, "value": floor}])  # type: ignore[arg-type]


def reserve_autonomous(engine: Engine, name: str, count: int, floor: int = 0) -> range:
    """Reserve in a transaction of its own, committed before the ids are used (two first
    reservations of a namespace race to insert its row: the loser runs again)."""
    return dialects.in_own_transaction(engine, lambda conn: reserve(conn, name, count, floor))
