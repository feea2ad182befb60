"""How the cost of one operation grows with the size of the store (issue 12, item 6).

Run on demand, from the repository root::

    python -m benchmarks.scale                       # N = 10,000 and 100,000
    python -m benchmarks.scale --n 10000,100000,1000000
    python -m benchmarks.scale --n 2000 --quick --out /tmp/scale   # the smoke test's run

Each operation measured touches a fixed amount of data; the question is whether it costs
more as the store grows (N entities), and whether memory is bounded. For each N, with the
public API on a SQLite file (``pq.ParqueDB("sqlite:///<file>", archive=<folder>,
policy=pq.FlushPolicy(mode="manual"))``, one namespace ``items``):

1. **Build** (one process): N entities by ``db.create_many`` in chunks of 10,000 (one bulk
   Parquet file each); N/10 ``$set`` updates and N/10 links of seeded random entities, in
   transactions of 1,000 ops (``db.transaction()``); the **first flush** (RSS before / after
   / peak); then 2,000 single-op commits (1,000 ``db.update`` + 1,000 ``db.link``, one
   commit each) and the **second flush** of exactly those 2,000 events (seconds, and rows
   read / written by the faithful meter). RSS at the end and the peak (``VmHWM``) of this
   process.
2. **Fresh processes** (one per line, each opening the store anew, so nothing is cached):
   the first ``get`` (rows read, metered), then 200 ``get`` of other random entities
   (unmetered: RSS growth over the 200, p99 latency); ``find`` (filter + sort + limit 20)
   cold (first call) and warm (the same call again); ``history`` of an entity with 4
   events (create in a bulk file, 3 updates) cold and warm; ``related`` (5 outbound links)
   cold, with its RSS growth.
3. **Variant**: the same build at N = 100,000 (``--quick``: the smallest N) with
   ``create_many`` in chunks of 100 (1,000 bulk files), then the first cold ``get``.

How it is kept honest:

- **Rows** are libSQL's rows-read / rows-written counters (the faithful meter, as D1 /
  Turso bill them): the whole run re-executes itself under ``parquedb_meter.metered_env()``.
  The meter listens on SQLAlchemy's ``Engine`` class (the store's side engine counts too)
  and is attached only around the metered step (second flush; first cold get; the cold
  ``find`` / ``history`` / ``related`` calls, whose timings therefore include the meter's
  per-statement callback, a few µs per statement). The 200 timed gets run unmetered.
- **RSS** is ``VmRSS`` / ``VmHWM`` of ``/proc/self/status``, after ``gc.collect()``. The
  building process also holds the benchmark's own list of N ids (a compact
  ``bytearray``: ~12 bytes per entity), printed in the notes; the store's share is the rest.
- **Times** are ``time.perf_counter`` around the one call; opening the store in a fresh
  process is outside every read figure and printed separately.
- **Settings**: the file's ``PRAGMA journal_mode`` / ``synchronous`` are read back on the
  store's engine and printed. The flush policy is manual: no flush happens except the two
  measured ones (a flush also compacts a namespace's files once it has more than 32 of a
  kind, ``FlushPolicy.compact_after``: today's default, left as it is).
- **One thing at a time**: the processes run one after the other; the machine may have
  other load (absolute seconds vary between runs; rows and MiB do not, much).

Results: ``benchmarks/results/scale.md``; see docs/scaling.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

NS = "items"
SEED = 12
BULK_CHUNK = 10_000
TX_OPS = 1_000
SINGLE_UPDATES = 1_000
SINGLE_LINKS = 1_000
COLD_GETS = 200
HISTORY_UPDATES = 3  # + its create: 4 events
RELATED_LINKS = 5
VARIANT_N = 100_000
VARIANT_CHUNK = 100
RESULTS = Path(__file__).resolve().parent / "results"
_SYNC = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def item(i: int) -> dict[str, Any]:
    return {"$type": "Item", "name": f"item {i:09d}", "group": i % 100, "score": (i * 7919) % 1_000_003,
            "tags": ["scale", "bench"]}  # fmt: skip


def mem() -> dict[str, float]:
    """VmRSS and VmHWM of this process, MiB."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def rss() -> float:
    gc.collect()
    return mem()["VmRSS"]


