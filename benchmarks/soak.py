"""Soak: many threads at a steady rate for minutes, then a full consistency check.

Run on demand, from the repository root::

    python -m benchmarks.soak                          # 300 s at 400 ops/s
    python -m benchmarks.soak --seconds 120 --rate 600
    python -m benchmarks.soak --seconds 5 --rate 60 --out /tmp/soak   # the smoke test's run

One process, one store: ``pq.ParqueDB("sqlite:///<file>", archive=<folder>,
policy=pq.FlushPolicy(mode="background", ...))``, so flushes (and the compactions they
trigger) run in the store's own thread while the load goes on.

- **Writers** (``--writers``, default 8): each owns the entities it creates in namespace
  ``items`` and is the only one to change them, so it knows their exact state: it creates,
  updates (``$set`` + ``$inc``), links (``refs``, to another of its live entities or to a
  hot counter, each pair once) and soft-deletes; a few times in ten an update is instead a
  ``$inc`` of one of the ``hot`` counters every writer increments (in-process write-write
  conflicts on one row: the group committer's retry path). Each records what it committed,
  after the call returns, in a thread-safe record (per entity: version, ``n``, a label,
  deleted, the ops in order, the link targets).
- **Readers** (``--readers``, default 4): ``get`` / ``find`` / ``related`` / ``history`` of
  random known ids. Invariants: no exception; a ``get`` never returns a version lower than
  this reader already saw for the id, nor lower than the record held before the call (a
  committed write is visible to every later read), nor an entity the record had deleted;
  ``find`` returns only live entities of the owner asked; ``history``'s versions are 1, 2,
  ... with no gap.
- **Pacing**: every thread runs at ``rate / (writers + readers)`` ops/s on a fixed schedule
  (a token bucket of ``--burst`` tokens: a thread that falls behind catches up by at most
  that many ops, then drops the rest of its backlog; the dropped slots are reported), so
  the load is steady, not flat-out.
- **Memory**: ``VmRSS`` (``/proc/self/status``) every ``--rss-every`` seconds. It counts as
  flat if, after the warm-up (the first fifth of the run, at least 10 s), the last third's
  maximum is within ``--rss-tolerance`` MiB of the first third's. The process also holds
  the writers' record and the latency samples (both grow with the ops done; printed).
- **Consistency** (after the load stops and a final ``db.flush()``): every entity's ``get``
  (``include_deleted=True``) equals the record; every committed event is in the archive
  exactly once: the ``events/`` and ``rels/`` Parquet files read directly with DuckDB through
  a glob, counted per (ns, id) against the recorded versions, sequence numbers unique, and
  the same counts through ``db.duckdb()``; ``related`` of every live entity is its live
  targets; ``history`` of a sample (``--history-sample``) is its recorded ops in order.

Results: ``benchmarks/results/soak.md``; exit status 1 if the consistency check failed or
any error or invariant violation happened.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

NS = "items"
HOT_NS = "hot"
HOT = 4  # counters every writer increments
POOL = 48  # a writer deletes before creating once it has this many live entities
WRITE_MIX = (("create", 20), ("update", 40), ("inc_hot", 10), ("link", 20), ("delete", 10))
READ_MIX = (("get", 55), ("find", 15), ("related", 15), ("history", 15))
KINDS = [k for k, _w in WRITE_MIX] + [k for k, _w in READ_MIX]
RESULTS = Path(__file__).resolve().parent / "results"
_SYNC = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
MAX_REPORTED = 20  # error / violation messages kept


def _log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def arrow_mib() -> float:
    """Bytes pyarrow's memory pool holds now (the part of RSS that is Arrow buffers)."""
    import pyarrow as pa

    return round(pa.total_allocated_bytes() / 2**20, 1)


def duckdb_mib() -> float:
    """Memory DuckDB's find connection holds (its buffer pool and caches; 0 before the first
    find): a bounded part of RSS (engine/find.py MEMORY_LIMIT)."""
    from parquedb_orm.engine import find

    con = find._db
    if con is None:
        return 0.0
    cur = con.cursor()
    try:
        used = cur.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchall()[0][0]
    finally:
        cur.close()
    return round(float(used) / 2**20, 1)


@functools.cache
def _sqlite_memory_used() -> Any:
    """`sqlite3_memory_used` of the libsqlite3 this process's sqlite3 module runs on (its
    page caches, statements and schema of every connection), or None (sqlite3, imported
    above, has loaded it)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if "libsqlite3" in path and path.startswith("/"):
            try:
                fn = ctypes.CDLL(path).sqlite3_memory_used
            except (OSError, AttributeError):
                return None
            fn.restype = ctypes.c_int64
            return fn
    return None


def sqlite_mib() -> float | None:
    """MiB SQLite's allocator holds now (every connection's page cache, statements and
    schema): a part of RSS bounded by the pool's connections x their cache_size."""
    used = _sqlite_memory_used()
    return None if used is None else round(used() / 2**20, 1)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


