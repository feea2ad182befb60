"""Retrying a write that lost a race to another process: capped exponential backoff with
full jitter and a total deadline (`db._retry_conflicts`).

The first tests drive the helper with a fake clock and sleep (no real waiting); the last
runs four real processes (multiprocessing "spawn", as tests/test_processes.py) that each
`$inc` one counter on a shared SQLite file without `expected_version`: every increment
lands and none gives up.
"""

from __future__ import annotations

import itertools
import multiprocessing
import traceback
from pathlib import Path
from typing import Any

import pytest
from test_processes import collect

import parquedb_orm as pq
from parquedb_orm import db as dbmod
from parquedb_orm.errors import VersionConflictError

NS = "counters"
WORKERS = 4
PER_WORKER = 50
TIMEOUT = 120.0


class FakeTime:
    """A clock that only moves when `sleep` is called."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def upper(_low: float, high: float) -> float:
    """`uniform` that always picks the top of the range: the largest delay jitter allows."""
    return high


def test_delays_grow_and_stay_under_the_cap() -> None:
    bounds = [dbmod._retry_delay(a, upper) for a in range(20)]
    assert bounds[0] == pytest.approx(dbmod._RETRY_BASE)
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(bounds))
    assert bounds[1] == pytest.approx(2 * bounds[0]) and bounds[4] == pytest.approx(16 * bounds[0])
    assert max(bounds) == pytest.approx(dbmod._RETRY_CAP)
    assert bounds[-1] == pytest.approx(dbmod._RETRY_CAP)
    # a huge attempt number neither overflows nor exceeds the cap
    assert dbmod._retry_delay(10_000, upper) == pytest.approx(dbmod._RETRY_CAP)
    # full jitter: anywhere in [0, bound], with the real random source
    for a in range(20):
        d = dbmod._retry_delay(a)
        assert 0.0 <= d <= min(dbmod._RETRY_CAP, dbmod._RETRY_BASE * 2**a)


def test_succeeds_after_some_conflicts_without_real_waiting() -> None:
    fake = FakeTime()
    calls = []

    def op() -> str:
        calls.append(fake.now)
        if len(calls) < 4:
            raise VersionConflictError("lost a race")
        return "done"

    assert dbmod._retry_conflicts(op, sleep=fake.sleep, clock=fake.clock, uniform=upper) == "done"
    assert len(calls) == 4
    assert calls[0] == 0.0  # the first attempt does not wait
    assert fake.sleeps == pytest.approx([dbmod._RETRY_BASE * 2**a for a in range(3)])


def test_gives_up_after_the_deadline() -> None:
    fake = FakeTime()
    calls = 0

    def op() -> None:
        nonlocal calls
        calls += 1
        raise VersionConflictError("lost a race")

    with pytest.raises(VersionConflictError, match="gave up") as info:
        dbmod._retry_conflicts(op, sleep=fake.sleep, clock=fake.clock, uniform=upper)
    assert isinstance(info.value.__cause__, VersionConflictError)  # the last conflict is kept
    # it waited up to (never past) the deadline, and kept trying well beyond the old 16
    assert fake.now <= dbmod._RETRY_DEADLINE
    assert fake.now > dbmod._RETRY_DEADLINE - dbmod._RETRY_CAP
    assert calls == len(fake.sleeps) + 1 > 16
    assert max(fake.sleeps) == pytest.approx(dbmod._RETRY_CAP)


def test_other_errors_are_not_retried() -> None:
    fake = FakeTime()

    def op() -> None:
        raise ValueError("not a conflict")

    with pytest.raises(ValueError):
        dbmod._retry_conflicts(op, sleep=fake.sleep, clock=fake.clock)
    assert fake.sleeps == []


# --------------------------------------------------------------------------- real processes


def inc_in_process(url: str, eid: str, tag: str, count: int, barrier: Any, results: Any) -> None:
    """Worker body (top level, so "spawn" can import it): `count` increments of one counter,
    one commit each, no expected_version; reports how many raised VersionConflictError."""
    try:
        db = pq.ParqueDB(url, shared=True)
        gave_up = 0
        try:
            barrier.wait(timeout=TIMEOUT)
            for _ in range(count):
                try:
                    db.update(NS, eid, {"$inc": {"n": 1}})
                except VersionConflictError:
                    gave_up += 1
        finally:
            db.close()
        results.put((tag, gave_up, None))
    except BaseException:  # every failure is reported to the test process
        results.put((tag, -1, traceback.format_exc()))


@pytest.mark.slow
def test_four_processes_increment_one_counter(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with pq.ParqueDB(url, shared=True) as db:
        eid = db.create(NS, {"n": 0})["$id"].split("/", 1)[1]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=inc_in_process, args=(url, eid, f"w{i}", PER_WORKER, barrier, results), name=f"pq-w{i}")
        for i in range(WORKERS)
    ]
    gave_up = collect(procs, results, TIMEOUT)
    assert gave_up == {f"w{i}": 0 for i in range(WORKERS)}, gave_up
    with pq.ParqueDB(url) as db:
        got = db.get(NS, eid)
        assert got is not None
        assert got["n"] == WORKERS * PER_WORKER
        assert got["version"] == 1 + WORKERS * PER_WORKER
