"""`parquedb demo` and `parquedb bench`: a small blog workload on the store, and what it
cost in SQL next to two other ways of keeping history, all measured in the same run.

Three systems run the same operations (cli/workload.py), each on its own SQLite file with
the same settings, one after the other, metered by the same counters:
- parquedb-orm: `ParqueDB` calls and a tracked ORM model (`pq.Tracked`) in an enabled
  sessionmaker, then one flush to the Parquet archive (its SQL is counted too);
- one row per change: live rows plus an audit table (cli/audit.py), plain SQLAlchemy;
- SQLAlchemy-Continuum, when installed, in a subprocess (cli/continuum_run.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from parquedb_orm.archive.policy import FlushPolicy
from parquedb_orm.cli import workload
from parquedb_orm.cli.audit import AuditStore
from parquedb_orm.cli.common import Output, UsageError, parse_url, sqlite_path
from parquedb_orm.orm.install import enable
from parquedb_orm.orm.tracked import Tracked

DEFAULT_URL = "sqlite:///parquedb-demo.db"
DEFAULT_ARCHIVE = "parquedb-demo-archive"
NOT_INSTALLED = "not installed (pip install parquedb-orm[demo])"
SYSTEMS = ("parquedb", "row_per_change", "continuum")
LABELS = {
    "parquedb": "parquedb-orm",
    "row_per_change": "row per change (audit table)",
    "continuum": "SQLAlchemy-Continuum",
}
#: what each measured figure is, exactly
METRICS = (
    ("statements", "SQL statements (BEGIN/COMMIT not counted)"),
    ("rows_written", "rows written (inserted + UPDATE/DELETE rowcount; index entries not counted)"),
    ("rows_returned", "rows returned to SQLAlchemy (fetched from cursors)"),
    ("exact_rows_read", "rows read, exact (SQLite's counters: every row a statement visits)"),
    ("exact_rows_written", "rows written, exact (SQLite's counters: table rows + index entries)"),
    ("rows_stored", "SQL rows stored at the end (all tables)"),
    ("file_bytes", "SQLite bytes in use at the end (free pages not counted)"),
    ("archive_bytes", "Parquet archive bytes"),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        parents=parents,
        help="run a small workload and show what it cost, next to two other layouts",
        description="Create a store (recreated on each run), run a small blog workload (users, posts, comments, "
        "links, updates, a tracked ORM model), flush it to Parquet, and print what it cost in SQL next to a "
        "one-row-per-change layout and SQLAlchemy-Continuum, measured in the same run.",
    )
    demo.add_argument(
        "--url",
        help=f"a SQLite file URL (default: {DEFAULT_URL}; not $PARQUEDB_URL: the demo "
        "deletes and recreates its database on each run)",
    )
    demo.add_argument("--archive", default=DEFAULT_ARCHIVE, help=f"the archive folder (default: ./{DEFAULT_ARCHIVE})")
    demo.add_argument("--scale", type=_positive, default=1, help="workload size: 1 = 250 commits (default 1)")
    demo.set_defaults(func=run_demo)

    bench = sub.add_parser(
        "bench",
        parents=parents,
        help="the demo's cost table at a bigger scale (in a temporary folder)",
        description="The demo's workload at --scale (default 10: 2,500 commits per system) in a temporary "
        "folder, deleted afterwards; prints the same cost table.",
    )
    bench.add_argument("--scale", type=_positive, default=10, help="workload size (default 10)")
    bench.set_defaults(func=run_bench)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# --------------------------------------------------------------------------- the tracked model


class _Base(DeclarativeBase):
    pass


class DemoOrder(Tracked, _Base):
    """The demo's tracked ORM model: each insert / update is an event with the row."""

    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    total_cents: Mapped[int] = mapped_column(Integer)


# --------------------------------------------------------------------------- systems


@dataclass
class Measured:
    metrics: dict[str, int | None]
    seconds: float
    detail: dict[str, Any]


