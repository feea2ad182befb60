"""`parquedb flush | stats | inspect | export | sql`: one store, given by --url and --archive."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import URL, func, select

from parquedb_orm.archive.policy import FlushPolicy
from parquedb_orm.cli.common import (
    CommandError,
    Output,
    UsageError,
    add_archive,
    add_url,
    archive_of,
    parse_url,
    readonly_engine,
    require_existing,
    url_of,
)
from parquedb_orm.db import ParqueDB
from parquedb_orm.sql import manifest
from parquedb_orm.sql.migrations import schema_status
from parquedb_orm.sql.models import ArchiveFile, Counter, EventsWal, RelsWal

#: the DuckDB views of db.duckdb() (archive/analytics.py), exported one file each
VIEWS = ("events", "rels", "entities")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    fl = sub.add_parser(
        "flush",
        parents=parents,
        help="move the store's committed WAL events to the Parquet archive",
        description="Flush every committed event in the WAL tables to the archive now.",
    )
    add_url(fl)
    add_archive(fl, required_for="flush")
    fl.set_defaults(func=flush)

    st = sub.add_parser(
        "stats",
        parents=parents,
        help="WAL rows, unflushed events and archive files (read-only)",
        description="WAL rows and events per namespace, what is not flushed yet, the archive's "
        "files and bytes per kind. Reads only.",
    )
    add_url(st)
    st.set_defaults(func=stats)

    ins = sub.add_parser(
        "inspect",
        parents=parents,
        help="an entity: state, version and history (read-only)",
        description="Print one entity's current state, version and every event of its history.",
    )
    ins.add_argument("ref", metavar="NS/ID", help="the entity, e.g. users/Uk")
    add_url(ins)
    add_archive(ins, required_for="read flushed entities")
    ins.set_defaults(func=inspect)

    ex = sub.add_parser(
        "export",
        parents=parents,
        help="the whole store as Parquet (or Iceberg) files",
        description="Flush, then write the store's events, rels and current entities as one "
        "file per table (Parquet), or as Iceberg tables with --format iceberg.",
    )
    ex.add_argument("--to", required=True, metavar="PATH", help="a folder (created; must be empty if it exists)")
    ex.add_argument("--format", choices=("parquet", "iceberg"), default="parquet", help="default: parquet")
    add_url(ex)
    add_archive(ex, required_for="flush before exporting")
    ex.set_defaults(func=export)

    sq = sub.add_parser(
        "sql",
        parents=parents,
        help="a DuckDB query over the views events, rels and entities",
        description="Run one DuckDB query over the archive's views events, rels and entities "
        "(the WAL tail included) and print its rows.",
    )
    sq.add_argument("query", help='e.g. "SELECT ns, count(*) FROM entities GROUP BY ns"')
    add_url(sq)
    add_archive(sq, required_for="read flushed events")
    sq.set_defaults(func=sql)


# --------------------------------------------------------------------------- opening


def _archive_files(url: URL) -> int:
    engine = readonly_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(ArchiveFile)).scalar_one())
    finally:
        engine.dispose()


def require_store(url: URL) -> None:
    """The database holds the store's tables (read-only check), else say what to run."""
    engine = readonly_engine(url)
    try:
        status = schema_status(engine)
    finally:
        engine.dispose()
    if status.missing_tables:
        where = url.render_as_string(hide_password=True)
        missing = ", ".join(sorted(status.missing_tables))
        raise CommandError(
            f"no parquedb store in {where} (missing tables: {missing}): run `parquedb upgrade --url URL`"
        )


@contextlib.contextmanager
def open_store(args: argparse.Namespace, *, need_archive: bool) -> Iterator[ParqueDB]:
    """The store, its schema checked (never created or upgraded here), flushing manual (a
    command flushes only when asked). A SQLite file must exist."""
    url = parse_url(url_of(args))
    require_existing(url)
    require_store(url)
    archive = archive_of(args)
    if archive is None:
        if need_archive:
            raise UsageError(f"{args.command} needs the archive: pass --archive PATH or set $PARQUEDB_ARCHIVE")
        files = _archive_files(url)
        if files:
            raise UsageError(f"this store has {files} archive files: pass --archive PATH or set $PARQUEDB_ARCHIVE")
    db = ParqueDB(
        url.render_as_string(hide_password=False), archive=archive, migrate="check", policy=FlushPolicy(mode="manual")
    )
    try:
        yield db
    finally:
        db.close()


# --------------------------------------------------------------------------- flush


