"""Metering of a whole process and the report (Markdown table + PNG chart).

Rows are counted by parquedb-orm's faithful SQLite meter (`parquedb_meter` (tools/meter)):
with the counter-carrying libsqlite3 loaded (LD_LIBRARY_PATH, see `metered_env()`),
every statement reports rows read and rows written exactly as Cloudflare D1 / Durable
Objects and Turso bill them. Here the meter listens on the `Engine` class, so it counts
every engine the system under test creates (eventsourcing makes its own, a restart makes
a new one) without the adapters having to hand their engines over.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from parquedb_meter import EngineMeter, Meter
from sqlalchemy.engine import Engine

# --------------------------------------------------------------------------
# Metering
# --------------------------------------------------------------------------


class ProcessMeter(EngineMeter):
    """An `EngineMeter` on every SQLite engine of this process (class-level listeners)."""

    def __init__(self) -> None:
        # EngineMeter reads only `engine.dialect.name` when it is built; every system
        # here runs on SQLite. Listening on the Engine class covers all engines.
        super().__init__(SimpleNamespace(dialect=SimpleNamespace(name="sqlite")), max_records=1)  # type: ignore[arg-type]
        self.engine = Engine  # type: ignore[assignment]

    @property
    def faithful(self) -> bool:
        return self._faithful


@dataclass
class Phase:
    key: str
    label: str
    ops: int
    statements: int = 0
    rows_read: int | None = None
    rows_written: int | None = None
    seconds: float = 0.0


class Recorder:
    """Per-phase deltas of a Meter plus wall time."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.phases: list[Phase] = []
        self.current: str | None = None

    @contextlib.contextmanager
    def phase(self, key: str, label: str, ops: int) -> Iterator[Phase]:
        ph = Phase(key, label, ops)
        self.current = key
        before = self.meter.snapshot()
        t0 = time.perf_counter()
        try:
            yield ph
        finally:
            ph.seconds = time.perf_counter() - t0
            after = self.meter.snapshot()
            ph.statements = int(after["statements"] or 0) - int(before["statements"] or 0)
            if after["rows_read"] is not None and before["rows_read"] is not None:
                ph.rows_read = after["rows_read"] - before["rows_read"]
                ph.rows_written = int(after["rows_written"] or 0) - int(before["rows_written"] or 0)
            self.phases.append(ph)
            self.current = None

    def as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.phases]


def percentile(values: list[int], q: float) -> float | None:
    """Nearest-rank percentile of nanosecond samples, in microseconds."""
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))
    return s[k] / 1000.0