def _stored(path: Path) -> tuple[int, int]:
    """(rows in every table, bytes of the pages in use), read outside SQLAlchemy (not
    metered). Free pages are left out: the store's WAL retirement drops and re-creates its
    table (no written rows), which leaves free pages in the file until a VACUUM."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        names = [
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                f"AND name NOT LIKE 'sqlite_%' AND name != '{DEMO_TABLE}'"
            )
        ]
        rows = sum(int(con.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0]) for n in names)
        pages = int(con.execute("PRAGMA page_count").fetchone()[0]) - int(
            con.execute("PRAGMA freelist_count").fetchone()[0]
        )
        size = pages * int(con.execute("PRAGMA page_size").fetchone()[0])
    finally:
        con.close()
    return rows, size


def run_parquedb(db_path: Path, archive: Path, wl: workload.Workload, out: Output, bar: Any) -> Measured:
    engine = workload.counted_engine(str(db_path))
    _Base.metadata.create_all(engine)  # the application's own table
    session = sessionmaker(engine, expire_on_commit=False)
    db = enable(session, archive=str(archive), policy=FlushPolicy(mode="manual"))
    task = bar.add_task("parquedb-orm", total=len(wl.ops) + 1)
    refs: dict[str, str] = {}
    orders: dict[str, int] = {}
    t0 = time.perf_counter()
    meter = workload.METER.install()
    before = meter.snapshot()
    try:
        for kind, ns, key, payload in wl.ops:
            if kind == "create":
                refs[key] = f"{ns}/{db.create(ns, payload)['$id'].split('/', 1)[1]}"
            elif kind == "update":
                ns_, eid = refs[key].split("/", 1)
                db.update(ns_, eid, payload)
            elif kind == "link":
                predicate, _to_ns, to_key = payload
                db.link(refs[key], predicate, refs[to_key])
            elif kind == "order_create":
                with session() as s:
                    order = DemoOrder(**payload)
                    s.add(order)
                    s.commit()
                    orders[key] = order.id
            else:
                with session() as s:
                    found = s.get(DemoOrder, orders[key])
                    assert found is not None
                    found.status = payload["status"]
                    s.commit()
            bar.advance(task)
        committed = db.stats()
        bar.update(task, description="parquedb-orm: flush to Parquet")
        result = db.flush()
        bar.advance(task)
        after = meter.snapshot()
    finally:
        meter.uninstall()
        db.close()
        engine.dispose()
    seconds = time.perf_counter() - t0
    rows, size = _stored(db_path)
    metrics = {**workload.delta(after, before), "rows_stored": rows, "file_bytes": size, "archive_bytes": result.bytes}
    detail = {"commits": committed["commits"], "flush": result.as_dict(), "example_ref": refs.get("p0")}
    return Measured(metrics, seconds, detail)


def run_row_per_change(db_path: Path, wl: workload.Workload, out: Output, bar: Any) -> Measured:
    engine = workload.counted_engine(str(db_path))
    store = AuditStore(engine)
    store.setup()
    task = bar.add_task(LABELS["row_per_change"], total=len(wl.ops))
    ids: dict[str, int] = {}
    t0 = time.perf_counter()
    meter = workload.METER.install()
    before = meter.snapshot()
    try:
        for kind, ns, key, payload in wl.ops:
            if kind in ("create", "order_create"):
                ids[key] = store.create(ns, payload)
            elif kind in ("update", "order_update"):
                store.update(ns, ids[key], payload if kind == "update" else {"$set": payload})
            else:
                predicate, to_ns, to_key = payload
                store.link(ns, ids[key], predicate, to_ns, ids[to_key])
            bar.advance(task)
        after = meter.snapshot()
    finally:
        meter.uninstall()
        engine.dispose()
    seconds = time.perf_counter() - t0
    rows, size = _stored(db_path)
    metrics = {**workload.delta(after, before), "rows_stored": rows, "file_bytes": size, "archive_bytes": None}
    return Measured(metrics, seconds, {})


def continuum_installed() -> bool:
    try:
        return importlib.util.find_spec("sqlalchemy_continuum") is not None
    except (ImportError, ValueError):
        return False


def run_continuum(db_path: Path, scale: int, bar: Any) -> Measured | str:
    """Measured, or why not (a text for the table's column)."""
    if not continuum_installed():
        return NOT_INSTALLED
    task = bar.add_task(f"{LABELS['continuum']} (subprocess)", total=1)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "parquedb_orm.cli.continuum_run", str(db_path), str(scale)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    bar.advance(task)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed: {last}"
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    rows, size = _stored(db_path)
    metrics = {
        **workload.delta(data["after"], data["before"]),
        "rows_stored": rows,
        "file_bytes": size,
        "archive_bytes": None,
    }
    return Measured(metrics, time.perf_counter() - t0, {})


# --------------------------------------------------------------------------- the commands


#: what marks a database and an archive folder as the demo's own: only those are deleted
DEMO_TABLE = "parquedb_demo"
DEMO_MARK = ".parquedb-demo"


def _recreate(db_path: Path, archive: Path) -> list[str]:
    """Delete the previous demo's files, refusing anything the demo did not make (its
    marker table / file missing): a store of yours is never deleted."""
    removed: list[str] = []
    if db_path.exists():
        con = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError:
            tables = {"(not a SQLite database)"}
        finally:
            con.close()
        if DEMO_TABLE not in tables and (tables or db_path.stat().st_size):
            raise UsageError(
                f"{db_path} is not a parquedb demo database (tables: {', '.join(sorted(tables))}): give another --url"
            )
        for suffix in ("", "-wal", "-shm", "-journal"):
            extra = Path(f"{db_path}{suffix}")
            if extra.exists():
                extra.unlink()
        removed.append(str(db_path))
    if archive.exists():
        if not archive.is_dir() or (any(archive.iterdir()) and not (archive / DEMO_MARK).is_file()):
            raise UsageError(
                f"{archive} is not a parquedb demo archive (no {DEMO_MARK} file in it): give another --archive"
            )
        shutil.rmtree(archive)
        removed.append(f"{archive}/")
    return removed


def _mark(db_path: Path, archive: Path) -> None:
    con = sqlite3.connect(db_path)
    try:
        con.execute(f"CREATE TABLE {DEMO_TABLE} (created_by TEXT)")
        con.execute(f"INSERT INTO {DEMO_TABLE} VALUES ('parquedb demo')")
        con.commit()
    finally:
        con.close()
    archive.mkdir(parents=True, exist_ok=True)
    (archive / DEMO_MARK).write_text("made by `parquedb demo`, which deletes this folder on its next run\n")


def run_demo(args: argparse.Namespace, out: Output) -> int:
    # not $PARQUEDB_URL: the demo deletes its database on each run, never the app's store
    raw = args.url or DEFAULT_URL
    args.resolved_url = raw
    url = parse_url(raw)
    db_path = sqlite_path(url)
    if db_path is None:
        raise UsageError(f"the demo runs on a SQLite file (it deletes and recreates it): got {raw}")
    archive = Path(args.archive)
    removed = _recreate(db_path, archive)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    _mark(db_path, archive)
    if not out.json:
        out.line(
            f"demo: {'recreated' if removed else 'created'} {db_path} and {archive}/ "
            f"({'previous run deleted' if removed else 'new'})"
        )
    report = _measure(db_path, archive, args.scale, out)
    _print_report(report, out, raw, archive)
    return 0


def run_bench(args: argparse.Namespace, out: Output) -> int:
    with tempfile.TemporaryDirectory(prefix="parquedb-bench-") as tmp:
        folder = Path(tmp)
        report = _measure(folder / "parquedb.db", folder / "archive", args.scale, out)
        _print_report(report, out, None, None)
    return 0


def _measure(db_path: Path, archive: Path, scale: int, out: Output) -> dict[str, Any]:
    wl = workload.build(scale)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Measured | str] = {}
    with tempfile.TemporaryDirectory(prefix="parquedb-demo-") as tmp, out.progress() as bar:
        results["parquedb"] = run_parquedb(db_path, archive, wl, out, bar)
        results["row_per_change"] = run_row_per_change(Path(tmp) / "row_per_change.db", wl, out, bar)
        results["continuum"] = run_continuum(Path(tmp) / "continuum.db", scale, bar)
    return {"scale": scale, "workload": wl.counts(), "commits": len(wl.ops), "results": results}