def flush(args: argparse.Namespace, out: Output) -> int:
    with open_store(args, need_archive=True) as db:
        wal = collect_stats(parse_url(args.resolved_url))  # a new process knows no tail yet: ask SQL
        pending = wal["unflushed_events"] + wal["unflushed_rel_events"]
        with out.progress() as bar:
            task = bar.add_task("flushing the WAL to Parquet", total=1)
            result = db.flush()
            bar.update(task, completed=1)
        done = {"unflushed_before": pending, **result.as_dict(), "flushes": db.stats()["flushes"]}
    if out.json:
        out.emit_json(done)
        return 0
    out.table(
        "flush",
        ["what", "value"],
        [
            ("events flushed", result.events),
            ("link events flushed", result.rel_events),
            ("files written", result.files),
            ("bytes written", result.bytes),
            ("namespaces", ", ".join(result.namespaces) or "-"),
            ("seconds", result.seconds),
        ],
    )
    return 0


# --------------------------------------------------------------------------- stats


def collect_stats(url: URL) -> dict[str, Any]:
    """What the database says about the store, read with a read-only connection."""
    engine = readonly_engine(url)
    try:
        with engine.connect() as conn:
            counters = {name: int(value) for name, value in conn.execute(select(Counter.name, Counter.value))}
            wal: dict[str, dict[str, dict[str, int]]] = {}
            for label, table, mark in (("events", EventsWal, "seq:"), ("rels", RelsWal, "rseq:")):
                per_ns: dict[str, dict[str, int]] = {}
                rows = conn.execute(select(table.ns, table.first_seq, table.event_count))
                for ns, first, count in rows:
                    entry = per_ns.setdefault(ns, {"wal_rows": 0, "events": 0, "unflushed": 0})
                    entry["wal_rows"] += 1
                    entry["events"] += int(count)
                    if int(first) > counters.get(f"{mark}{ns}", 0):
                        entry["unflushed"] += int(count)
                for ns, entry in per_ns.items():
                    entry["flushed_to_seq"] = counters.get(f"{mark}{ns}", 0)
                wal[label] = dict(sorted(per_ns.items()))
            files: dict[str, dict[str, int]] = {}
            for listed in manifest.load_all(conn):
                kind = files.setdefault(listed.kind, {"files": 0, "rows": 0, "bytes": 0})
                kind["files"] += 1
                kind["rows"] += listed.row_count
                kind["bytes"] += listed.bytes
    finally:
        engine.dispose()
    namespaces = sorted({*wal["events"], *wal["rels"], *(n.split(":", 1)[1] for n in counters if n.startswith("id:"))})
    return {
        "database": url.render_as_string(hide_password=True),
        "namespaces": namespaces,
        "wal": wal,
        "unflushed_events": sum(e["unflushed"] for e in wal["events"].values()),
        "unflushed_rel_events": sum(e["unflushed"] for e in wal["rels"].values()),
        "archive": {
            "files": sum(k["files"] for k in files.values()),
            "bytes": sum(k["bytes"] for k in files.values()),
            "by_kind": dict(sorted(files.items())),
        },
    }


def stats(args: argparse.Namespace, out: Output) -> int:
    url = parse_url(url_of(args))
    require_store(url)
    data = collect_stats(url)
    if out.json:
        out.emit_json(data)
        return 0
    rows: list[tuple[Any, ...]] = []
    for label, per_ns in data["wal"].items():
        for ns, e in per_ns.items():
            rows.append((f"{label}_wal {ns}", e["wal_rows"], e["events"], e["unflushed"], e["flushed_to_seq"]))
    out.table("WAL tables", ["table / namespace", "rows", "events", "unflushed", "flushed to seq"], rows)
    kinds = [(k, v["files"], v["rows"], v["bytes"]) for k, v in data["archive"]["by_kind"].items()]
    kinds.append(("total", data["archive"]["files"], sum(k[2] for k in kinds), data["archive"]["bytes"]))
    out.table("archive (manifest)", ["kind", "files", "rows", "bytes"], kinds)
    out.line(f"unflushed: {data['unflushed_events']} events, {data['unflushed_rel_events']} link events")
    return 0


# --------------------------------------------------------------------------- inspect


def inspect(args: argparse.Namespace, out: Output) -> int:
    if args.ref.count("/") != 1 or not all(args.ref.split("/")):
        raise UsageError(f"expected NS/ID (e.g. users/Uk), got {args.ref!r}")
    ns, _id = args.ref.split("/")
    with open_store(args, need_archive=False) as db:
        state = db.get(ns, _id, include_deleted=True)
        if state is None:
            raise CommandError(f"no entity {args.ref}")
        history = db.history(args.ref)
    data = {
        "ref": args.ref,
        "version": state.get("version"),
        "deleted": state.get("deletedAt") is not None,
        "state": state,
        "history": history,
    }
    if out.json:
        out.emit_json(to_jsonable(data))
        return 0
    out.line(f"{args.ref}  version {data['version']}{'  (deleted)' if data['deleted'] else ''}")
    out.table("state", ["field", "value"], [(k, json.dumps(to_jsonable(v), default=str)) for k, v in state.items()])
    out.table(
        "history (oldest first)",
        ["seq", "op", "version", "at", "actor", "data"],
        [
            (
                h["seq"],
                h["op"],
                h["version"],
                h["ts"].isoformat(timespec="seconds"),
                h["actor"],
                _short(json.dumps(to_jsonable(h["data"]), default=str)),
            )
            for h in history
        ],
    )
    return 0


