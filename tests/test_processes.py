"""Ids stay unique across restarts and across processes creating in one database at once.

Every worker is a real process (multiprocessing "spawn": nothing inherited) that opens
`pq.ParqueDB(url)` itself and creates entities of one namespace, one commit each. Run on
SQLite (a file), PostgreSQL and MariaDB, in the single-owner default mode and with
`shared=True`: the design promises unique ids and no lost write in both modes (a
single-owner store that finds another process's events under its commit lock switches
itself to shared mode).
"""

from __future__ import annotations

import multiprocessing
import queue
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import make_engine, reset_schema, url_of
from sqlalchemy import Engine, select

import parquedb_orm as pq
from parquedb_orm.core.ids import decode_id
from parquedb_orm.engine.ids import MAX_BLOCK
from parquedb_orm.sql.models import Counter

NS = "things"
WORKERS = 4
PER_WORKER = 150
FIRST_RUN = 50  # created (and the store closed) before the workers start: a restart
AFTER = 10  # the test process itself, after everyone else has exited
ID_BLOCK = 100  # ids are reserved in blocks of this many at first (counters.DEFAULT_BLOCK)


def reserved_for(n: int) -> int:
    """The most ids a process creating `n` reserves: blocks of ID_BLOCK that double while
    they run out fast, up to engine/ids.MAX_BLOCK."""
    total, block = 0, ID_BLOCK
    while total < n:
        total += block
        block = min(2 * block, MAX_BLOCK)
    return total


TIMEOUT = 120.0

BACKENDS = [
    pytest.param("sqlite-file", id="sqlite-file"),
    pytest.param("postgresql", id="postgresql"),
    pytest.param("mysql", id="mariadb"),
]
MODES = [pytest.param(False, id="single-owner"), pytest.param(True, id="shared")]


def create_in_process(url: str, shared: bool, tag: str, count: int, barrier: Any, results: Any, ns: str = NS) -> None:
    """Worker body (top level, so "spawn" can import it): open the store, wait for the
    others, create `count` entities in separate commits, report the ids."""
    try:
        db = pq.ParqueDB(url, shared=shared)
        try:
            if barrier is not None:
                barrier.wait(timeout=TIMEOUT)
            ids = [db.create(ns, {"name": f"{tag}-{i}", "worker": tag, "i": i})["$id"] for i in range(count)]
        finally:
            db.close()
        results.put((tag, ids, None))
    except BaseException:  # every failure is reported to the test process
        results.put((tag, [], traceback.format_exc()))


def run_workers(url: str, shared: bool, counts: dict[str, int], ns: str = NS) -> dict[str, list[str]]:
    """Start one spawned process per entry of `counts` at once; their ids by tag."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(counts)) if len(counts) > 1 else None
    results = ctx.Queue()
    procs = [
        ctx.Process(target=create_in_process, args=(url, shared, tag, n, barrier, results, ns), name=f"pq-{tag}")
        for tag, n in counts.items()
    ]
    return collect(procs, results)


def collect(procs: list[Any], results: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
    """Start spawned workers that each put (tag, value, error) on `results`; their values by
    tag, after every worker exited cleanly (a failure or a timeout fails the test)."""
    for p in procs:
        p.start()
    out: dict[str, Any] = {}
    errors: list[str] = []
    try:
        for _ in procs:
            try:
                tag, value, error = results.get(timeout=timeout)
            except queue.Empty:
                errors.append(f"no result within {timeout:.0f} s")
                break
            if error:
                errors.append(f"--- worker {tag} failed:\n{error}")
            out[tag] = value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return out


def id_counter(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(Counter.value).where(Counter.name == f"id:{NS}")).scalar_one())


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    kind = request.param
    engine = make_engine(kind, tmp_path)
    pq.ParqueDB(engine).close()  # the tables exist before the workers start
    yield engine
    if not kind.startswith("sqlite"):
        reset_schema(engine)
    engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("shared", MODES)
@pytest.mark.parametrize("engine", BACKENDS, indirect=True)
def test_ids_unique_across_restart_and_concurrent_processes(
    engine: Engine, shared: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = url_of(request.node.callspec.params["engine"], tmp_path)
    # this process creates some and closes its store (its unused reserved ids are dropped) ...
    with pq.ParqueDB(url, shared=shared) as first:
        made = {
            "first": [
                first.create(NS, {"name": f"first-{i}", "worker": "first", "i": i})["$id"] for i in range(FIRST_RUN)
            ]
        }
    # ... then four new processes create at the same time
    made.update(run_workers(url, shared, {f"w{i}": PER_WORKER for i in range(WORKERS)}))
    every = [ref for ids in made.values() for ref in ids]
    assert len(every) == FIRST_RUN + WORKERS * PER_WORKER
    assert len(set(every)) == len(every), "an id was issued twice"
    concurrent = [ref for tag, ids in made.items() if tag != "first" for ref in ids]
    assert len(set(concurrent)) == WORKERS * PER_WORKER == 600

    # a fresh store (this process, cold; the only writer left) reads every one of them back
    db = pq.ParqueDB(url)
    try:
        for tag, ids in made.items():
            for i, ref in enumerate(ids):
                got = db.get(NS, ref.split("/")[1])
                assert got is not None and (got["worker"], got["i"], got["version"]) == (tag, i, 1), (ref, got)
        found = db.find(NS)
        assert len(found) == len(every) and {d["$id"] for d in found} == set(every)
        assert len(db.find(NS, {"worker": "w2"})) == PER_WORKER
        # ... and, restarted after all of them, keeps issuing new ids
        later = [db.create(NS, {"name": f"after-{i}", "worker": "after", "i": i})["$id"] for i in range(AFTER)]
    finally:
        db.close()
    every += later
    assert len(set(every)) == len(every), "an id was reused after a restart"
    with pq.ParqueDB(url) as db:
        assert len(db.find(NS)) == len(every)

    # ids came from the counter in blocks: amortised, and never beyond what was reserved
    value = id_counter(engine)
    numbers = [decode_id(ref.split("/")[1]) for ref in every]
    assert all(n is not None for n in numbers)
    assert max(n for n in numbers if n is not None) <= value
    lifetimes = {"first": FIRST_RUN, **{f"w{i}": PER_WORKER for i in range(WORKERS)}, "after": AFTER}
    reserved = sum(reserved_for(n) for n in lifetimes.values())  # 100 + 4*300 + 100
    assert value <= reserved + 10, (value, reserved)
    assert value <= len(every) + sum(reserved_for(n) - n for n in lifetimes.values()) + 10


@pytest.mark.parametrize("engine", BACKENDS, indirect=True)
def test_first_commits_of_a_new_namespace_from_four_shared_processes(
    engine: Engine, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Four processes make a namespace's very first commits at the same moment: on MariaDB
    creating the namespace's lock row inside the committing transactions deadlocked them."""
    url = url_of(request.node.callspec.params["engine"], tmp_path)
    for trial in range(3):  # the race is not won every time: three new namespaces
        ns = f"fresh{trial}"
        made = run_workers(url, True, {f"w{i}": 20 for i in range(WORKERS)}, ns)
        every = [ref for ids in made.values() for ref in ids]
        assert len(every) == len(set(every)) == WORKERS * 20
        with pq.ParqueDB(url) as db:
            assert {d["$id"] for d in db.find(ns)} == set(every)
