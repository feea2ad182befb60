"""Tracked-model benchmark: what keeping the history of an ORM model costs, per system.

    python -m benchmarks.tracked                 # 1,000 orders, every system
    python -m benchmarks.tracked --quick         # 100 orders
    python -m benchmarks.tracked --systems parquedb,plain,raw --size 200 --out /tmp/tracked

One `Order` model (id int primary key, customer str, status str, qty int, total Numeric,
updated_at datetime; no secondary index), five systems:

- parquedb-orm: `class Order(pq.Tracked, ...)` and `pq.enable(Session, archive=...)`;
- SQLAlchemy-Continuum: `make_versioned(user_cls=None)`, `__versioned__ = {}`;
- sqlalchemy-history (the maintained Continuum fork): the same two lines;
- plain SQLAlchemy, no history: the floor (what the app's own rows cost);
- raw sqlite3, no ORM, no history: the speed ceiling.

Workloads, each on a fresh database holding 1,000 freshly seeded orders (one commit of
inserts, measured too, as "seed"): 1,000 updates in one commit; 1,000 updates, one per
commit; one ORM-enabled bulk `update(Order).where(Order.id <= 1000).values(...)`.

How the comparison is made fair:

- Same model: every ORM system maps the same mixin (`benchmarks/systems/orders.py`,
  `OrderColumns`) on its own `DeclarativeBase`; the raw line creates the table with the
  DDL SQLAlchemy compiles for it and binds the same values (Numeric as float, datetime as
  the dialect's string), so every system stores the same bytes in the same table.
- Same application code: the four ORM systems run the same functions through a plain
  `sessionmaker` (default options); only the history machinery differs. The raw line
  sends statement by statement what plain SQLAlchemy sends (the same SELECTs, UPDATEs,
  `executemany` batches and commits).
- Same database settings: a fresh SQLite file per system and workload, every connection
  given the same pragmas (WAL journal, synchronous=NORMAL, busy timeout); the report
  prints journal_mode and synchronous as read back with PRAGMA from each system's own
  connection, not as assumed.
- Same meter: rows read and written are libSQL's counters, exactly as Cloudflare D1 /
  Durable Objects and Turso bill them, index entries included (the faithful meter of
  `tools/meter`, on the libsqlite3 of `scripts/build_metered_sqlite.sh`). The meter
  listens on SQLAlchemy's `Engine` class, so it also counts engines a system creates on
  its own; the raw line reads the same counters through a trace callback on its one
  connection. A statement is one DBAPI `execute` / `executemany` call for every system.
  Schema creation and the read-back checks are not metered; the seed is reported apart.
- One process per system, run one after the other (never in parallel on this 2-core
  machine): Continuum and sqlalchemy-history instrument SQLAlchemy process-wide.
- Same run: the ratios are against the plain SQLAlchemy line measured in this run.
- History is checked, not assumed: after each workload the versions of orders #1 and #N
  are read back with each library's own API (`pq.history(session, obj)`,
  `count_versions(obj)`); "captured" means both have their seed version plus the
  workload's. Continuum and sqlalchemy-history do not version bulk UPDATE statements: the
  table says so (history rows 0, captured no) rather than leaving the row out.
- parquedb-orm runs with `FlushPolicy(mode="manual")`, so nothing moves to Parquet during a
  measured workload (deterministic rows): the seed's events are flushed before the
  workload (unmetered) and the workload's events right after it, reported on their own
  line ("then flush() to Parquet"), so the archive's cost is shown, not hidden or left to
  a timer.

The command re-executes itself once with the interpreter of `benchmarks/.venv` (SQLAlchemy
2.0.x, Continuum and sqlalchemy-history; `benchmarks/setup_env.sh` creates it when
missing; `--no-venv` keeps the current interpreter) under `parquedb_meter.metered_env()`,
then runs each system in a worker process (`--worker NAME`). It prints the Markdown report
and writes it to `<out>/tracked.md` (default `benchmarks/results/`). docs/benchmarks.md
has the details.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_PYTHON = HERE / ".venv" / "bin" / "python"
SETUP_SCRIPT = HERE / "setup_env.sh"
_CHILD_FLAG = "PARQUEDB_TRACKED_REEXEC"
DEFAULT_SYSTEMS = "parquedb,continuum,history,plain,raw"
DEFAULT_SIZE = 1000
QUICK_SIZE = 100
DEFAULT_REPEAT = 3
BASELINE = "plain"
#: workload key -> label template ({n} = size)
WORKLOADS: dict[str, str] = {
    "updates_one_commit": "{n:,} updates, one commit",
    "updates_per_commit": "{n:,} updates, one per commit",
    "bulk_update": "one bulk update(Order) of {n:,} rows",
}
SEED_LABEL = "seed: {n:,} inserts, one commit"


def _log(msg: str) -> None:
    print(f"[tracked {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Worker: one system, every workload (also called in-process by the tests)
# --------------------------------------------------------------------------


WARMUP_SIZE = 20
_DETERMINISTIC = ("statements", "rows_read", "rows_written", "app_rows_written", "wal_rows_inserted")


def _cycle(system: Any, key: str, size: int, workdir: Path) -> dict[str, Any]:
    """One workload on a fresh database: seed, (unmetered step), workload, read back, flush."""
    from benchmarks.systems.orders import Counts

    if workdir.exists():
        shutil.rmtree(workdir)
    res: dict[str, Any] = {}
    system.open(workdir)
    try:
        seed = Counts()
        with system.measure(seed):
            system.seed(size)
        res["seed"] = asdict(seed)
        res["history_after_seed"] = list(system.history_rows())
        system.after_seed()
        rows_before, records_before = system.history_rows()
        c = Counts()
        with system.measure(c):
            getattr(system, key)(size)
        rows_after, records_after = system.history_rows()
        res["counts"] = asdict(c)
        res["history_rows_added"] = rows_after - rows_before
        res["history_records_added"] = records_after - records_before
        read = Counts()
        with system.measure(read):
            v_first = system.versions(1)
        res["history_read"] = asdict(read)
        res["versions"] = [v_first, system.versions(size)]
        flush = Counts()
        with system.measure(flush):
            flushed = system.flush()
        if flushed:
            res["flush"] = asdict(flush)
            res["versions_after_flush"] = [system.versions(1), system.versions(size)]
        res["pragmas"] = system.pragmas()
    finally:
        system.close()
    return res


def run_system(name: str, size: int, root: Path, workloads: list[str] | None = None, repeat: int = 1,
               warmup: bool = True) -> dict[str, Any]:
    """Run system `name` on each workload and return every number as plain JSON-able data.

    Every cycle (one workload) runs on a fresh database under `root / name`. `warmup`: one
    unmeasured cycle of each workload at a small size first (imports, mapper configuration,
    SQLAlchemy's statement cache), the same for every system. `repeat`: cycles per workload;
    seconds are the median, rows and statements must be identical (a difference is reported
    as an error)."""
    from parquedb_meter import faithful_available

    from benchmarks.systems.orders import build

    system = build(name)
    out: dict[str, Any] = {"system": name, "label": system.label, "size": size, "faithful": faithful_available(),
                           "keeps_history": system.keeps_history, "workloads": {}, "errors": [],
                           "notes": system.notes, "repeat": repeat}
    keys = workloads or list(WORKLOADS)
    for key in keys:
        try:
            if warmup:
                _cycle(system, key, min(size, WARMUP_SIZE), root / name / "warmup")
            runs = [_cycle(system, key, size, root / name / f"{key}-{i + 1}") for i in range(repeat)]
        except Exception as exc:
            tb = traceback.format_exc()
            _log(f"{name}: {key} FAILED: {type(exc).__name__}: {exc}\n{tb}")
            out["errors"].append({"workload": key, "type": type(exc).__name__, "message": str(exc)[:2000],
                                  "traceback": tb[-4000:]})
            out["workloads"][key] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        res = runs[0]
        for part in ("seed", "counts", "history_read", "flush"):
            if part not in res:
                continue
            all_secs = [r[part]["seconds"] for r in runs]
            res[part]["seconds"] = statistics.median(all_secs)
            res[part]["seconds_all"] = all_secs
            differ = [f for f in _DETERMINISTIC if len({r[part][f] for r in runs}) > 1]
            if differ:
                msg = f"{part}: {', '.join(differ)} differ between repeats: " + "; ".join(
                    str({f: r[part][f] for f in differ}) for r in runs)
                out["errors"].append({"workload": key, "type": "NotDeterministic", "message": msg})
        out["workloads"][key] = res
    return out


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _int(v: int | None) -> str:
    return "n/a" if v is None else f"{v:,}"


def _ratio(v: float | None, base: float | None) -> str:
    if v is None or base is None:
        return "—"
    if base == 0:
        return "—" if v else "1.00"
    return f"{v / base:,.2f}"


def _captured(sys_res: dict[str, Any], res: dict[str, Any]) -> str:
    if not sys_res["keeps_history"]:
        return "no (no history)"
    versions = res.get("versions") or [None, None]
    ok = versions == [2, 2]
    after = res.get("versions_after_flush")
    text = "yes" if ok else "**no**"
    if after is not None and after != versions:
        text += f" (after flush: {after[0]} / {after[1]})"
    return text


def render_markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    n = meta["size"]
    lines = [
        f"# Tracked-model benchmark — {n:,} orders",
        "",
        f"`{meta['command']}` — {meta['date']}; {meta['machine']}",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        "Rows read / written: " + (
            "faithful SQLite meter (libSQL's counters, as Cloudflare D1 / Durable Objects and Turso bill them; "
            "index entries included)." if meta["faithful"] else
            "**n/a**: the faithful meter was not available in this run (statements and seconds only)."),
        "",
        "- Each system and workload on a fresh SQLite file seeded with the same orders; one process per system, "
        "one after the other; ratios are against plain SQLAlchemy measured in this run.",
        f"- wall s: median of {meta['repeat']} runs (each on a fresh database) after one warm-up cycle; rows "
        "and statements are the same in every run (checked).",
        "- of which history: rows written by statements on tables other than `orders` (the rest is the app's "
        "own rows, identical for every system).",
        "- history rows: rows the workload added to the history tables (WAL rows for parquedb-orm; version + "
        "transaction rows for Continuum and sqlalchemy-history) / the versions or events they hold.",
        "- versions #1 / #N: read back after the workload with each library's own API (`pq.history(session, obj)`, "
        "`obj.versions`); history captured = both orders have their seed version plus the workload's (2).",
        "",
        "## SQLite settings, read back with PRAGMA",
        "",
        "| system | journal_mode | synchronous |",
        "|---|---|---|",
    ]
    for name, r in results.items():
        seen = sorted({(w["pragmas"]["journal_mode"], w["pragmas"]["synchronous"])
                       for w in r.get("workloads", {}).values() if "pragmas" in w})
        j = " / ".join(s[0] for s in seen) or "?"
        s = " / ".join(s[1] for s in seen) or "?"
        lines.append(f"| {r.get('label', name)} | {j} | {s} |")

    base = results.get(BASELINE, {}).get("workloads", {})
    head = ("| system | rows written | of which history | rows read | statements | wall s | written ÷ plain "
            "| read ÷ plain | time ÷ plain | history rows (SQL rows / versions) | versions #1 / #N "
            "| history captured |")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"

    def row(label: str, c: dict[str, Any], b: dict[str, Any] | None, hist: str, versions: str, cap: str) -> str:
        hw = None if c["rows_written"] is None or c["app_rows_written"] is None else (
            c["rows_written"] - c["app_rows_written"])
        def vs(key: str) -> str:
            return _ratio(c[key], None if b is None else b[key])

        return (f"| {label} | {_int(c['rows_written'])} | {_int(hw)} | {_int(c['rows_read'])} | "
                f"{c['statements']:,} | {c['seconds']:.3f} | {vs('rows_written')} | {vs('rows_read')} | "
                f"{vs('seconds')} | {hist} | {versions} | {cap} |")

    # seed
    first = next(iter(WORKLOADS))
    lines += ["", f"## {SEED_LABEL.format(n=n)}", "", head, rule]
    b_seed = base.get(first, {}).get("seed")
    for name, r in results.items():
        res = r.get("workloads", {}).get(first, {})
        if "seed" not in res:
            lines.append(f"| {r.get('label', name)} | failed: {res.get('error', r.get('error', '?'))} |")
            continue
        hist = "—"
        if r["keeps_history"]:
            rows, records = res["history_after_seed"]
            hist = f"{rows:,} / {records:,}"
        lines.append(row(r["label"], res["seed"], b_seed, hist, "—", "—"))

    for key, label in WORKLOADS.items():
        lines += ["", f"## {label.format(n=n)}", "", head, rule]
        b = base.get(key, {}).get("counts")
        for name, r in results.items():
            res = r.get("workloads", {}).get(key)
            if res is None:
                continue
            if "counts" not in res:
                lines.append(f"| {r.get('label', name)} | failed: {res.get('error', '?')} |")
                continue
            hist = "—"
            if r["keeps_history"]:
                hist = f"{res['history_rows_added']:,} / {res['history_records_added']:,}"
            v = res.get("versions") or [None, None]
            versions = "—" if v[0] is None else f"{v[0]} / {v[1]}"
            lines.append(row(r["label"], res["counts"], b, hist, versions, _captured(r, res)))
            if "flush" in res:
                f = res["flush"]
                lines.append(f"| ↳ then `flush()` to Parquet | {_int(f['rows_written'])} | "
                             f"{_int(f['rows_written'])} | {_int(f['rows_read'])} | {f['statements']:,} | "
                             f"{f['seconds']:.3f} | | | | | | |")

    lines += ["", "## Reading one order's history back (order #1, after the workload)", "",
              "| system | workload | versions | rows read | statements | wall s |", "|---|---|---:|---:|---:|---:|"]
    for r in results.values():
        if not r.get("keeps_history"):
            continue
        for key, label in WORKLOADS.items():
            res = r.get("workloads", {}).get(key, {})
            if "history_read" not in res:
                continue
            h = res["history_read"]
            lines.append(f"| {r['label']} | {label.format(n=n)} | {res['versions'][0]} | {_int(h['rows_read'])} "
                         f"| {h['statements']:,} | {h['seconds']:.4f} |")

    notes = [f"- {r['label']}: {note}" for r in results.values() for note in r.get("notes", [])]
    errors = [f"- {r.get('label', name)}: {e.get('workload', '?')}: {e['type']}: {e['message']}"
              for name, r in results.items() for e in r.get("errors", [])]
    if notes:
        lines += ["", "Notes:", "", *notes]
    if errors:
        lines += ["", "Errors:", "", *errors]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Parent: re-exec, one worker per system, report
# --------------------------------------------------------------------------


def _reexec(args: argparse.Namespace) -> None:
    """Once: move to the benchmark venv's interpreter and load the metered libsqlite3."""
    if os.environ.get(_CHILD_FLAG):
        return
    python = sys.executable
    if not args.no_venv:
        if not VENV_PYTHON.exists():
            _log(f"creating the benchmark virtualenv: bash {SETUP_SCRIPT.relative_to(REPO)}")
            subprocess.run(["bash", str(SETUP_SCRIPT)], check=True, stdin=subprocess.DEVNULL)
        python = str(VENV_PYTHON)
    env = dict(os.environ)
    try:
        from parquedb_meter import metered_env

        env = metered_env(env)
    except Exception as exc:
        _log(f"WARNING: faithful meter unavailable ({type(exc).__name__}: {exc}); rows will be n/a")
    env[_CHILD_FLAG] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    os.execve(python, [python, "-m", "benchmarks.tracked", *sys.argv[1:]], env)


def _versions() -> dict[str, str]:
    import sqlite3
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("parquedb-orm", "sqlalchemy", "sqlalchemy-continuum", "sqlalchemy-history"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    out["sqlite"] = sqlite3.sqlite_version
    commit = _commit()
    if commit:
        out["parquedb-orm"] += f" (commit {commit})"
    return out


def _commit() -> str | None:
    """The checkout's commit, "+ local changes" when parquedb_orm/ or benchmarks/ differ from it."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, stdin=subprocess.DEVNULL).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "parquedb_orm", "benchmarks"],
                               capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha} + local changes" if dirty else sha


def _run_worker(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    result = root / f"{name}.json"
    cmd = [sys.executable, "-m", "benchmarks.tracked", "--worker", name, "--size", str(args.size),
           "--repeat", str(args.repeat),
           "--workdir", str(root), "--result", str(result)]
    _log(f"{name}: start")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False, timeout=args.timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        code = None
    _log(f"{name}: done in {time.perf_counter() - t0:,.1f} s")
    if result.exists() and code == 0:
        res: dict[str, Any] = json.loads(result.read_text())
        return res
    why = f"timed out after {args.timeout:,.0f} s" if code is None else f"worker exited with code {code}"
    return {"system": name, "label": name, "keeps_history": False, "workloads": {}, "notes": [],
            "errors": [{"workload": "?", "type": "WorkerDied", "message": why}], "error": why}


def _systems() -> dict[str, Any]:
    from benchmarks.systems.orders import SYSTEMS

    return dict(SYSTEMS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tracked",
        description="Tracked-model benchmark: parquedb-orm's pq.Tracked vs SQLAlchemy-Continuum, sqlalchemy-history, "
                    "plain SQLAlchemy and raw sqlite3 on one Order model, measured with the faithful SQLite row "
                    "meter (see the module docstring and docs/benchmarks.md).",
        epilog="systems: " + ", ".join(f"{k} = {v.label}" for k, v in _systems().items()))
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"orders seeded and updated per workload (default {DEFAULT_SIZE:,})")
    parser.add_argument("--quick", action="store_true", help=f"small run: --size {QUICK_SIZE}")
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS,
                        help=f"comma-separated, in order (default {DEFAULT_SYSTEMS})")
    parser.add_argument("--out", default=str(HERE / "results"),
                        help="folder for tracked.md (default benchmarks/results)")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON to PATH")
    parser.add_argument("--keep", metavar="DIR", help="keep every database and archive in DIR (default: a temp dir)")
    parser.add_argument("--no-venv", action="store_true", help="run with the current interpreter, not benchmarks/.venv")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"cycles per workload, each on a fresh database; seconds are the median, rows must "
                             f"not differ (default {DEFAULT_REPEAT})")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per system (default 600)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size = QUICK_SIZE
    if args.size < 2:
        parser.error("--size must be at least 2")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    if args.worker:
        res = run_system(args.worker, args.size, Path(args.workdir), repeat=args.repeat)
        Path(args.result).write_text(json.dumps(res, indent=1, default=str))
        return 0

    SYSTEMS = _systems()
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}: choose from {', '.join(SYSTEMS)}")
    if argv is None:
        _reexec(args)

    from parquedb_meter import faithful_available

    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="parquedb-tracked-") as tmp:
        root = Path(args.keep).resolve() if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for name in names:
            results[name] = _run_worker(name, args, root)
    elapsed = time.perf_counter() - t0

    cmd = "python -m benchmarks.tracked" + (" --quick" if args.quick else
                                            f" --size {args.size}" if args.size != DEFAULT_SIZE else "")
    if args.systems != DEFAULT_SYSTEMS:
        cmd += f" --systems {args.systems}"
    if args.repeat != DEFAULT_REPEAT:
        cmd += f" --repeat {args.repeat}"
    if args.no_venv:
        cmd += " --no-venv"
    meta = {
        "size": args.size,
        "repeat": args.repeat,
        "command": cmd,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
                   f"whole run {elapsed:,.0f} s",
        "versions": _versions(),
        "faithful": faithful_available() and all(r.get("faithful", False) for r in results.values()),
    }
    md = render_markdown(results, meta)
    print(md)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracked.md").write_text(md + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    _log(f"wrote {out / 'tracked.md'} ({elapsed:,.0f} s)")
    return 1 if any(r.get("errors") for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