def to_jsonable(value: Any) -> Any:
    """Datetimes, decimals, ... as their text: what `--json` prints."""
    return json.loads(json.dumps(value, default=str))


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- sql


def run_query(db: ParqueDB, query: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = db.duckdb()
    try:
        try:
            cur = con.execute(query)
        except Exception as exc:  # DuckDB's parser / binder / runtime errors: the user's query
            raise CommandError(f"query failed: {' '.join(str(exc).split())}") from None
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = [tuple(r) for r in cur.fetchall()] if columns else []
    finally:
        con.close()
    return columns, rows


def sql(args: argparse.Namespace, out: Output) -> int:
    if not args.query.strip():
        raise UsageError("the query is empty")
    with open_store(args, need_archive=False) as db:
        columns, rows = run_query(db, args.query)
    if out.json:
        out.emit_json([dict(zip(columns, (_plain(v) for v in row), strict=True)) for row in rows])
        return 0
    out.table(None, columns, [[_plain_text(v) for v in row] for row in rows])
    out.line(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return 0


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _plain_text(value: Any) -> Any:
    """Numbers stay numbers (right-aligned, with separators); None shows as "-"."""
    if (isinstance(value, (int, float)) and not isinstance(value, bool)) or value is None:
        return value
    return str(value)


# --------------------------------------------------------------------------- export


def export(args: argparse.Namespace, out: Output) -> int:
    target = Path(args.to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"--to {target}: exists and is not an empty folder")
    if args.format == "iceberg":
        _require_iceberg()
    with open_store(args, need_archive=True) as db, out.progress() as bar:
        task = bar.add_task("flushing", total=1 + len(VIEWS))
        db.flush()
        bar.update(task, advance=1, description="exporting")
        target.mkdir(parents=True, exist_ok=True)
        counts: dict[str, int] = {}
        con = db.duckdb()
        try:
            for view in VIEWS:
                table = con.sql(f"SELECT * FROM {view}").to_arrow_table()  # our own view names
                counts[view] = table.num_rows
                if args.format == "parquet":
                    _write_parquet(table, target / f"{view}.parquet")
                else:
                    _write_iceberg(table, target, view)
                bar.update(task, advance=1)
        finally:
            con.close()
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    data = {"to": str(target), "format": args.format, "rows": counts, "files": len(files)}
    if out.json:
        out.emit_json(data)
        return 0
    out.table(f"exported to {target} ({args.format})", ["table", "rows"], list(counts.items()))
    if args.format == "iceberg":
        out.line(f"catalog: sqlite:///{target / 'catalog.db'} (pyiceberg SqlCatalog 'export', namespace 'parquedb')")
    return 0


def _write_parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq_files

    tmp = path.with_name(f".{path.name}.tmp")
    pq_files.write_table(table, tmp, compression="zstd")
    tmp.replace(path)  # a reader never sees half a file


def _require_iceberg() -> None:
    try:
        import pyiceberg.catalog.sql  # noqa: F401
    except ImportError:
        raise UsageError("--format iceberg needs the iceberg extra: pip install 'parquedb-orm[iceberg]'") from None


def _write_iceberg(table: Any, target: Path, view: str) -> None:
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("export", uri=f"sqlite:///{target / 'catalog.db'}", warehouse=target.resolve().as_uri())
    with contextlib.suppress(Exception):  # already there from the previous view
        catalog.create_namespace("parquedb")
    table = _iceberg_compatible(table)
    ice = catalog.create_table(("parquedb", view), schema=table.schema)
    ice.append(table)


def _iceberg_compatible(table: Any) -> Any:
    """Iceberg has no unsigned or extension (JSON) types: those columns become int64 / string."""
    import pyarrow as pa

    fields = []
    for f in table.schema:
        t = f.type
        if isinstance(t, pa.ExtensionType):
            t = pa.string()
        elif pa.types.is_unsigned_integer(t):
            t = pa.int64()
        elif pa.types.is_timestamp(t) and t.unit == "ns":
            t = pa.timestamp("us", tz=t.tz)
        fields.append(pa.field(f.name, t, nullable=True))
    return table.cast(pa.schema(fields)) if fields != list(table.schema) else table