class Ids:
    """N sqids in one bytearray (the benchmark's own memory stays small and is reported)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ends = array("L")

    def add(self, sqid: str) -> None:
        self.buf += sqid.encode()
        self.ends.append(len(self.buf))

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        start = self.ends[i - 1] if i else 0
        return self.buf[start : self.ends[i]].decode()

    def nbytes(self) -> int:
        return len(self.buf) + self.ends.itemsize * len(self.ends)


# --------------------------------------------------------------------------- metering


class _ClassMeter:
    """A faithful meter on every engine of the process (listeners on the `Engine` class)."""

    def __init__(self) -> None:
        from parquedb_meter import EngineMeter
        from sqlalchemy import Engine

        em = EngineMeter(cast(Engine, SimpleNamespace(dialect=SimpleNamespace(name="sqlite"))), max_records=16)
        em.engine = cast(Engine, Engine)
        self.em = em

    @contextmanager
    def on(self) -> Iterator[dict[str, int | None]]:
        out: dict[str, int | None] = {}
        self.em.meter.reset()
        self.em.install()
        try:
            yield out
        finally:
            self.em.uninstall()
            snap = self.em.meter.snapshot()
            out.update(statements=snap["statements"], rows_read=snap["rows_read"], rows_written=snap["rows_written"])


# --------------------------------------------------------------------------- workers


def _open(workdir: Path) -> Any:
    import parquedb_orm as pq

    return pq.ParqueDB(f"sqlite:///{workdir / 'store.db'}", archive=str(workdir / "archive"),
                       policy=pq.FlushPolicy(mode="manual"))  # fmt: skip


def _dir_stats(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def build(n: int, chunk: int, workdir: Path, quick: bool) -> dict[str, Any]:
    """Phase 1, in its own process: build the store, two flushes, picks for the readers."""
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"n": n, "chunk": chunk}
    meter = _ClassMeter()
    out["rss_start"] = rss()
    t0 = time.perf_counter()
    db = _open(workdir)
    with db.engine.connect() as conn:
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    out["pragmas"] = f"journal_mode={journal}, synchronous={_SYNC.get(int(sync or 0), sync)}"
    out["sqlite"] = sqlite3.sqlite_version

    ids = Ids()
    t = time.perf_counter()
    for start in range(0, n, chunk):
        for state in db.create_many(NS, [item(i) for i in range(start, min(n, start + chunk))]):
            ids.add(state["$id"].split("/", 1)[1])
        if (start // chunk) % max(1, (n // chunk) // 10) == 0:
            _log(f"N={n:,} chunk={chunk}: created {len(ids):,} ({time.perf_counter() - t:,.1f} s, "
                 f"RSS {mem()['VmRSS']:,.0f} MiB)")  # fmt: skip
    out["create_s"] = time.perf_counter() - t
    out["rss_after_create"] = rss()

    rng = random.Random(SEED)
    hist_i, rel_i = 0, 1  # reserved entities: never picked at random below
    pick = lambda: rng.randrange(2, n)  # noqa: E731
    t = time.perf_counter()
    for start in range(0, n // 10, TX_OPS):
        with db.transaction() as tx:
            for j in range(start, min(n // 10, start + TX_OPS)):
                tx.update(NS, ids[pick()], {"$set": {"score": 2_000_000 + j}})
    out["bulk_updates_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for start in range(0, n // 10, TX_OPS):
        with db.transaction() as tx:
            for _j in range(start, min(n // 10, start + TX_OPS)):
                tx.link(f"{NS}/{ids[pick()]}", "refs", f"{NS}/{ids[pick()]}")
    out["bulk_links_s"] = time.perf_counter() - t
    _log(f"N={n:,}: {n // 10:,} updates + {n // 10:,} links in transactions of {TX_OPS:,} "
         f"({out['bulk_updates_s'] + out['bulk_links_s']:,.1f} s); first flush")  # fmt: skip

    before = rss()
    out["rss_peak_before_flush1"] = mem()["VmHWM"]
    hwm_reset()
    t = time.perf_counter()
    r1 = db.flush()
    out["flush1_s"] = time.perf_counter() - t
    out["flush1_events"] = r1.events + r1.rel_events
    out["flush1_peak"] = mem()["VmHWM"] - before
    out["flush1_rss"] = rss() - before

    t = time.perf_counter()
    for k in range(HISTORY_UPDATES):
        db.update(NS, ids[hist_i], {"$set": {"score": 3_000_000 + k}})
    for k in range(SINGLE_UPDATES - HISTORY_UPDATES):
        db.update(NS, ids[pick()], {"$set": {"score": 4_000_000 + k}})
    t_upd = time.perf_counter() - t
    targets = [pick() for _ in range(RELATED_LINKS)]
    t = time.perf_counter()
    for k in targets:
        db.link(f"{NS}/{ids[rel_i]}", "refs", f"{NS}/{ids[k]}")
    for _k in range(SINGLE_LINKS - RELATED_LINKS):
        db.link(f"{NS}/{ids[pick()]}", "refs", f"{NS}/{ids[pick()]}")
    t_link = time.perf_counter() - t
    out["single_update_us"] = 1e6 * t_upd / SINGLE_UPDATES
    out["single_link_us"] = 1e6 * t_link / SINGLE_LINKS
    _log(f"N={n:,}: 2,000 single-op commits ({t_upd + t_link:,.1f} s); second flush")

    with meter.on() as counts:
        t = time.perf_counter()
        r2 = db.flush()
        out["flush2_s"] = time.perf_counter() - t
    out["flush2_events"] = r2.events + r2.rel_events
    out["flush2_read"], out["flush2_written"] = counts["rows_read"], counts["rows_written"]
    out["flush2_statements"] = counts["statements"]

    m = mem()
    gc.collect()
    out["rss_end"], out["rss_peak"] = mem()["VmRSS"], max(m["VmHWM"], out["rss_peak_before_flush1"])
    out["ids_mib"] = ids.nbytes() / 2**20
    out["build_s"] = time.perf_counter() - t0
    db.close()
    out["sql_mib"] = sum(p.stat().st_size for p in workdir.glob("store.db*")) / 2**20
    files, size = _dir_stats(workdir / "archive")
    out["archive_files"], out["archive_mib"] = files, size / 2**20

    sample = rng.sample(range(2, n), COLD_GETS + 1)
    picks = {"first": ids[sample[0]], "gets": [ids[i] for i in sample[1:]], "history": ids[hist_i],
             "related": ids[rel_i], "quick": quick}  # fmt: skip
    (workdir / "picks.json").write_text(json.dumps(picks))
    return out


def hwm_reset() -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    with suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def read(kind: str, workdir: Path) -> dict[str, Any]:
    """One fresh process: open the store, one kind of cold read."""
    picks = json.loads((workdir / "picks.json").read_text())
    meter = _ClassMeter()
    out: dict[str, Any] = {"rss_start": rss()}
    t = time.perf_counter()
    db = _open(workdir)
    out["open_s"] = time.perf_counter() - t
    out["rss_open"] = rss()
    if kind == "gets":
        with meter.on() as counts:
            t = time.perf_counter()
            doc = db.get(NS, picks["first"])
            out["first_get_ms"] = 1e3 * (time.perf_counter() - t)
        assert doc is not None, "first cold get found nothing"
        out["first_get_read"] = counts["rows_read"]
        out["first_get_statements"] = counts["statements"]
        before = rss()
        lat = []
        for sqid in picks["gets"]:
            t0 = time.perf_counter_ns()
            doc = db.get(NS, sqid)
            lat.append(time.perf_counter_ns() - t0)
            assert doc is not None
        out["gets_rss"] = rss() - before
        lat.sort()
        out["gets_p50_us"] = lat[len(lat) // 2] / 1000
        out["gets_p99_us"] = lat[min(len(lat) - 1, int(0.99 * len(lat)))] / 1000
    elif kind == "all":
        # the done-when's process: 200 gets, a find, a related and a history, one after the other
        before = rss()
        for sqid in [picks["first"], *picks["gets"]]:
            assert db.get(NS, sqid) is not None
        out["after_gets_rss"] = rss() - before
        assert db.find(NS, {"group": 7}, sort={"score": -1}, limit=20)
        assert db.related(f"{NS}/{picks['related']}", "refs")
        assert db.history(f"{NS}/{picks['history']}")
        out["all_rss"] = rss() - before
    else:
        ref = f"{NS}/{picks[kind]}" if kind in ("history", "related") else ""

        def call() -> Any:
            if kind == "find":
                return db.find(NS, {"group": 7}, sort={"score": -1}, limit=20)
            if kind == "history":
                return db.history(ref)
            return db.related(ref, "refs")

        before = rss()
        with meter.on() as counts:
            t = time.perf_counter()
            res = call()
            out["cold_s"] = time.perf_counter() - t
        out["cold_rss"] = rss() - before
        out["cold_read"] = counts["rows_read"]
        out["results"] = len(res)
        t = time.perf_counter()
        again = call()
        out["warm_s"] = time.perf_counter() - t
        assert len(again) == len(res)
    out["rss_end"], out["rss_peak"] = mem()["VmRSS"], mem()["VmHWM"]
    db.close()
    return out


# --------------------------------------------------------------------------- parent


def _worker(argv: list[str], result: Path, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.scale", *argv, "--result", str(result)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"worker {' '.join(argv)} exited with {proc.returncode}")
    return cast(dict[str, Any], json.loads(result.read_text()))


def measure(n: int, root: Path, quick: bool, timeout: float) -> dict[str, Any]:
    workdir = root / f"n{n}"
    t = time.perf_counter()
    res: dict[str, Any] = {"build": _worker(["--worker", "build", "--n", str(n), "--dir", str(workdir),
                                             *(["--quick"] if quick else [])], root / f"build{n}.json", timeout)}
    for kind in ("gets", "find", "history", "related", "all"):
        _log(f"N={n:,}: fresh process, cold {kind}")
        res[kind] = _worker(["--worker", kind, "--dir", str(workdir)], root / f"{kind}{n}.json", timeout)
    res["seconds"] = time.perf_counter() - t
    _log(f"N={n:,}: done in {res['seconds']:,.0f} s")
    return res


@dataclass(frozen=True)
class Metric:
    label: str
    path: tuple[str, str]
    fmt: str
    required: bool = True  # the metric (the others are context)


METRICS = [
    Metric("building process: RSS at end, MiB", ("build", "rss_end"), "{:,.0f}"),
    Metric("building process: peak RSS (VmHWM), MiB", ("build", "rss_peak"), "{:,.0f}"),
    Metric("first flush (N/10 updates + N/10 links): RSS growth, MiB", ("build", "flush1_rss"), "{:,.1f}"),
    Metric("first flush: peak above RSS before, MiB", ("build", "flush1_peak"), "{:,.1f}", False),
    Metric("first flush: seconds", ("build", "flush1_s"), "{:,.2f}", False),
    Metric("second flush (2,000 events): seconds", ("build", "flush2_s"), "{:,.3f}"),
    Metric("second flush: rows written", ("build", "flush2_written"), "{:,}"),
    Metric("second flush: rows read", ("build", "flush2_read"), "{:,}"),
    Metric("first cold get: rows read (fresh process)", ("gets", "first_get_read"), "{:,}"),
    Metric("first cold get: ms", ("gets", "first_get_ms"), "{:,.1f}", False),
    Metric("200 cold gets: RSS growth, MiB", ("gets", "gets_rss"), "{:,.1f}"),
    Metric("cold get p99, µs (200 gets after the first)", ("gets", "gets_p99_us"), "{:,.0f}"),
    Metric("cold get p50, µs", ("gets", "gets_p50_us"), "{:,.0f}", False),
    Metric("find (filter + sort + limit 20), warm: seconds", ("find", "warm_s"), "{:,.4f}"),
    Metric("find, cold: seconds", ("find", "cold_s"), "{:,.3f}"),
    Metric("find, cold: RSS growth, MiB", ("find", "cold_rss"), "{:,.1f}", False),
    Metric("find, cold: rows read", ("find", "cold_read"), "{:,}", False),
    Metric("history (4 events), warm: seconds", ("history", "warm_s"), "{:,.4f}"),
    Metric("history, cold: seconds", ("history", "cold_s"), "{:,.3f}"),
    Metric("history, cold: rows read", ("history", "cold_read"), "{:,}", False),
    Metric("related (5 links), cold: seconds", ("related", "cold_s"), "{:,.3f}"),
    Metric("related, cold: RSS growth, MiB", ("related", "cold_rss"), "{:,.1f}"),
    Metric("related, cold: rows read", ("related", "cold_read"), "{:,}", False),
    Metric("one cold process: 200 gets + find + related + history, RSS growth, MiB", ("all", "all_rss"), "{:,.1f}"),
    Metric("fresh process: open, seconds", ("gets", "open_s"), "{:,.2f}", False),
    Metric("fresh process: RSS after open, MiB", ("gets", "rss_open"), "{:,.0f}", False),
    Metric("build: create_many, seconds", ("build", "create_s"), "{:,.1f}", False),
    Metric("build: single-op update, µs", ("build", "single_update_us"), "{:,.0f}", False),
    Metric("build: single-op link, µs", ("build", "single_link_us"), "{:,.0f}", False),
    Metric("SQLite file (+ -wal), MiB", ("build", "sql_mib"), "{:,.1f}", False),
    Metric("archive: files", ("build", "archive_files"), "{:,}", False),
    Metric("archive: MiB", ("build", "archive_mib"), "{:,.1f}", False),
]


def _metric(label: str) -> Metric:
    return next(m for m in METRICS if m.label == label)


def _cell(res: dict[str, Any], m: Metric) -> str:
    value = res.get(m.path[0], {}).get(m.path[1])
    return "n/a" if value is None else m.fmt.format(value)


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


def render(results: dict[int, dict[str, Any]], variant: dict[str, Any] | None, command: str,
           faithful: bool, elapsed: float) -> str:  # fmt: skip
    ns = sorted(results)
    first = results[ns[0]]["build"]
    out = [
        "# Scale: cost of a fixed-size operation as the store grows",
        "",
        f"`{command}`",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {_revision()}; Python {platform.python_version()}, SQLite "
        f"{first.get('sqlite')} ({'faithful meter' if faithful else 'NO faithful meter: rows n/a'}); "
        f"{os.cpu_count()} cores; whole run {elapsed:,.0f} s. Read back on the store's engine: "
        f"{first.get('pragmas')}. `FlushPolicy(mode=\"manual\")`, local archive folder.",
        "",
        "| metric | " + " | ".join(f"N = {n:,}" for n in ns) + " |",
        "|---|" + "---:|" * len(ns),
    ]
    for m in METRICS:
        label = m.label if m.required else f"*{m.label}*"
        out.append(f"| {label} | " + " | ".join(_cell(results[n], m) for n in ns) + " |")
    out += ["", "Rows in *italics* are context, not the issue's metrics. Run seconds per N: "
            + ", ".join(f"{n:,}: {results[n]['seconds']:,.0f} s" for n in ns) + "."]
    if variant is not None:
        vb = variant["build"]

        def vc(label: str) -> str:
            return _cell(variant, _metric(label))

        out += [
            "",
            f"Variant: `create_many` in chunks of {vb['chunk']:,} at N = {vb['n']:,} "
            f"({-(-vb['n'] // vb['chunk']):,} bulk files), same workload otherwise:",
            "",
            "| metric | value |",
            "|---|---:|",
            "| first cold get: rows read (fresh process) | " + vc("first cold get: rows read (fresh process)") + " |",
            f"| *first cold get: ms* | {vc('first cold get: ms')} |",
            "| *cold get p99, µs* | " + vc("cold get p99, µs (200 gets after the first)") + " |",
            f"| *fresh process: open, seconds* | {vc('fresh process: open, seconds')} |",
            "| *building process: RSS at end, MiB* | " + vc("building process: RSS at end, MiB") + " |",
            "| *archive: files after the build (its flushes compact)* | " + vc("archive: files") + " |",
        ]
    ids = ", ".join(f"{n:,}: {results[n]['build']['ids_mib']:,.1f} MiB" for n in ns)
    out += [
        "",
        "Notes:",
        "",
        f"- The building process's RSS includes the benchmark's own id list ({ids}) and the "
        "interpreter with SQLAlchemy, pyarrow and DuckDB imported; the fresh-process RSS after open is that "
        "baseline plus what opening loads.",
        "- Build: N/10 updates and N/10 links in transactions of 1,000 ops, then the first flush; then 1,000 "
        "single-op updates and 1,000 single-op links (one commit each) and the second flush of those 2,000 events.",
        "- Cold reads: one fresh process per line (the store opened anew, open time not in the figure). "
        "The first get is metered; the 200 gets after it (other random entities) are not. find, history and "
        "related: cold = the first call of the process (meter attached), warm = the same call again.",
        "- RSS is VmRSS after gc.collect(); peaks are VmHWM (reset before the first flush via "
        "/proc/self/clear_refs). Seconds vary with the shared machine's load; rows and files do not.",
    ]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description="Cost of fixed-size operations (flush, cold get, find, history, related) and memory as a "
        "parquedb-orm SQLite store grows to N entities; writes benchmarks/results/scale.md.",
    )
    ap.add_argument("--n", action="append", default=None,
                    help="entity counts, comma-separated, repeatable (default 10000,100000; 1000000 takes long)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for scale.md (default benchmarks/results/)")
    ap.add_argument("--json", type=Path, default=None, help="also write every number as JSON here")
    ap.add_argument("--quick", action="store_true",
                    help="the chunks-of-100 variant at the smallest N instead of 100,000 (for the smoke test)")
    ap.add_argument("--no-variant", action="store_true", help="skip the chunks-of-100 variant")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per worker process")
    ap.add_argument("--keep", type=Path, default=None, help="keep the stores in this folder")
    ap.add_argument("--worker", choices=("build", "gets", "find", "history", "related", "all"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=BULK_CHUNK, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raw = sys.argv[1:] if argv is None else argv
    if args.worker:
        if args.worker == "build":
            res = build(int(args.n[0]), args.chunk, args.dir, args.quick)
        else:
            res = read(args.worker, args.dir)
        args.result.write_text(json.dumps(res))
        return 0

    from parquedb_meter import FaithfulMeterUnavailable, faithful_available, metered_env

    if os.environ.get("PARQUEDB_METERED") != "1":
        try:
            env = {**metered_env(), "PARQUEDB_METERED": "1"}
        except FaithfulMeterUnavailable as exc:
            _log(f"faithful SQLite meter unavailable ({exc}); rows are n/a")
        else:
            return subprocess.run([sys.executable, "-m", "benchmarks.scale", *raw], env=env).returncode

    ns = sorted({int(x) for spec in (args.n or ["10000,100000"]) for x in spec.split(",") if x.strip()})
    t0 = time.perf_counter()
    results: dict[int, dict[str, Any]] = {}
    variant: dict[str, Any] | None = None
    tmp = tempfile.TemporaryDirectory(prefix="pq-scale-") if args.keep is None else None
    root = Path(tmp.name) if tmp is not None else Path(args.keep)
    root.mkdir(parents=True, exist_ok=True)
    try:
        for n in ns:
            results[n] = measure(n, root, args.quick, args.timeout)
            _log(f"N={n:,}: " + ", ".join(f"{m.label} = {_cell(results[n], m)}" for m in METRICS if m.required))
        if not args.no_variant:
            vn = ns[0] if args.quick else VARIANT_N
            _log(f"variant: N={vn:,} in chunks of {VARIANT_CHUNK}")
            wd = root / "variant"
            variant = {"build": _worker(["--worker", "build", "--n", str(vn), "--chunk", str(VARIANT_CHUNK),
                                         "--dir", str(wd)], root / "variant-build.json", args.timeout),
                       "gets": _worker(["--worker", "gets", "--dir", str(wd)], root / "variant-gets.json",
                                       args.timeout)}  # fmt: skip
    finally:
        if tmp is not None:
            tmp.cleanup()
    command = " ".join(["python -m benchmarks.scale", *raw])
    report = render(results, variant, command.strip(), faithful_available() or _child_faithful(results),
                    time.perf_counter() - t0)  # fmt: skip
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.md").write_text(report)
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "variant": variant}, indent=1))
    _log(f"wrote {args.out / 'scale.md'} ({time.perf_counter() - t0:,.0f} s)")
    return 0


def _child_faithful(results: dict[int, dict[str, Any]]) -> bool:
    return all(r["build"].get("flush2_read") is not None for r in results.values())


if __name__ == "__main__":
    raise SystemExit(main())