def dir_bytes(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sql_bytes(files: list[Path]) -> dict[str, int]:
    db = sum(f.stat().st_size for f in files if f.exists())
    wal = sum(Path(f"{f}-wal").stat().st_size for f in files if Path(f"{f}-wal").exists())
    return {"db": db, "wal": wal, "total": db + wal}


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

PHASE_ORDER = ["open", "bulk", "comments", "updates", "links", "get_warm", "related", "find", "flush", "restart",
               "get_cold"]


def _n(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if v >= 100:
            return f"{v:,.0f}"
        if v >= 1:
            return f"{v:,.2f}"
        return f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ratio(alt: float | None, ours: float | None) -> str:
    if alt is None or ours is None:
        return "n/a"
    if ours == 0:
        return "∞" if alt else "1.0x"
    return f"{alt / ours:,.1f}x"


def _bytes(v: int | None) -> str:
    if v is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:,.0f} {unit}" if unit == "B" else f"{v:,.1f} {unit}"
        v /= 1024  # type: ignore[assignment]
    return str(v)


def _phase(res: dict[str, Any], key: str) -> dict[str, Any] | None:
    for p in res.get("phases", []):
        if p["key"] == key:
            return p  # type: ignore[no-any-return]
    return None


def _labels(results: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for res in results.values():
        for p in res.get("phases", []):
            seen.setdefault(p["key"], p["label"])
    return [(k, seen[k]) for k in PHASE_ORDER if k in seen]


def render_markdown(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """The whole report as Markdown (printed and written to blog.md)."""
    from benchmarks.systems import LABELS

    names = list(results)
    lines: list[str] = []
    add = lines.append
    add(f"# Blog benchmark — scale {meta['scale']:g}, seed {meta['seed']}")
    add("")
    add(f"`{meta['command']}` — {meta['date']}; {meta['machine']}")
    add("")
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    add(f"Versions: {versions}.")
    add("")
    faithful = all(r.get("faithful") for r in results.values())
    if faithful:
        add("Rows read / written: faithful SQLite meter (libSQL counters, as Cloudflare D1 / Durable Objects and "
            "Turso bill them). Every system on its own SQLite file in the same run, set to WAL journal and "
            "synchronous=NORMAL; the Totals table gives what each read back with PRAGMA on a connection of its "
            "own engine.")
    else:
        add("**The faithful meter was NOT active** (rows read / written are n/a); statements and seconds only.")
    add("")
    c = meta["counts"]
    add(f"Workload: {c['users']:,} users + {c['posts']:,} posts bulk-created; {c['comments']:,} comments, "
        f"{c['updates']:,} updates, {c['links']:,} links one per commit; {c['gets']:,} get, {c['related']:,} "
        f"related, {c['finds']:,} find; flush; cold restart; {c['cold_gets']:,} get.")
    add("")

    # -- totals ----------------------------------------------------------------
    add("## Totals")
    add("")
    add("| system | rows written | rows read | SQL statements | seconds | SQL bytes (db + -wal) | archive bytes "
        "| journal / synchronous read back |")
    add("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in names:
        r = results[name]
        t = r.get("total", {})
        b = r.get("bytes", {})
        err = r.get("error")
        label = LABELS.get(name, name) + (" **(failed)**" if err and err.get("fatal", True) else
                                          " **(errors)**" if err else "")
        add(f"| {label} | {_n(t.get('rows_written'))} | {_n(t.get('rows_read'))} | {_n(t.get('statements'))} | "
            f"{_n(t.get('seconds'))} | {_bytes(b.get('sql'))} | "
            f"{_bytes(b.get('archive')) if name == 'parquedb' else '—'} | {r.get('settings', 'n/a')} |")
    add("")

    # -- per phase, one table per metric -----------------------------------------
    phases = _labels(results)
    for metric, title in (("rows_written", "Rows written"), ("rows_read", "Rows read"),
                          ("statements", "SQL statements"), ("seconds", "Wall seconds")):
        add(f"## {title} per phase")
        add("")
        add("| phase | " + " | ".join(LABELS.get(n, n) for n in names) + " |")
        add("|---|" + "---:|" * len(names))
        for key, label in phases:
            cells = []
            for n in names:
                p = _phase(results[n], key)
                cells.append(_n(p.get(metric)) if p else "—")
            add(f"| {label} | " + " | ".join(cells) + " |")
        add("| **total** | " + " | ".join(f"**{_n(results[n].get('total', {}).get(metric))}**" for n in names) + " |")
        add("")

    # -- throughput and latency ------------------------------------------------------
    add("## Throughput and latency")
    add("")
    add("| system | bulk create (events/s) | single commits (events/s) | get warm p50 / p99 (µs) | "
        "get cold p50 / p99 (µs) | flush (events/s) |")
    add("|---|---:|---:|---:|---:|---:|")
    for n in names:
        tp = results[n].get("throughput", {})
        lat = results[n].get("latency", {})
        w = lat.get("get_warm", {})
        cold = lat.get("get_cold", {})
        add(f"| {LABELS.get(n, n)} | {_n(tp.get('bulk_events_per_s'))} | {_n(tp.get('single_events_per_s'))} | "
            f"{_n(w.get('p50_us'))} / {_n(w.get('p99_us'))} | {_n(cold.get('p50_us'))} / {_n(cold.get('p99_us'))} | "
            f"{_n(tp.get('flush_events_per_s')) if n == 'parquedb' else '—'} |")
    add("")

    # -- ratios ----------------------------------------------------------------
    if "parquedb" in results and len(names) > 1:
        ours = results["parquedb"].get("total", {})
        add("## parquedb-orm vs each alternative (alternative ÷ parquedb-orm; > 1 means parquedb-orm uses less)")
        add("")
        add("| alternative | rows written | rows read | seconds |")
        add("|---|---:|---:|---:|")
        for n in names:
            if n == "parquedb":
                continue
            alt = results[n].get("total", {})
            add(f"| {LABELS.get(n, n)} | {_ratio(alt.get('rows_written'), ours.get('rows_written'))} | "
                f"{_ratio(alt.get('rows_read'), ours.get('rows_read'))} | "
                f"{_ratio(alt.get('seconds'), ours.get('seconds'))} |")
        add("")

    # -- the floor ---------------------------------------------------------------
    floor = meta["floor"]
    add("## Floor")
    add("")
    add(f"Floor of the issue: one written row per single-op commit ({floor['commits']:,}) + one manifest row per "
        f"bulk file ({floor['bulk_files']}) = **{floor['rows']:,}** rows written.")
    if "parquedb" in results:
        pw = results["parquedb"].get("total", {}).get("rows_written")
        if pw is not None:
            add(f"parquedb-orm wrote {pw:,} rows = **{pw / floor['rows']:.2f}x the floor**"
                f" (phases 1-4 + flush: {meta.get('parquedb_write_phases', 'n/a')}).")
    add("")

    # -- cross-check ---------------------------------------------------------------
    add("## Same answers?")
    add("")
    keys = ["get_warm", "related", "find", "get_cold"]
    add("Digest of the data fields every read returned (ids and versions excluded; find compares the sorted "
        "views), per phase:")
    add("")
    add("| phase | " + " | ".join(LABELS.get(n, n) for n in names) + " |")
    add("|---|" + "---|" * len(names))
    for k in keys:
        digests = [results[n].get("digests", {}).get(k) for n in names]
        ref = results["parquedb"].get("digests", {}).get(k) if "parquedb" in results else digests[0]
        cells = []
        for d in digests:
            if d is None:
                cells.append("—")
            else:
                cells.append(f"`{d[:10]}`" + ("" if d == ref else " ≠"))
        add(f"| {k} | " + " | ".join(cells) + " |")
    add("")

    # -- notes and errors -------------------------------------------------------------
    notes = [(n, note) for n in names for note in results[n].get("notes", [])]
    for n in names:
        st = results[n].get("stats_before_restart") or {}
        if "flushes" in st:
            notes.append((n, f"flushes run by the policy + flush() before the restart: {st.get('flushes')}; "
                             f"group commits: {st.get('group_commits')}"))
        if st.get("last_flush_error"):
            notes.append((n, f"the policy's last flush failed: `{st['last_flush_error'][:600]}`"))
    errors = [(n, e) for n in names for e in (results[n].get("errors") or
                                               ([results[n]["error"]] if results[n].get("error") else []))]
    if notes or errors:
        add("## Notes")
        add("")
        for n, note in notes:
            add(f"- {LABELS.get(n, n)}: {note}")
        for n, err in errors:
            what = "failed" if err.get("fatal", True) else "error (run continued)"
            msg = " ".join(str(err.get("message")).split())[:1500]
            add(f"- **{LABELS.get(n, n)} {what} in phase `{err.get('phase')}`**: `{err.get('type')}: {msg}`")
        add("")
    return "\n".join(lines)


def render_chart(results: dict[str, dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    """Grouped bars per phase (log scale): rows written, rows read, seconds; plus totals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.systems import LABELS

    names = list(results)
    phases = [(k, lbl) for k, lbl in _labels(results) if k != "open"]
    colors = {"parquedb": "#1f77b4", "naive": "#d62728", "eventsourcing": "#2ca02c", "continuum": "#ff7f0e"}
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    width = 0.8 / max(1, len(names))
    xs = list(range(len(phases)))
    for ax, metric, title in ((axes[0][0], "rows_written", "rows written"), (axes[0][1], "rows_read", "rows read"),
                              (axes[1][0], "seconds", "wall seconds")):
        for i, n in enumerate(names):
            vals = []
            for k, _ in phases:
                p = _phase(results[n], k)
                v = p.get(metric) if p else None
                vals.append(v if v else 0)
            ax.bar([x + (i - (len(names) - 1) / 2) * width for x in xs], vals, width,
                   label=LABELS.get(n, n), color=colors.get(n))
        ax.set_yscale("symlog", linthresh=1e-3 if metric == "seconds" else 1)
        ax.set_title(f"{title} per phase (log)")
        ax.set_xticks(xs)
        ax.set_xticklabels([lbl for _, lbl in phases], rotation=35, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    ax = axes[1][1]
    metrics = [("rows_written", "rows written"), ("rows_read", "rows read"), ("statements", "statements")]
    for i, n in enumerate(names):
        t = results[n].get("total", {})
        vals = [t.get(m) or 0 for m, _ in metrics]
        ax.bar([x + (i - (len(names) - 1) / 2) * width for x in range(len(metrics))], vals, width,
               label=LABELS.get(n, n), color=colors.get(n))
    ax.set_yscale("log")
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([lbl for _, lbl in metrics])
    ax.set_title("totals (log)")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"parquedb-orm blog benchmark — scale {meta['scale']:g} (faithful SQLite row meter)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
