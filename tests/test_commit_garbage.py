"""A committed operation leaves no reference cycles behind (issue 11, commit CPU).

Each write once left its transaction, unit of work and store in a cycle (a getter closing
over the transaction that owned the store): ~16 objects an operation that only the cyclic
collector could free, ~15 µs a single-op commit in collector time. Counted here with the
collector off: what `gc.collect()` then finds unreachable is what the operations leaked
into cycles. Id block reservations compile a statement now and then (a few objects per
hundred creates): hence a bound per operation rather than zero.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import parquedb_orm as pq

OPS = 300
MAX_GARBAGE_PER_OP = 0.1


def _cyclic_garbage(op: Callable[[int], object]) -> float:
    for i in range(50):  # warm-up: statement caches, the first id block
        op(i)
    gc.collect()
    gc.disable()
    try:
        for i in range(OPS):
            op(i)
        found = gc.collect()
    finally:
        gc.enable()
    return found / OPS


@pytest.fixture()
def db(tmp_path: Path) -> Iterator[pq.ParqueDB]:
    with pq.ParqueDB(f"sqlite:///{tmp_path / 'g.db'}", policy=pq.FlushPolicy(mode="manual")) as db:
        yield db


def test_single_op_writes_leave_no_cycles(db: pq.ParqueDB) -> None:
    seed = [db.create("posts", {"n": n})["$id"] for n in range(10)]
    ids = [ref.split("/")[1] for ref in seed]
    ops: dict[str, Callable[[int], object]] = {
        "create": lambda i: db.create("posts", {"n": i, "tags": ["a", "b"]}),
        "update": lambda i: db.update("posts", ids[i % 10], {"$set": {"n": i}}),
        "link": lambda i: db.link(seed[i % 10], "next", seed[(i + 1 + i // 10) % 10]),
        "delete+restore": lambda i: (db.delete("posts", ids[i % 10]), db.restore("posts", ids[i % 10])),
    }
    for name, op in ops.items():
        per_op = _cyclic_garbage(op)
        assert per_op <= MAX_GARBAGE_PER_OP, f"{name}: {per_op:.2f} objects per operation left in cycles"


def test_transaction_leaves_no_cycles(db: pq.ParqueDB) -> None:
    def op(i: int) -> None:
        with db.transaction() as tx:
            created = tx.create("posts", {"n": i})
            tx.update("posts", created["$id"].split("/")[1], {"$inc": {"n": 1}})

    assert _cyclic_garbage(op) <= MAX_GARBAGE_PER_OP


def test_orm_session_commit_leaves_no_cycles(tmp_path: Path) -> None:
    engine = pq.sqlite_settings(sa.create_engine(f"sqlite:///{tmp_path / 'orm.db'}"))
    maker = sessionmaker(engine)
    handle = pq.enable(maker, policy=pq.FlushPolicy(mode="manual"))
    try:
        with maker() as s:
            eid = pq.store(s).create("posts", {"n": 0})["$id"].split("/")[1]
            s.commit()

        def op(i: int) -> None:
            with maker() as s:
                pq.store(s).update("posts", eid, {"$set": {"n": i}})
                s.commit()

        assert _cyclic_garbage(op) <= MAX_GARBAGE_PER_OP
    finally:
        handle.close()
        engine.dispose()
