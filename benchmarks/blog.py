"""The blog benchmark: the same fixed-seed workload on parquedb-orm and the alternatives.

    python -m benchmarks.blog                      # scale 1.0, every system
    python -m benchmarks.blog --scale 0.1          # quick run
    python -m benchmarks.blog --systems parquedb,naive --out /tmp/bench

The command re-executes itself once: with the interpreter of `benchmarks/.venv` (created by
`benchmarks/setup_env.sh` when missing; `--no-venv` keeps the current one) and under
`parquedb_meter.metered_env()`, so the faithful row meter is active. Each system
then runs in its own worker process (`--worker NAME`), one after the other, on its own
SQLite file in a temporary directory; the parent prints the Markdown report and writes
`<out>/blog.md`, `<out>/blog.json` and `<out>/blog.png`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_PYTHON = HERE / ".venv" / "bin" / "python"
SETUP_SCRIPT = HERE / "setup_env.sh"
_CHILD_FLAG = "PARQUEDB_BENCH_REEXEC"
DEFAULT_SYSTEMS = "parquedb,naive,raw,eventsourcing,continuum"
DEFAULT_SEED = 20240505


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Worker: one system, the whole workload
# --------------------------------------------------------------------------


def _canon(doc: dict[str, Any] | None) -> Any:
    from benchmarks.workload import FIELDS

    if doc is None:
        return None
    keys = sorted({f for fs in FIELDS.values() for f in fs})
    return {k: doc[k] for k in keys if k in doc}


def _digest(items: list[Any]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def run_worker(name: str, scale: float, seed: int, workdir: Path, result: Path | None = None) -> dict[str, Any]:
    from benchmarks import systems
    from benchmarks.report import ProcessMeter, Recorder, dir_bytes, percentile, sql_bytes
    from benchmarks.workload import COMMENTS, POSTS, USERS, generate

    wl = generate(scale, seed)
    cls = systems.load(name)
    system = cls(workdir)
    pm = ProcessMeter().install()
    rec = Recorder(pm.meter)
    handles: dict[str, list[Any]] = {}
    lat: dict[str, list[int]] = {"get_warm": [], "get_cold": []}
    digests: dict[str, str] = {}
    out: dict[str, Any] = {"system": name, "faithful": pm.faithful, "scale": scale, "seed": seed, "error": None}
    flush_info: dict[str, Any] = {}
    stats_before_restart: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    opened = False

    def timed_gets(refs: list[tuple[str, int]], key: str) -> None:
        samples = lat[key]
        found = []
        get = system.get
        for ns, i in refs:
            h = handles[ns][i]
            t0 = time.perf_counter_ns()
            doc = get(ns, h)
            samples.append(time.perf_counter_ns() - t0)
            found.append(doc)
        digests[key] = _digest([_canon(d) for d in found])

    def step(key: str, label: str, ops: int) -> Any:
        _log(f"{name}: {label} ({ops:,} ops)")
        return rec.phase(key, label, ops)

    def summarize(bytes_open: dict[str, int], bytes_closed: dict[str, int] | None, stats: dict[str, Any],
                  current: str | None) -> dict[str, Any]:
        phases = rec.as_dicts()
        total: dict[str, Any] = {"statements": sum(p["statements"] for p in phases),
                                 "seconds": sum(p["seconds"] for p in phases)}
        if all(p["rows_read"] is not None for p in phases):
            total["rows_read"] = sum(p["rows_read"] for p in phases)
            total["rows_written"] = sum(p["rows_written"] for p in phases)
        else:
            total["rows_read"] = total["rows_written"] = None

        def secs(*keys: str) -> float | None:
            vals = [p["seconds"] for p in phases if p["key"] in keys]
            return sum(vals) if len(vals) == len(keys) else None

        tp: dict[str, Any] = {}
        s = secs("bulk")
        if s:
            tp["bulk_events_per_s"] = (len(wl.users) + len(wl.posts)) / s
        s = secs("comments", "updates", "links")
        if s:
            tp["single_events_per_s"] = wl.single_op_commits / s
        s = secs("flush")
        flushed = flush_info.get("flushed_events", flush_info.get("unflushed_before"))
        if s and isinstance(flushed, (int, float)) and flushed:
            tp["flush_events_per_s"] = flushed / s
            tp["flushed_events"] = flushed
        out.update(
            current_phase=current,
            errors=errors,
            error=next((e for e in errors if e["fatal"]), errors[0] if errors else None),
            phases=phases,
            total=total,
            throughput=tp,
            latency={k: {"n": len(v), "p50_us": percentile(v, 50), "p99_us": percentile(v, 99)}
                     for k, v in lat.items()},
            bytes={"sql": bytes_open["total"], "sql_db": bytes_open["db"], "sql_wal": bytes_open["wal"],
                   "sql_after_close": (bytes_closed or {}).get("total"), "archive": dir_bytes(system.archive_dir())},
            flush=flush_info,
            stats=stats,
            stats_before_restart=stats_before_restart,
            notes=system.notes,
            digests=digests,
        )
        if result is not None:
            tmp = result.with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=1, default=str))
            tmp.replace(result)
        return out

    def checkpoint(current: str | None) -> None:
        """Partial results after every phase: a worker stopped by the parent's timeout still reports."""
        if result is not None and opened:
            summarize(sql_bytes(system.sql_files()), None, {}, current)

    class Stop(Exception):
        pass

    def fail(exc: BaseException, fatal: bool) -> None:
        tb = traceback.format_exc()
        phase = rec.current or (rec.phases[-1].key if rec.phases else "?")
        _log(f"{name}: FAILED in phase {phase}: {type(exc).__name__}: {exc}\n{tb}")
        errors.append({"phase": phase, "type": type(exc).__name__, "message": str(exc)[:3000],
                       "traceback": tb[-6000:], "fatal": fatal})

    def run(key: str, label: str, ops: int, fn: Any, fatal: bool = True) -> Any:
        """One phase; a failure of a read / flush phase is recorded and the run goes on."""
        checkpoint(key)
        try:
            with step(key, label, ops):
                return fn()
        except Exception as exc:
            fail(exc, fatal)
            if fatal:
                raise Stop from exc
            return None
        finally:
            checkpoint(None)

    def bulk() -> None:
        handles[USERS] = system.bulk_create(USERS, wl.users)
        handles[POSTS] = system.bulk_create(POSTS, wl.posts)

    def comments() -> None:
        handles[COMMENTS] = [system.create(COMMENTS, c) for c in wl.comments]

    def updates() -> None:
        for ns, i, upd in wl.updates:
            system.update(ns, handles[ns][i], upd)

    def links() -> None:
        for fns, fi, pred, tns, ti in wl.links:
            system.link(fns, handles[fns][fi], pred, tns, handles[tns][ti])

    def related() -> None:
        rel = [system.related(ns, handles[ns][i], pred, d) for ns, i, pred, d in wl.related]
        results["related"] = rel

    def find() -> None:
        results["find"] = [system.find(ns, f, gt, lim) for ns, f, gt, lim in wl.finds]

    results: dict[str, Any] = {}
    try:
        run("open", "0 open (schema)", 1, system.open)
        opened = True
        out["settings"] = system.settings_read_back()  # on the system's own connection, not metered
        run("bulk", "1 bulk create", len(wl.users) + len(wl.posts), bulk)
        run("comments", "2 comments (1/commit)", len(wl.comments), comments)
        run("updates", "3 updates (1/commit)", len(wl.updates), updates)
        run("links", "4 links (1/commit)", len(wl.links), links)
        run("get_warm", "5 get (warm)", len(wl.gets), lambda: timed_gets(wl.gets, "get_warm"), fatal=False)
        run("related", "6 related", len(wl.related), related, fatal=False)
        if "related" in results:
            digests["related"] = _digest([sorted(json.dumps(_canon(x), sort_keys=True) for x in r)
                                          for r in results["related"]])
        run("find", "7 find", len(wl.finds), find, fatal=False)
        if "find" in results:
            digests["find"] = _digest([[d.get(f) for d in r]
                                       for r, (_ns, f, _gt, _l) in zip(results["find"], wl.finds, strict=True)])
        flush_info = run("flush", "8 flush", 1, system.flush, fatal=False) or {}
        stats_before_restart = system.stats()
        run("restart", "9a cold restart", 1, system.restart)
        run("get_cold", "9b get (cold)", len(wl.cold_gets), lambda: timed_gets(wl.cold_gets, "get_cold"),
            fatal=False)
    except Stop:
        pass
    except Exception as exc:
        fail(exc, True)

    bytes_open = sql_bytes(system.sql_files()) if opened else {"db": 0, "wal": 0, "total": 0}
    stats = system.stats() if opened else {}
    try:
        system.close()
    except Exception as exc:
        system.notes.append(f"close() raised {type(exc).__name__}: {exc}")
    pm.uninstall()
    bytes_closed = sql_bytes(system.sql_files())
    return summarize(bytes_open, bytes_closed, stats, None)


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
        # this interpreter may lack what the meter imports (a bare python3): ask the one
        # the workers run on, which the benchmark venv equips
        probe = ("import json, os, sys; sys.path.insert(0, sys.argv[1]); from parquedb_meter import metered_env; "
                 "print(json.dumps(metered_env(dict(os.environ))))")  # fmt: skip
        done = subprocess.run([python, "-c", probe, str(REPO / "tools" / "meter")], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, check=False)  # fmt: skip
        if done.returncode == 0:
            env = json.loads(done.stdout)
        else:
            why = done.stderr.strip().splitlines()[-1:] or [f"{type(exc).__name__}: {exc}"]
            _log(f"WARNING: faithful meter unavailable ({why[0]}); rows will be n/a")
    env[_CHILD_FLAG] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    argv = [python, "-m", "benchmarks.blog", *sys.argv[1:]]
    os.execve(python, argv, env)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("parquedb-orm", "sqlalchemy", "eventsourcing", "eventsourcing-sqlalchemy", "sqlalchemy-continuum"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    import sqlite3

    out["sqlite"] = sqlite3.sqlite_version
    return out


def _run_system(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    workdir = root / name
    result_path = root / f"{name}.json"
    cmd = [sys.executable, "-m", "benchmarks.blog", "--worker", name, "--scale", str(args.scale),
           "--seed", str(args.seed), "--workdir", str(workdir), "--result", str(result_path),
           "--parquedb-policy", args.parquedb_policy]
    timeout = args.timeout if args.timeout > 0 else max(120.0, 600.0 * args.scale)
    t0 = time.perf_counter()
    timed_out = False
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False, timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:  # subprocess.run killed the worker
        timed_out = True
        code = None
    wall = time.perf_counter() - t0
    res: dict[str, Any] = json.loads(result_path.read_text()) if result_path.exists() else {"system": name}
    if timed_out:
        done = [ph["key"] for ph in res.get("phases", [])]
        phase = res.get("current_phase") or (f"after {done[-1]}" if done else "open")
        err = {"phase": phase, "type": "Timeout", "fatal": True,
               "message": f"stopped after {timeout:,.0f} s (--timeout) during phase {phase}; numbers are partial"}
        res.setdefault("errors", []).append(err)
        res["error"] = err
        _log(f"{name}: TIMEOUT after {timeout:,.0f} s in phase {phase}")
    elif not result_path.exists() or code != 0:
        err = {"phase": res.get("current_phase") or "?", "type": "WorkerDied", "fatal": True,
               "message": f"worker exited with code {code}"}
        res.setdefault("errors", []).append(err)
        res["error"] = err
    res["process_seconds"] = wall
    _log(f"{name}: done in {wall:,.1f} s")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.blog", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count (default 1.0)")
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated (default {DEFAULT_SYSTEMS})")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for blog.md / blog.png / blog.json")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--keep", metavar="DIR", help="keep the databases and archive in DIR (default: a temp dir)")
    parser.add_argument("--no-venv", action="store_true", help="run with the current interpreter")
    parser.add_argument("--parquedb-policy", choices=("default", "manual"), default="default",
                        help="parquedb-orm flush policy: pq.FlushPolicy() (default) or FlushPolicy(mode='manual'), "
                             "i.e. only the explicit flush of phase 8 (diagnostic)")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds allowed per system (default max(120, 600 x scale)); partial numbers are kept")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        os.environ["PARQUEDB_BENCH_POLICY"] = args.parquedb_policy
        run_worker(args.worker, args.scale, args.seed, Path(args.workdir), Path(args.result))
        return 0

    if argv is None:
        _reexec(args)

    from benchmarks.systems import SYSTEMS
    from benchmarks.workload import generate

    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}: choose from {', '.join(SYSTEMS)}")
    wl = generate(args.scale, args.seed)
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="parquedb-bench-") as tmp:
        root = Path(args.keep).resolve() if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for name in names:
            results[name] = _run_system(name, args, root)
    elapsed = time.perf_counter() - t0

    pq = results.get("parquedb", {})
    write_phases = [p for p in pq.get("phases", []) if p["key"] in ("bulk", "comments", "updates", "links", "flush")]
    cmd = "python -m benchmarks.blog" + (f" --scale {args.scale:g}" if args.scale != 1.0 else "")
    if args.systems != DEFAULT_SYSTEMS:
        cmd += f" --systems {args.systems}"
    if args.parquedb_policy != "default":
        cmd += f" --parquedb-policy {args.parquedb_policy}"
    meta = {
        "scale": args.scale,
        "seed": args.seed,
        "command": cmd,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
                   f"whole run {elapsed:,.0f} s",
        "versions": _versions(),
        "counts": wl.counts.__dict__,
        "floor": {"commits": wl.single_op_commits, "bulk_files": wl.bulk_calls,
                  "rows": wl.single_op_commits + wl.bulk_calls},
        "parquedb_write_phases": (f"{sum(p['rows_written'] or 0 for p in write_phases):,}" if write_phases else None),
    }
    from benchmarks.report import render_chart, render_markdown

    md = render_markdown(results, meta)
    print(md)
    (out_dir / "blog.md").write_text(md + "\n")
    (out_dir / "blog.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    try:
        render_chart(results, meta, out_dir / "blog.png")
    except Exception as exc:
        _log(f"chart not written: {type(exc).__name__}: {exc}")
    _log(f"wrote {out_dir / 'blog.md'}, {out_dir / 'blog.png'}, {out_dir / 'blog.json'} ({elapsed:,.0f} s)")
    return 1 if any(r.get("error") for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