def _mallinfo2() -> Any:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2  # glibc 2.33+
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def mem() -> dict[str, float]:
    """MiB: the process's RSS, its anonymous and file-backed parts (/proc/self/status: the
    file-backed part is mapped code and data, mostly the shared libraries' pages touched so
    far) and, under glibc, the free memory glibc's arenas hold (mallinfo2: part of it
    resident, part handed back by malloc_trim)."""
    out = {"rss": float("nan"), "anon": float("nan"), "file": float("nan")}
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file"}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = keys.get(line.split(":", 1)[0] + ":")
        if key is not None:
            out[key] = round(int(line.split()[1]) / 1024, 1)
    if _MALLINFO2 is not None:
        info = _MALLINFO2()
        out["glibc_free"] = round(info.fordblks / 2**20, 1)
        out["glibc_in_use"] = round(info.uordblks / 2**20, 1)
    return out


def deep_mib(obj: Any) -> float:
    """Python objects reachable from `obj` (each counted once), MiB: the record's own size."""
    seen: set[int] = set()
    stack, total = [obj], 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, (type, type(sys))):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(o, "__slots__"):
            stack.extend(getattr(o, name) for name in o.__slots__ if hasattr(o, name))
        elif hasattr(o, "__dict__"):
            stack.append(o.__dict__)
    return total / 2**20


# --------------------------------------------------------------------------- the record


@dataclass(slots=True)
class Expected:
    """What the writers committed for one entity (only its owner changes it; hot counters
    are changed by all, under the record's lock)."""

    owner: str
    version: int = 1
    n: int = 0
    label: int = 0
    deleted: bool = False
    ops: list[str] = field(default_factory=lambda: ["CREATE"])
    links: list[str] = field(default_factory=list)  # refs, each once