def _json_of(report: dict[str, Any], url: str | None, archive: Path | None) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for name, res in report["results"].items():
        if isinstance(res, Measured):
            systems[name] = {
                "label": LABELS[name],
                "measured": True,
                **res.metrics,
                "seconds": round(res.seconds, 3),
                **res.detail,
            }
        else:
            systems[name] = {"label": LABELS[name], "measured": False, "reason": res}
    return {
        "url": url,
        "archive": str(archive) if archive else None,
        "scale": report["scale"],
        "commits_per_system": report["commits"],
        "workload": report["workload"],
        "metrics": {key: label for key, label in METRICS},
        "systems": systems,
    }


def _print_report(report: dict[str, Any], out: Output, url: str | None, archive: Path | None) -> None:
    data = _json_of(report, url, archive)
    if out.json:
        out.emit_json(data)
        return
    out.table(
        f"what it did ({data['commits_per_system']} commits, one per operation)",
        ["operation", "count"],
        list(data["workload"].items()),
    )
    results = report["results"]
    exact = any(isinstance(r, Measured) and r.metrics.get("exact_rows_read") is not None for r in results.values())
    rows: list[list[Any]] = []
    for key, label in METRICS:
        if key.startswith("exact_") and not exact:
            continue
        row: list[Any] = [label]
        for name in SYSTEMS:
            res = results[name]
            row.append(res.metrics.get(key) if isinstance(res, Measured) else res)
        rows.append(row)
    rows.append(
        [
            "seconds (this machine)",
            *(round(r.seconds, 2) if isinstance(r, Measured) else None for r in (results[n] for n in SYSTEMS)),
        ]
    )
    out.table(
        "what it cost (measured in this run, each system on its own SQLite file)",
        ["", *(LABELS[n] for n in SYSTEMS)],
        rows,
    )
    if not exact:
        out.line(
            "rows read by SQLite are not visible to SQLAlchemy: 'rows returned' counts the rows fetched; "
            "the exact meter is a development tool (tools/meter)."
        )
    pq = results["parquedb"]
    if archive is not None and url is not None and isinstance(pq, Measured):
        flush = pq.detail["flush"]
        out.line(
            f"archive: {archive}/ ({flush['files']} Parquet files, {flush['events']} events and "
            f"{flush['rel_events']} link events flushed)"
        )
        out.line("try it with DuckDB:")
        out.line(
            f"  duckdb -c \"SELECT ns, op, count(*) FROM read_parquet('{archive}/events/**/*.parquet', "
            'hive_partitioning = true) GROUP BY ALL ORDER BY ALL"'
        )
        out.line("or the same through the store (its WAL tail included):")
        out.line(
            f'  parquedb sql --url {url} --archive {archive} "SELECT ns, op, count(*) FROM events '
            'GROUP BY ALL ORDER BY ALL"'
        )
        if pq.detail.get("example_ref"):
            out.line(f"  parquedb inspect --url {url} --archive {archive} {pq.detail['example_ref']}")