class Record:
    """The writers' record, shared by every thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entities: dict[str, Expected] = {}  # "ns/id" -> expected state
        self.refs: list[str] = []  # every ref ever committed, for readers' random picks

    def add(self, ref: str, exp: Expected) -> None:
        with self.lock:
            self.entities[ref] = exp
            self.refs.append(ref)

    def pick(self, rng: random.Random) -> str | None:
        with self.lock:
            return rng.choice(self.refs) if self.refs else None

    def snapshot(self, ref: str) -> tuple[int, bool]:
        with self.lock:
            e = self.entities[ref]
            return e.version, e.deleted


@dataclass
class Stats:
    """Per-thread counters, merged at the end (no lock on the hot path)."""

    lat: dict[str, array[int]] = field(default_factory=lambda: {k: array("I") for k in KINDS})
    errors: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0
    dropped: int = 0  # schedule slots dropped because the thread fell more than a burst behind

    def error(self, kind: str, exc: BaseException) -> None:
        self.errors[kind] += 1
        if len(self.messages) < MAX_REPORTED:
            self.messages.append(f"{kind}: {''.join(traceback.format_exception_only(exc)).strip()}")

    def violate(self, msg: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_REPORTED:
            self.violations.append(msg)


class Pacer:
    """A fixed schedule of `rate` ops/s with a bucket of `burst` ops."""

    def __init__(self, rate: float, burst: int, stop: threading.Event, stats: Stats) -> None:
        self.interval = 1.0 / rate
        self.burst = burst
        self.stop = stop
        self.stats = stats
        self.next = time.perf_counter() + random.random() * self.interval  # threads out of phase

    def wait(self) -> bool:
        """Until the next slot; False once the run is over."""
        now = time.perf_counter()
        behind = (now - self.next) / self.interval
        if behind > self.burst:
            skipped = int(behind) - self.burst
            self.stats.dropped += skipped
            self.next += skipped * self.interval
        if self.next > now and self.stop.wait(self.next - now):
            return False
        self.next += self.interval
        return not self.stop.is_set()


# --------------------------------------------------------------------------- threads


def _timed(stats: Stats, kind: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    t = time.perf_counter_ns()
    out = fn(*args, **kwargs)
    stats.lat[kind].append(min((time.perf_counter_ns() - t) // 1000, 2**32 - 1))
    return out


def writer(db: Any, name: str, seed: int, record: Record, hot: list[str], pacer: Pacer, stats: Stats) -> None:
    rng = random.Random(seed)
    live: list[str] = []  # refs of this writer's live entities
    kinds = [k for k, _w in WRITE_MIX]
    weights = [w for _k, w in WRITE_MIX]
    while pacer.wait():
        kind = rng.choices(kinds, weights)[0]
        if kind == "create" and len(live) >= POOL:
            kind = "delete"
        if kind in ("update", "link", "delete") and not live:
            kind = "create"
        try:
            if kind == "create":
                label = rng.randrange(1_000_000)
                state = _timed(stats, kind, db.create, NS, {"owner": name, "label": label, "n": 0})
                ref = state["$id"]
                record.add(ref, Expected(owner=name, label=label))
                live.append(ref)
            elif kind == "update":
                ref = rng.choice(live)
                label, by = rng.randrange(1_000_000), rng.randrange(1, 10)
                state = _timed(stats, kind, db.update, NS, ref.split("/", 1)[1],
                               {"$set": {"label": label}, "$inc": {"n": by}})  # fmt: skip
                with record.lock:
                    e = record.entities[ref]
                    e.version, e.label, e.n = e.version + 1, label, e.n + by
                    e.ops.append("UPDATE")
                    want = (e.version, e.n, e.label)
                if (state["version"], state["n"], state["label"]) != want:
                    stats.violate(f"update of {ref} returned {state['version'], state['n'], state['label']}, "
                                  f"expected {want}")  # fmt: skip
            elif kind == "inc_hot":
                ref = rng.choice(hot)
                state = _timed(stats, kind, db.update, HOT_NS, ref.split("/", 1)[1], {"$inc": {"n": 1}})
                with record.lock:
                    e = record.entities[ref]
                    e.version, e.n = e.version + 1, e.n + 1
                    e.ops.append("UPDATE")
            elif kind == "link":
                ref = rng.choice(live)
                with record.lock:
                    have = set(record.entities[ref].links)
                choices = [r for r in [*live, *hot] if r != ref and r not in have]
                if not choices:
                    continue
                to = rng.choice(choices)
                _timed(stats, kind, db.link, ref, "refs", to)
                with record.lock:
                    record.entities[ref].links.append(to)
            else:  # delete (soft: the entity, its events and its links stay)
                ref = live.pop(rng.randrange(len(live)))
                ok = _timed(stats, kind, db.delete, NS, ref.split("/", 1)[1])
                with record.lock:
                    e = record.entities[ref]
                    e.version, e.deleted = e.version + 1, True
                    e.ops.append("DELETE")
                if ok is not True:
                    stats.violate(f"delete of {ref} returned {ok!r}")
        except Exception as exc:
            stats.error(kind, exc)


def reader(db: Any, seed: int, record: Record, writers: list[str], pacer: Pacer, stats: Stats) -> None:
    rng = random.Random(seed)
    seen: dict[str, int] = {}  # ref -> highest version this reader saw
    kinds = [k for k, _w in READ_MIX]
    weights = [w for _k, w in READ_MIX]
    while pacer.wait():
        kind = rng.choices(kinds, weights)[0]
        ref = record.pick(rng)
        if ref is None:
            continue
        ns, eid = ref.split("/", 1)
        try:
            if kind == "get":
                floor, deleted = record.snapshot(ref)
                got = _timed(stats, kind, db.get, ns, eid)
                if got is None:
                    # a delete committed between the snapshot and the get is fine
                    if not deleted and not record.snapshot(ref)[1]:
                        stats.violate(f"get {ref}: None, but it was committed and not deleted")
                    continue
                if deleted:
                    stats.violate(f"get {ref}: version {got['version']}, but it was deleted before the call")
                v = got["version"]
                if v < seen.get(ref, 0):
                    stats.violate(f"get {ref}: version {v} after this reader saw {seen[ref]}")
                if v < floor:
                    stats.violate(f"get {ref}: version {v}, the writers had committed {floor} before the call")
                seen[ref] = max(v, seen.get(ref, 0))
            elif kind == "find":
                who = rng.choice(writers)
                found = _timed(stats, kind, db.find, NS, {"owner": who}, sort={"label": -1}, limit=20)
                for doc in found:
                    if doc.get("owner") != who or doc.get("deletedAt") is not None:
                        stats.violate(f"find owner={who}: got {doc['$id']} owner={doc.get('owner')}")
                labels = [doc["label"] for doc in found]
                if labels != sorted(labels, reverse=True):
                    stats.violate(f"find owner={who}: not sorted by label desc: {labels}")
            elif kind == "related":
                for doc in _timed(stats, kind, db.related, ref, "refs"):
                    if doc.get("deletedAt") is not None:
                        stats.violate(f"related {ref}: a deleted entity {doc['$id']}")
            else:
                floor, _deleted = record.snapshot(ref)
                versions = [h["version"] for h in _timed(stats, kind, db.history, ref) if h["version"] is not None]
                if versions != list(range(1, len(versions) + 1)) or len(versions) < floor:
                    stats.violate(f"history {ref}: versions {versions[:8]}... ({len(versions)}), committed {floor}")
        except Exception as exc:
            stats.error(kind, exc)


def _growth(before: Any, after: Any, top: int) -> list[str]:
    """The allocation sites whose live Python memory grew most from the end of the warm-up
    to the end of the load (tracemalloc, `--trace-memory`)."""
    lines = []
    for stat in after.compare_to(before, "traceback")[:top]:
        frames = " <- ".join(f"{os.path.relpath(f.filename)}:{f.lineno}" for f in stat.traceback[:4])
        lines.append(f"{stat.size_diff / 2**20:+8.2f} MiB {stat.count_diff:+9,d} blocks  {frames}")
    return lines


def sampler(db: Any, t0: float, every: float, stop: threading.Event, series: list[dict[str, Any]],
            done: list[Stats]) -> None:  # fmt: skip
    while not stop.wait(every):
        st = db.stats()
        series.append({"t": round(time.perf_counter() - t0, 1), **mem(), "arrow": arrow_mib(),
                       "duckdb": duckdb_mib(), "sqlite": sqlite_mib(),
                       "cached": len(db.runtime.known.cache),  # entity cache entries (bounded)
                       "flushes": st["flushes"],
                       "unflushed": st["unflushed_events"],
                       "ops": sum(len(a) for s in done for a in s.lat.values())})  # fmt: skip


# --------------------------------------------------------------------------- consistency


def _ids(ref: str) -> tuple[str, str]:
    ns, eid = ref.split("/", 1)
    return ns, eid


def consistency(db: Any, record: Record, archive: Path, sample: int, rng: random.Random) -> dict[str, Any]:
    """After the final flush: store vs record, archive vs record, history of a sample."""
    import duckdb

    out: dict[str, Any] = {"entities": len(record.entities), "problems": []}
    problems: list[str] = out["problems"]

    def bad(msg: str) -> None:
        out.setdefault("problem_count", 0)
        out["problem_count"] += 1
        if len(problems) < MAX_REPORTED:
            problems.append(msg)

    st = db.stats()
    out["unflushed_after_flush"] = st["unflushed_events"]
    if st["unflushed_events"]:
        bad(f"{st['unflushed_events']} events still unflushed after the final flush")

    # 1. every entity's state equals the record
    mismatched = 0
    for ref, e in record.entities.items():
        ns, eid = _ids(ref)
        got = db.get(ns, eid, include_deleted=True)
        live = db.get(ns, eid)
        have = None if got is None else (got["version"], got.get("n"), got.get("label"), "deletedAt" in got)
        want = (e.version, e.n, e.label if ns == NS else None, e.deleted)
        if have != want or (live is None) != e.deleted:
            mismatched += 1
            bad(f"get {ref}: {have}, live={live is not None}; recorded {want}")
    out["get_mismatches"] = mismatched

    # 2. the archive's files, directly: every committed event exactly once
    events_glob = str(archive / "events" / "**" / "*.parquet")
    rels_glob = str(archive / "rels" / "**" / "*.parquet")
    con = duckdb.connect()
    rows = con.execute(
        "SELECT ns, id, count(*), count(DISTINCT version), min(version), max(version) "
        f"FROM read_parquet('{events_glob}', hive_partitioning = true, union_by_name = true) GROUP BY ns, id"
    ).fetchall()
    per_id = {f"{ns}/{eid}": (n, d, lo, hi) for ns, eid, n, d, lo, hi in rows}
    missing = extra = wrong = 0
    for ref, e in record.entities.items():
        got = per_id.get(ref)
        if got is None:
            missing += 1
            bad(f"archive: no events for {ref} (recorded {e.version})")
        elif got != (e.version, e.version, 1, e.version):
            wrong += 1
            bad(f"archive: {ref} has (events, distinct versions, min, max) {got}, recorded version {e.version}")
    for ref in per_id.keys() - record.entities.keys():
        extra += 1
        bad(f"archive: events of {ref}, which no writer committed")
    total, distinct_seq = con.execute(
        "SELECT count(*), count(DISTINCT (ns, seq)) "
        f"FROM read_parquet('{events_glob}', hive_partitioning = true, union_by_name = true)"
    ).fetchone() or (0, 0)
    expected_events = sum(e.version for e in record.entities.values())
    if total != expected_events or distinct_seq != total:
        bad(f"archive: {total} events ({distinct_seq} distinct (ns, seq)), recorded {expected_events}")
    rel_rows = con.execute(
        "SELECT ns || '/' || from_id, count(*), count(DISTINCT \"to\") "
        f"FROM read_parquet('{rels_glob}', hive_partitioning = true, union_by_name = true) "
        "WHERE op = 'LINK' GROUP BY ALL"
    ).fetchall()
    links = {ref: (n, d) for ref, n, d in rel_rows}
    wrong_links = 0
    for ref, e in record.entities.items():
        want = (len(e.links), len(e.links))
        if links.get(ref, (0, 0)) != want:
            wrong_links += 1
            bad(f"archive rels: {ref} has (LINK events, distinct targets) {links.get(ref)}, recorded {want}")
    rel_total = con.execute(
        f"SELECT count(*), count(DISTINCT (ns, seq)) FROM read_parquet('{rels_glob}', hive_partitioning = true, "
        "union_by_name = true)"
    ).fetchone() or (0, 0)
    expected_links = sum(len(e.links) for e in record.entities.values())
    if rel_total != (expected_links, expected_links):
        bad(f"archive rels: {rel_total[0]} rel events ({rel_total[1]} distinct (ns, seq)), recorded {expected_links}")
    files = {kind: len(list((archive / kind).rglob("*.parquet"))) for kind in ("events", "rels", "entity_deltas",
                                                                                "entities")}  # fmt: skip
    con.close()
    out.update(archive_events=total, recorded_events=expected_events, archive_links=rel_total[0],
               recorded_links=expected_links, archive_missing=missing, archive_extra=extra,
               archive_wrong=wrong, archive_wrong_links=wrong_links, archive_files=files)  # fmt: skip

    # 3. the same through the store's own view (manifest-listed files + WAL tail)
    view = db.duckdb()
    try:
        vt = view.execute("SELECT count(*), count(DISTINCT (ns, seq)) FROM events").fetchone()
        vr = view.execute("SELECT count(*) FROM rels").fetchone()
    finally:
        view.close()
    out["duckdb_view_events"], out["duckdb_view_rels"] = vt[0], vr[0]
    if (vt[0], vt[1], vr[0]) != (expected_events, expected_events, expected_links):
        bad(f"db.duckdb(): {vt[0]} events ({vt[1]} distinct), {vr[0]} rels; recorded {expected_events}, "
            f"{expected_links}")  # fmt: skip

    # 4. related of every live entity: its live targets
    wrong_related = 0
    for ref, e in record.entities.items():
        if e.deleted or not e.links:
            continue
        want = {t for t in e.links if not record.entities[t].deleted}
        have = {d["$id"] for d in db.related(ref, "refs")}
        if have != want:
            wrong_related += 1
            bad(f"related {ref}: {sorted(have)}, recorded live targets {sorted(want)}")
    out["related_mismatches"] = wrong_related

    # 5. history of a sample (every hot counter among them): the recorded ops in order
    refs = list(record.entities)
    hot = [r for r in refs if r.startswith(f"{HOT_NS}/")]
    picks = hot + rng.sample([r for r in refs if r not in hot], min(sample, len(refs) - len(hot)))
    wrong_history = 0
    for ref in picks:
        e = record.entities[ref]
        hist = db.history(ref)
        ops = [h["op"] for h in hist if h["version"] is not None]
        versions = [h["version"] for h in hist if h["version"] is not None]
        linked = sorted(h["data"]["to"] for h in hist if h["op"] == "LINK")
        if ops != e.ops or versions != list(range(1, e.version + 1)) or linked != sorted(e.links):
            wrong_history += 1
            bad(f"history {ref}: ops {ops[:6]}... ({len(ops)}), links {len(linked)}; recorded {len(e.ops)} ops, "
                f"{len(e.links)} links")  # fmt: skip
    out["history_checked"], out["history_mismatches"] = len(picks), wrong_history
    out["ok"] = not out.get("problem_count")
    return out


# --------------------------------------------------------------------------- run


def _pct(values: array[int], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000  # ms


def _arrow_pool() -> str:
    import pyarrow as pa

    pool = pa.default_memory_pool()
    now, peak = pool.bytes_allocated() / 2**20, pool.max_memory() / 2**20
    return f"{pool.backend_name}, {now:,.1f} MiB allocated, peak {peak:,.1f} MiB"


def flatness(series: list[dict[str, Any]], seconds: float, tolerance: float) -> dict[str, Any]:
    warmup = max(10.0, seconds / 5)
    after = [s["rss"] for s in series if s["t"] >= warmup]
    out: dict[str, Any] = {"warmup_s": warmup, "tolerance_mib": tolerance, "samples": len(after)}
    if len(after) < 6:
        out.update(verdict="n/a (run too short)", flat=None)
        return out
    third = len(after) // 3
    first, last = max(after[:third]), max(after[-third:])
    out.update(first_third_max=first, last_third_max=last, growth=last - first, flat=last - first <= tolerance)
    out["verdict"] = "flat" if out["flat"] else "NOT FLAT"
    # the level between compactions (a merge's transient peak is in the maxima, not here)
    out["first_third_median"], out["last_third_median"] = median(after[:third]), median(after[-third:])
    out["slope_mib_per_min"] = _slope([s for s in series if s["t"] >= warmup])
    tail = [s for s in series if s["t"] >= seconds * 2 / 3]
    out["last_third_slope_mib_per_min"] = _slope(tail) if len(tail) >= 6 else None
    return out


def _slope(samples: list[dict[str, Any]]) -> float:
    """Least-squares slope of the RSS, MiB per minute."""
    ts, rs = [s["t"] for s in samples], [s["rss"] for s in samples]
    mt, mr = sum(ts) / len(ts), sum(rs) / len(rs)
    den = sum((t - mt) ** 2 for t in ts)
    return 60 * sum((t - mt) * (r - mr) for t, r in zip(ts, rs, strict=True)) / den if den else 0.0


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import parquedb_orm as pq

    policy = pq.FlushPolicy(mode="background", min_events=args.min_events, max_events=args.max_events,
                            max_interval=args.max_interval)  # fmt: skip
    archive = workdir / "archive"
    db = pq.ParqueDB(f"sqlite:///{workdir / 'store.db'}", archive=str(archive), policy=policy,
                     cache_entries=args.cache_entries)  # fmt: skip
    res: dict[str, Any] = {"policy": {"mode": policy.mode, "min_events": policy.min_events,
                                      "max_events": policy.max_events, "max_interval": policy.max_interval,
                                      "compact_after": policy.compact_after}}  # fmt: skip
    try:
        with db.engine.connect() as conn:
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        res["journal_mode"], res["synchronous"] = str(journal), _SYNC.get(int(sync or 0), str(sync))
        res["sqlite"] = sqlite3.sqlite_version

        record = Record()
        hot = []
        for i in range(HOT):
            ref = db.create(HOT_NS, {"n": 0, "i": i})["$id"]
            record.add(ref, Expected(owner="hot"))
            hot.append(ref)

        stop = threading.Event()
        threads_n = args.writers + args.readers
        per_thread = args.rate / threads_n
        names = [f"w{i}" for i in range(args.writers)]
        stats = [Stats() for _ in range(threads_n)]
        threads = [threading.Thread(target=writer, name=f"soak-{names[i]}", args=(
                       db, names[i], args.seed + i, record, hot, Pacer(per_thread, args.burst, stop, stats[i]),
                       stats[i])) for i in range(args.writers)]  # fmt: skip
        threads += [threading.Thread(target=reader, name=f"soak-r{j}", args=(
                        db, args.seed + 1000 + j, record, names,
                        Pacer(per_thread, args.burst, stop, stats[args.writers + j]), stats[args.writers + j]))
                    for j in range(args.readers)]  # fmt: skip
        series: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        series.append({"t": 0.0, **mem(), "arrow": arrow_mib(), "flushes": db.stats()["flushes"],
                       "unflushed": 0, "ops": 0})  # fmt: skip
        sam = threading.Thread(target=sampler, args=(db, t0, args.rss_every, stop, series, stats), daemon=True)
        sam.start()
        for t in threads:
            t.start()
        deadline = t0 + args.seconds
        next_log = t0 + 30
        warm_snapshot = None
        while (now := time.perf_counter()) < deadline:
            time.sleep(min(1.0, deadline - now))
            if args.trace_memory and warm_snapshot is None and now - t0 >= max(10.0, args.seconds / 5):
                warm_snapshot = tracemalloc.take_snapshot()
            if time.perf_counter() >= next_log and series:
                s = series[-1]
                _log(f"{s['t']:,.0f} s: {s['ops']:,} ops, RSS {s['rss']:,.1f} MiB (DuckDB {s['duckdb']:,.1f}), "
                     f"{s['flushes']} flushes, "
                     f"{s['unflushed']:,} unflushed")  # fmt: skip
                next_log += 30
        if args.trace_memory and warm_snapshot is not None:
            res["memory_growth"] = _growth(warm_snapshot, tracemalloc.take_snapshot(), args.trace_memory)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        elapsed = time.perf_counter() - t0
        sam.join(timeout=10)
        stuck = [t.name for t in threads if t.is_alive()]
        res["stuck_threads"] = stuck
        series.append({"t": round(elapsed, 1), **mem(), "arrow": arrow_mib(),
                       "flushes": db.stats()["flushes"], "unflushed": db.stats()["unflushed_events"],
                       "ops": sum(len(a) for s in stats for a in s.lat.values())})  # fmt: skip
        res["elapsed_s"] = elapsed
        res["background_flushes"] = db.stats()["flushes"]
        res["last_flush_error"] = db.stats()["last_flush_error"]

        ops: dict[str, dict[str, Any]] = {}
        for kind in KINDS:
            lat = array("I")
            for s in stats:
                lat.extend(s.lat[kind])
            ops[kind] = {"ops": len(lat), "p50_ms": _pct(lat, 0.50), "p99_ms": _pct(lat, 0.99),
                         "max_ms": (max(lat) / 1000) if lat else None,
                         "errors": sum(s.errors[kind] for s in stats)}  # fmt: skip
        res["ops"] = ops
        done = sum(o["ops"] for o in ops.values())
        res["ops_done"] = done
        res["target_rate"] = args.rate
        res["achieved_rate"] = done / elapsed
        res["write_rate"] = sum(ops[k]["ops"] for k, _w in WRITE_MIX) / elapsed
        res["read_rate"] = sum(ops[k]["ops"] for k, _w in READ_MIX) / elapsed
        res["dropped_slots"] = sum(s.dropped for s in stats)
        res["errors"] = sum(o["errors"] for o in ops.values())
        res["error_messages"] = [m for s in stats for m in s.messages][:MAX_REPORTED]
        res["violations"] = sum(s.violation_count for s in stats)
        res["violation_messages"] = [m for s in stats for m in s.violations][:MAX_REPORTED]
        res["rss_series"] = series
        res["rss"] = flatness(series, args.seconds, args.rss_tolerance)
        res["arrow_pool"] = _arrow_pool()
        res["record_entities"] = len(record.entities)
        res["record_mib"] = deep_mib((record.entities, record.refs))
        res["latency_samples_mib"] = done * 4 / 2**20

        _log(f"load done: {done:,} ops in {elapsed:,.1f} s; final flush and consistency check")
        t = time.perf_counter()
        final = db.flush()
        res["final_flush"] = {"events": final.events, "rel_events": final.rel_events, "seconds": final.seconds}
        res["consistency"] = consistency(db, record, archive, args.history_sample, random.Random(args.seed))
        res["consistency"]["seconds"] = time.perf_counter() - t
        res["flushes_total"] = db.stats()["flushes"]
    finally:
        db.close()
    return res


# --------------------------------------------------------------------------- report


def _revision() -> str:
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "parquedb_orm"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "parquedb-orm (not a git checkout)"
    return f"parquedb-orm at {sha}" + (" with uncommitted changes under parquedb_orm/" if dirty else "")


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.2f}"


def render(res: dict[str, Any], command: str, args: argparse.Namespace) -> str:
    c, r, p = res["consistency"], res["rss"], res["policy"]
    ok = c["ok"] and not res["errors"] and not res["violations"] and not res["stuck_threads"]
    out = [
        "# Soak: steady mixed load with background flushes, then a full consistency check",
        "",
        f"`{command}`",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {_revision()}; Python {platform.python_version()}, SQLite "
        f"{res['sqlite']}; {os.cpu_count()} cores. One process: {args.writers} writer and {args.readers} reader "
        f'threads on one `ParqueDB` (SQLite file, local archive folder), `FlushPolicy(mode="{p["mode"]}", '
        f"min_events={p['min_events']}, max_events={p['max_events']}, max_interval={p['max_interval']})` "
        f"(compact_after={p['compact_after']}). Read back on the store's engine: "
        f"journal_mode={res['journal_mode']}, synchronous={res['synchronous']}.",
        "",
        f"**Result: {'PASS' if ok else 'FAIL'}** (consistency {'passed' if c['ok'] else 'FAILED'}, "
        f"{res['errors']} errors, {res['violations']} invariant violations; RSS {r['verdict']})",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| run, seconds | {res['elapsed_s']:,.1f} |",
        f"| target rate, ops/s | {res['target_rate']:,.0f} |",
        f"| achieved rate, ops/s | {res['achieved_rate']:,.1f} |",
        f"| writes, ops/s | {res['write_rate']:,.1f} |",
        f"| reads, ops/s | {res['read_rate']:,.1f} |",
        f"| ops done | {res['ops_done']:,} |",
        f"| schedule slots dropped (a thread > {args.burst} ops behind) | {res['dropped_slots']:,} |",
        f"| errors | {res['errors']:,} |",
        f"| invariant violations (readers) | {res['violations']:,} |",
        f"| background flushes during the load | {res['background_flushes']:,} |",
        f"| flushes in all (with the final one) | {res['flushes_total']:,} |",
        f"| last flush error | {res['last_flush_error'] or 'none'} |",
        f"| entities at the end (items + hot) | {res['record_entities']:,} |",
        f"| RSS at start / end, MiB | {res['rss_series'][0]['rss']:,.1f} / {res['rss_series'][-1]['rss']:,.1f} |",
        "| RSS after warm-up: first third max / last third max, MiB | "
        + (f"{r['first_third_max']:,.1f} / {r['last_third_max']:,.1f}" if r["flat"] is not None else "n/a")
        + " |",
        "| RSS after warm-up: first third median / last third median, MiB | "
        + (f"{r['first_third_median']:,.1f} / {r['last_third_median']:,.1f}" if r["flat"] is not None else "n/a")
        + " |",
        "| RSS slope after warm-up / over the last third, MiB per minute | "
        + (f"{r['slope_mib_per_min']:+,.2f} / " if r["flat"] is not None else "n/a / ")
        + (f"{r['last_third_slope_mib_per_min']:+,.2f}" if r.get("last_third_slope_mib_per_min") is not None else "n/a")
        + " |",
        f"| RSS at the end: anonymous / file-backed, MiB | {res['rss_series'][-1]['anon']:,.1f} / "
        f"{res['rss_series'][-1]['file']:,.1f} |",
        "| glibc arenas at the end: in use / free (held, resident or trimmed), MiB | "
        + (
            f"{res['rss_series'][-1]['glibc_in_use']:,.1f} / {res['rss_series'][-1]['glibc_free']:,.1f}"
            if "glibc_free" in res["rss_series"][-1]
            else "n/a (not glibc)"
        )
        + " |",
        f"| the writers' record at the end (Python objects), MiB | {res['record_mib']:,.2f} |",
        f"| pyarrow memory pool at the end | {res['arrow_pool']} |",
        f"| RSS verdict (tolerance {r['tolerance_mib']:,.0f} MiB, warm-up {r['warmup_s']:,.0f} s) | {r['verdict']} |",
        f"| consistency check | {'passed' if c['ok'] else 'FAILED'} |",
        "",
        "| op | ops | p50 ms | p99 ms | max ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, o in res["ops"].items():
        out.append(f"| {kind} | {o['ops']:,} | {_ms(o['p50_ms'])} | {_ms(o['p99_ms'])} | {_ms(o['max_ms'])} | "
                   f"{o['errors']:,} |")  # fmt: skip
    files = ", ".join(f"{k} {v}" for k, v in c["archive_files"].items())
    out += [
        "",
        "Consistency (after the final flush of "
        f"{res['final_flush']['events']:,} events and {res['final_flush']['rel_events']:,} rel events):",
        "",
        "| check | result |",
        "|---|---:|",
        f"| unflushed events after the final flush | {c['unflushed_after_flush']:,} |",
        f"| entities whose get (incl. deleted) differs from the record | {c['get_mismatches']:,} of "
        f"{c['entities']:,} |",
        f"| events in archive/events/ (DuckDB glob) / committed | {c['archive_events']:,} / {c['recorded_events']:,} |",
        f"| entities with events missing / wrong (count, versions) / unknown | {c['archive_missing']:,} / "
        f"{c['archive_wrong']:,} / {c['archive_extra']:,} |",
        f"| LINK events in archive/rels/ / committed | {c['archive_links']:,} / {c['recorded_links']:,} |",
        f"| entities with wrong LINK events | {c['archive_wrong_links']:,} |",
        f"| db.duckdb() views: events / rels | {c['duckdb_view_events']:,} / {c['duckdb_view_rels']:,} |",
        f"| live entities whose related differs | {c['related_mismatches']:,} |",
        f"| history mismatches (sample) | {c['history_mismatches']:,} of {c['history_checked']:,} |",
        f"| archive files (*.parquet) | {files} |",
        f"| check, seconds | {c['seconds']:,.1f} |",
        "",
        f"RSS series, MiB (every {args.rss_every:g} s; t in s: RSS = anonymous + file-backed [flushes so far]):",
        "",
        "```",
    ]
    line: list[str] = []
    for s in res["rss_series"]:
        line.append(f"{s['t']:>5.0f}: {s['rss']:6.1f} = {s['anon']:5.1f} + {s['file']:5.1f} [{s['flushes']}]")
        if len(line) == 5:
            out.append("   ".join(line))
            line = []
    if line:
        out.append("   ".join(line))
    out += ["```", ""]
    # where the resident memory sits, about every 30 s: what each bounded part holds
    parts = [s for s in res["rss_series"] if "sqlite" in s]
    step = max(1, round(30 / args.rss_every))
    if parts:
        out += ["Parts of the RSS over the run, MiB (glibc: malloc's heap in use / free; Arrow's pool; DuckDB's "
                "find connection; SQLite's allocator, every connection's page cache; entities in the store's cache):",
                "", "| t, s | RSS | glibc in use | glibc free | Arrow | DuckDB | SQLite | cached entities |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for s in [*parts[::step], *([parts[-1]] if (len(parts) - 1) % step else [])]:
            cells = [s.get(k) for k in ("glibc_in_use", "glibc_free", "arrow", "duckdb", "sqlite")]
            shown = " | ".join("-" if v is None else f"{v:,.1f}" for v in cells)
            out.append(f"| {s['t']:.0f} | {s['rss']:,.1f} | {shown} | {s.get('cached', 0):,} |")
        out.append("")
    problems = [*res["error_messages"], *res["violation_messages"], *c["problems"],
                *(f"thread did not stop: {t}" for t in res["stuck_threads"])]  # fmt: skip
    if problems:
        out += ["Problems (first of each kind):", ""] + [f"- `{m}`" for m in problems] + [""]
    out += [
        "Notes:",
        "",
        f"- Each of the {args.writers + args.readers} threads runs at rate / threads ops/s on a fixed schedule "
        f"(a bucket of {args.burst} ops); the achieved rate is every completed call over the run. Writes: "
        + ", ".join(f"{k} {w}%" for k, w in WRITE_MIX)
        + "; reads: "
        + ", ".join(f"{k} {w}%" for k, w in READ_MIX)
        + f". A writer keeps at most {POOL} live entities (then it deletes instead of creating).",
        "- Latency is `time.perf_counter_ns` around the one call, in the calling thread (with the GIL shared by "
        "every thread, the flush thread included).",
        f"- The RSS includes the writers' record ({res['record_entities']:,} entities, with their op lists and "
        f"link targets; {res['record_mib']:,.2f} MiB of Python objects at the end) and the latency samples "
        f"({res['latency_samples_mib']:,.2f} MiB): both grow with the run.",
        "- The archive check reads `events/**/*.parquet` and `rels/**/*.parquet` with DuckDB directly (no "
        "manifest), after the load stopped, so no compaction was in flight.",
    ]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="Writer and reader threads at a steady rate on a SQLite store with background flushes, "
        "then a full consistency check; writes benchmarks/results/soak.md.",
    )
    ap.add_argument("--seconds", type=float, default=300.0, help="length of the load (default 300)")
    ap.add_argument("--rate", type=float, default=400.0, help="target ops/s, all threads together (default 400)")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--burst", type=int, default=5, help="ops a thread may catch up at once (default 5)")
    ap.add_argument("--min-events", type=int, default=500, help="FlushPolicy.min_events (default 500)")
    ap.add_argument("--max-events", type=int, default=5000, help="FlushPolicy.max_events (default 5000)")
    ap.add_argument("--max-interval", type=float, default=5.0, help="FlushPolicy.max_interval (default 5)")
    ap.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    ap.add_argument(
        "--rss-tolerance",
        type=float,
        default=20.0,
        help="MiB the last third's max RSS may exceed the first third's (default 20)",
    )
    ap.add_argument("--strict-rss", action="store_true", help="exit 1 if the RSS is not flat")
    ap.add_argument("--history-sample", type=int, default=300, help="entities whose history is checked")
    ap.add_argument("--cache-entries", type=int, default=None,
                    help="the store's entity cache bound (default: the library's, 20,000); a bound the run's "
                    "entities pass shows whether memory stays flat once every cache is full")  # fmt: skip
    ap.add_argument("--trace-memory", type=int, default=0, metavar="N",
                    help="trace Python allocations (tracemalloc, slower) and print the N sites that grew most "
                    "after the warm-up")  # fmt: skip
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for soak.md (default benchmarks/results/)")
    ap.add_argument("--json", type=Path, default=None, help="also write every number as JSON here")
    ap.add_argument("--keep", type=Path, default=None, help="keep the store in this folder")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raw = sys.argv[1:] if argv is None else argv
    tmp = tempfile.TemporaryDirectory(prefix="pq-soak-") if args.keep is None else None
    workdir = Path(tmp.name) if tmp is not None else Path(args.keep)
    workdir.mkdir(parents=True, exist_ok=True)
    _log(f"{args.seconds:g} s at {args.rate:g} ops/s, {args.writers} writers + {args.readers} readers, in {workdir}")
    if args.trace_memory:
        tracemalloc.start(8)
    try:
        res = run(args, workdir)
    finally:
        if tmp is not None:
            tmp.cleanup()
    command = " ".join(["python -m benchmarks.soak", *raw])
    report = render(res, command, args)
    if res.get("memory_growth"):
        report += "\nPython allocation sites that grew most after the warm-up (tracemalloc):\n\n"
        report += "\n".join(f"    {line}" for line in res["memory_growth"]) + "\n"
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.md").write_text(report)
    res["command"] = command
    res["passed"] = bool(res["consistency"]["ok"] and not res["errors"] and not res["violations"]
                         and not res["stuck_threads"])  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    _log(f"wrote {args.out / 'soak.md'}: {'PASS' if res['passed'] else 'FAIL'}")
    failed = not res["passed"] or (args.strict_rss and res["rss"]["flat"] is False)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
