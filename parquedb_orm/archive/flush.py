"""Flush: WAL rows -> Parquet files + manifest rows, exactly once.

1. Read, per namespace, the WAL rows above its flushed mark (`seq:<ns>` / `rseq:<ns>`)
   (from the engine's memory when it provably equals the table).
2. Fold them onto the states the touched entities had (the engine's memory of its own
   commits, else a point lookup in the archive: `ArchivedReads.lookup`).
3. Write Parquet files named by namespace and sequence range, under their hidden pending
   names (archive/files.py): a retry after a crash rewrites the same names, and a reader
   globbing the folders sees no file the manifest does not list. The entities file of a
   flush is a *delta*: the latest state of what it touched; compaction
   (archive/compact.py) merges deltas into the namespace's base file.
4. ONE SQL transaction, under the flush lock: check the marks are still those read in
   step 1 (else another flusher won: roll back), add manifest rows, advance the marks,
   retire the flushed WAL rows. Whatever the store's size, that is a handful of rows:
   state lives in the archive, not in SQL (the `entity_snapshots` table of earlier
   versions is no longer written; every state it holds is also in an entities file).
5. Publish the files (rename them to their names); step 4 also swept the folders
   (compact.sweep_orphans): a crash's leftovers go, listed pending files are published.
A crash before 4 commits leaves the WAL as it was (the files are invisible orphans,
rewritten next time); after it, everything is in the archive and nothing in the WAL
tail, and the next open publishes what step 5 did not.

Retiring WAL rows: a `DELETE` is billed one written row per row, so on SQLite the
table is rebuilt instead: the few rows above the marks are kept in a TEMP table (temp
writes are not billed), the table is dropped (no written rows) and created again, and
the kept rows go back. PostgreSQL and MySQL delete the flushed range.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, or_, select, text, update

from parquedb_orm.archive import compact, memory, parquet
from parquedb_orm.archive.files import Archive
from parquedb_orm.core.events import UPDATE, Event, RelEvent, State, Versioned, apply_event, starts_entity
from parquedb_orm.core.ids import chunk_number
from parquedb_orm.sql import dialects, manifest, wal
from parquedb_orm.sql.counters import load_all
from parquedb_orm.sql.models import Counter


@dataclass
class FlushResult:
    """What one flush did."""

    files: int = 0
    events: int = 0
    rel_events: int = 0
    bytes: int = 0
    seconds: float = 0.0
    namespaces: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    skipped: bool = False  # another flusher had already flushed these rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "events": self.events,
            "rel_events": self.rel_events,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "namespaces": self.namespaces,
            "paths": self.paths,
            "skipped": self.skipped,
        }


#: a namespace whose unflushed tail holds more events than this (and as many relationship
#: events) is flushed in chunks, each committed on its own, so the flush's memory is bounded
#: by the chunk (a policy flush holds FlushPolicy.max_events: one chunk, as before)
CHUNK_EVENTS = 20_000
#: the events one chunk of such a flush folds and writes. Smaller than the threshold: a
#: chunk's fold takes ~4.5 KB of Python objects an event on top of the tail it drains, and
#: CPython keeps the arenas of that peak (measured at 1M entities, a 200,000-event first
#: flush: RSS at the end 450 MiB with chunks of 20,000, 400 with 5,000; the flush 1-7% slower)
CHUNK_SPAN = 5_000


def _span() -> int:
    return min(CHUNK_SPAN, CHUNK_EVENTS)


#: test hook: a callable(step_name) run at each step, so crash tests can stop a flush there
CRASH_HOOK: Any = None


def _step(name: str) -> None:
    if CRASH_HOOK is not None:
        CRASH_HOOK(name)


@dataclass
class _NsPlan:
    ns: str
    events: list[Event] = field(default_factory=list)
    rels: list[RelEvent] = field(default_factory=list)
    ev_mark: int = 0  # mark read in step 1
    rel_mark: int = 0
    ev_last: int = 0  # new mark
    rel_last: int = 0
    #: the events came from the engine's memory (single owner), not from the table
    from_memory: bool = False
    latest: dict[str, tuple[int, int, State | None]] = field(default_factory=dict)
    latest_json: dict[str, parquet.Encoded | None] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)


class FlushSource(Protocol):
    """What a flush needs of the engine that owns the WAL (engine/runtime.py implements it)."""

    engine: Engine

    def known_namespaces(self) -> list[str]: ...

    def memory_tail(
        self, ns: str, ev_mark: int, rel_mark: int, limit: int
    ) -> tuple[list[Event] | None, list[RelEvent] | None, tuple[bool, bool]]: ...

    def retirable(self, ns: str, kind: str, mark: int) -> int: ...

    def tail_bases(self, ns: str, ids: Iterable[str]) -> dict[str, Versioned]: ...

    def lookup(self, conn: Connection, ns: str, ids: list[str]) -> dict[str, tuple[int, int, State | None]]: ...

    def archive_files(self, conn: Connection, kind: str, ns: str) -> list[manifest.Entry]: ...

    def manifest_changed(self, added: list[manifest.Entry], removed: list[manifest.Entry]) -> None: ...

    def flushed(
        self,
        summary: dict[str, tuple[int, int, int, int, dict[str, tuple[int, int, State | None]]]],
        entries: list[manifest.Entry],
    ) -> None: ...


class Flusher:
    def __init__(self, runtime: FlushSource, archive: Archive) -> None:
        self.rt = runtime
        self.archive = archive
        self._lock = threading.Lock()
        #: run after each flush's or compaction's SQL commit, under the flush lock (the
        #: Iceberg publisher: archive/iceberg.py); a crash before it is repaired at open
        self.after_commit: Callable[[], object] | None = None

    def flush(self) -> FlushResult:
        with self._lock:
            try:
                return self._flush()
            finally:
                memory.release()

    def compact_due(self, threshold: int, namespaces: list[str] | None = None) -> list[manifest.Entry]:
        """Merge a namespace's files once compaction is due (archive/compact.py says when and
        what each kind becomes). Exactly once, like a flush."""
        with self._lock:
            try:
                return compact.compact_due(
                    self.rt.engine,
                    self.archive,
                    self._changed,
                    threshold,
                    namespaces,
                    files=self.rt.archive_files,
                    step=_step,
                )
            finally:
                memory.release()

    def _changed(self, added: list[manifest.Entry], removed: list[manifest.Entry]) -> None:
        """A compaction committed: caches first, then (before it deletes its sources) the
        Iceberg tables."""
        self.rt.manifest_changed(added, removed)
        self._published()

    def _published(self) -> None:
        if self.after_commit is not None:
            self.after_commit()
            _step("iceberg_published")

    # ------------------------------------------------------------------ steps
    def _read(self, conn: Connection) -> tuple[dict[str, int], dict[str, _NsPlan], bool]:
        """The plans of one chunk, and whether a namespace had more than a chunk (the
        flush then runs another)."""
        counters = load_all(conn)
        names = sorted({n.split(":", 1)[1] for n in counters if ":" in n} | set(self.rt.known_namespaces()))
        plans: dict[str, _NsPlan] = {}
        all_plans = [
            _NsPlan(ns, ev_mark=counters.get(f"seq:{ns}", 0), rel_mark=counters.get(f"rseq:{ns}", 0)) for ns in names
        ]
        # single owner with the tail in memory: the WAL rows need not be read again; the
        # namespaces that must be read are read together, one statement per table
        # a namespace whose tail in memory is larger than a chunk is read from the table a
        # chunk at a time (`big`); the others whole, as before
        need_ev: dict[bool, list[tuple[str, int | None, str]]] = {False: [], True: []}
        need_rel: dict[bool, list[tuple[str, int | None, str]]] = {False: [], True: []}
        for plan in all_plans:
            events, rels, big = self.rt.memory_tail(plan.ns, plan.ev_mark, plan.rel_mark, CHUNK_EVENTS)
            if events is not None:
                plan.events = events
                plan.from_memory = True
            else:
                need_ev[big[0]].append((plan.ns, plan.ev_mark, ""))
            if rels is not None:
                plan.rels = rels
            else:
                need_rel[big[1]].append((plan.ns, plan.rel_mark, ""))
        ev_rows, more_ev = _read_wal(conn, wal.EVENTS, need_ev)
        rel_rows, more_rel = _read_wal(conn, wal.RELS, need_rel)
        for plan in all_plans:
            ns = plan.ns
            for first, _last, recs in ev_rows.get(ns, []):
                plan.events.extend(wal.decode_events(wal.EVENTS, ns, first, recs))
            for first, _last, recs in rel_rows.get(ns, []):
                plan.rels.extend(wal.decode_rel_events(wal.RELS, ns, first, recs))
            if plan.events or plan.rels:
                plan.ev_last = plan.events[-1].seq if plan.events else plan.ev_mark
                plan.rel_last = plan.rels[-1].seq if plan.rels else plan.rel_mark
                plans[ns] = plan
        return counters, plans, more_ev or more_rel

    def _fold(self, conn: Connection, plan: _NsPlan) -> list[parquet.EventRow]:
        """Apply the events to the touched entities' states; each state is encoded once
        (plain JSON + typed paths) and serves the events file and the entities file; an
        UPDATE also gets its changes (old and new value of each field it changed).

        The state an entity had before its first flushed event comes from the engine's
        memory when it knows it (its own commits: `tail_bases`), else from the archive's
        one piece that holds it (`lookup`): a flush reads what it touches, not the store."""
        ns = plan.ns
        first: dict[str, Event] = {}
        for ev in plan.events:
            first.setdefault(ev.id, ev)
        current: dict[str, Versioned] = {}
        known = self.rt.tail_bases(ns, first) if plan.from_memory else {}
        missing = []
        for eid, ev in first.items():
            base = known.get(eid)
            if base is not None and base[0] == ev.version - 1:
                current[eid] = base
            elif starts_entity(ev):
                current[eid] = (0, None)
            else:
                missing.append(eid)
        if missing:
            found = self.rt.lookup(conn, ns, missing)
            for eid in missing:
                hit = found.get(eid)
                current[eid] = (0, None) if hit is None else (hit[0], hit[2])
        encoded: dict[str, parquet.Encoded | None] = {}
        rows: list[parquet.EventRow] = []
        for ev in plan.events:
            _version, before = current[ev.id]
            after = apply_event(ns, before, ev)
            current[ev.id] = (ev.version, after)
            before_json = encoded[ev.id] if ev.id in encoded else parquet.encode(before)
            after_json = parquet.encode(after)
            encoded[ev.id] = after_json
            changed = parquet.encode(parquet.changes(before, after)) if ev.op == UPDATE else None
            rows.append((ev, before_json, after_json, changed))
        for eid, (version, state) in current.items():
            plan.latest[eid] = (version, plan.ev_last, state)
            plan.latest_json[eid] = encoded[eid]
            plan.numbers[eid] = chunk_number(eid)
        return rows

    def _write_files(self, plan: _NsPlan, rows: list[parquet.EventRow]) -> list[manifest.Entry]:
        entries = []
        ns = plan.ns
        if plan.events:
            first, last = plan.events[0].seq, plan.ev_last
            path = Archive.file_name("events", ns, first, last)
            check = self.archive.write_table(path, parquet.events_table(ns, rows), row_group_rows=parquet.PIECE_ROWS)
            entries.append(manifest.Entry("events", ns, first, last, path, len(rows), check.size, check.text()))
            _step("events_file_written")
            order = sorted(plan.latest, key=lambda eid: plan.numbers.get(eid, 0))
            ent_rows = [
                (eid, plan.numbers.get(eid, 0), *plan.latest[eid][:1], plan.latest[eid][2], plan.ev_last)
                for eid in order
            ]
            path = Archive.file_name(manifest.DELTA_FOLDER, ns, first, last)
            table = parquet.entities_table(ns, ent_rows, [plan.latest_json[eid] for eid in order])
            check = self.archive.write_table(path, table, row_group_rows=parquet.PIECE_ROWS)
            entries.append(manifest.Entry("entities", ns, first, last, path, len(ent_rows), check.size, check.text()))
        if plan.rels:
            first, last = plan.rels[0].seq, plan.rel_last
            path = Archive.file_name("rels", ns, first, last)
            check = self.archive.write_table(path, parquet.rels_table(ns, plan.rels), row_group_rows=parquet.PIECE_ROWS)
            entries.append(manifest.Entry("rels", ns, first, last, path, len(plan.rels), check.size, check.text()))
        return entries

    def _commit(self, conn: Connection, plans: dict[str, _NsPlan], entries: list[manifest.Entry]) -> bool:
        dialects.lock_flush(conn)
        # every counter, read once under the lock: the marks to check here and, on SQLite,
        # the namespaces whose unflushed rows the WAL retirement must keep
        now = load_all(conn)
        for ns, plan in plans.items():
            if now.get(f"seq:{ns}", 0) != plan.ev_mark or now.get(f"rseq:{ns}", 0) != plan.rel_mark:
                return False  # another flusher committed these rows first
        if any(not self.archive.staged(e.path) for e in entries):
            return False  # swept as an orphan by another flusher: write them again next time
        manifest.add(conn, entries)
        _step("manifest_added")
        marks = {}
        for ns, plan in plans.items():
            if plan.events:
                marks[f"seq:{ns}"] = (plan.ev_last, f"seq:{ns}" in now)
            if plan.rels:
                marks[f"rseq:{ns}"] = (plan.rel_last, f"rseq:{ns}" in now)
        for name, (value, exists) in marks.items():
            if exists:
                conn.execute(update(Counter).where(Counter.name == name).values(value=value))
            else:
                conn.execute(insert(Counter).values(name=name, value=value))
        _step("snapshots_written")
        self._retire(conn, plans, now)
        _step("wal_retired")
        listed = {e.path for e in entries}
        compact.sweep_orphans(
            conn, self.archive, sorted(plans), listed, cached=lambda kind, ns: self.rt.archive_files(conn, kind, ns)
        )
        return True

    def _retire(self, conn: Connection, plans: dict[str, _NsPlan], counters: dict[str, int]) -> None:
        swap = dialects.capabilities(conn).retire_by_table_swap
        # every namespace with WAL rows has a counter row (engine/commit.py, Committer._register);
        # read them here, under the flush lock, so one created since step 1 is kept too
        marks = counters
        cutoff = datetime.now(UTC) - timedelta(seconds=wal.RETAIN_SECONDS)
        for kind, table, attr, prefix in (
            ("e", wal.EVENTS, "ev_last", "seq:"),
            ("r", wal.RELS, "rel_last", "rseq:"),
        ):
            done = {ns: getattr(p, attr) for ns, p in plans.items() if (p.events if attr == "ev_last" else p.rels)}
            if not done:
                continue
            for ns, last in list(done.items()):
                plan = plans[ns]
                safe = self.rt.retirable(ns, kind, plan.ev_mark if kind == "e" else plan.rel_mark)
                if safe < last:
                    # rows another writer may still be numbering after stay until they are
                    # RETAIN_SECONDS old (sql/wal.py): a scan of the rows this flush folded
                    # that this process did not write itself, so rare and small
                    young = conn.execute(
                        select(func.min(table.c.first_seq)).where(
                            table.c.ns == ns,
                            table.c.first_seq > safe,
                            table.c.first_seq <= last,
                            table.c.created_at >= cutoff,
                        )
                    ).scalar()
                    if young is not None:
                        done[ns] = min(last, int(young) - 1)
            if swap:
                names = {n.split(":", 1)[1] for n in marks if ":" in n} | set(done)
                keep = {ns: done.get(ns, marks.get(f"{prefix}{ns}", 0)) for ns in sorted(names)}
                _rebuild_table(conn, table, keep)
            else:
                flushed = or_(
                    *[
                        and_(table.c.ns == ns, table.c.first_seq <= last, table.c.first_seq < _newest_first(table, ns))
                        for ns, last in done.items()
                    ]
                )
                conn.execute(delete(table).where(flushed))

    def sweep(self, namespaces: list[str] | None = None) -> int:
        """Publish listed pending files and delete unlisted ones (compact.sweep_orphans) in
        these namespaces (default: every `ns=` folder of the archive). Costs only folder
        listings while every file found is one the engine's copy of the manifest lists;
        otherwise one transaction under the flush lock. Runs at open and in a flush with
        nothing pending, so what a crash left (mid-compaction, mid-create_many) is gone
        before anyone globs the folders for long."""
        names = namespaces if namespaces is not None else self.archive.namespaces()
        if not names:
            return 0
        with self.rt.engine.connect() as conn:
            cached = self._cached(conn)
            dirty = [ns for ns in names if not compact.clean(self.archive, ns, cached)]
            conn.rollback()
        if not dirty:
            return 0
        with dialects.begin(self.rt.engine) as conn:
            dialects.lock_flush(conn)
            return compact.sweep_orphans(conn, self.archive, dirty)

    def _cached(self, conn: Connection) -> Any:
        return lambda kind, ns: self.rt.archive_files(conn, kind, ns)

    def _flush(self) -> FlushResult:
        """Flush a namespace whose unflushed tail (in this process's memory) is larger than
        CHUNK_EVENTS in chunks of about CHUNK_SPAN events, each committed on its own and
        exactly once, as a whole flush is: the memory such a flush takes is bounded by the
        chunk (a manual policy, a bulk of updates). A backlog this process does not hold
        (found at open, or in shared mode) is read whole, as it always was."""
        t0 = time.perf_counter()
        result = FlushResult()
        while self._flush_chunk(result):
            memory.release()  # a chunk's freed Arrow and C memory, before the next one
        result.seconds = time.perf_counter() - t0
        return result

    def _flush_chunk(self, result: FlushResult) -> bool:
        """One chunk into `result`; True if another chunk is due."""
        with self.rt.engine.connect() as conn:
            _counters, plans, more = self._read(conn)
            if not plans:
                conn.rollback()
                if not result.files:  # nothing pending at all: sweep what a crash left
                    self.sweep(self.rt.known_namespaces())
                return False
            _step("wal_read")
            entries: list[manifest.Entry] = []
            for plan in plans.values():
                rows = self._fold(conn, plan)
                entries.extend(self._write_files(plan, rows))
            conn.rollback()
        _step("files_written")
        with dialects.begin(self.rt.engine) as conn:
            ok = self._commit(conn, plans, entries)
            if not ok:
                conn.rollback()
        _step("committed")
        if not ok:
            result.skipped = not result.files
            return False
        # listed now: make them visible (a crash here leaves pending files the next open
        # or flush publishes; the store's own readers publish one they need themselves)
        for entry in entries:
            self.archive.publish_pending(entry.path)
        _step("published")
        self.rt.flushed(plans_summary(plans), entries)
        self._published()
        result.files += len(entries)
        result.events += sum(len(p.events) for p in plans.values())
        result.rel_events += sum(len(p.rels) for p in plans.values())
        result.bytes += sum(e.bytes for e in entries)
        result.namespaces = sorted({*result.namespaces, *plans})
        result.paths += [e.path for e in entries]
        return more


def _read_wal(
    conn: Connection, table: Table, specs: dict[bool, list[tuple[str, int | None, str]]]
) -> tuple[dict[str, list[tuple[int, int, list[Any]]]], bool]:
    """The WAL rows above each namespace's mark: whole for specs[False] (one statement for
    all of them), and for specs[True] only the rows that start at most `_span()` above it
    (whole rows: a row's events are flushed together). Also whether a chunked namespace
    may have more. One with rows only beyond its window (a gap in its numbers) is read
    whole, so a flush never stops short of a committed row."""
    rows = wal.read_many(conn, table, specs[False]) if specs[False] else {}
    chunked = specs[True]
    if not chunked:
        return rows, False
    span = _span()
    part = wal.read_many(conn, table, chunked, span=span)
    empty = [spec for spec in chunked if not part[spec[0]]]
    if empty:
        part.update(wal.read_many(conn, table, empty))
    rows.update(part)
    more = any(rs and rs[-1][1] - (spec[1] or 0) >= span for spec in chunked if (rs := part[spec[0]]))
    return rows, more


def plans_summary(
    plans: dict[str, _NsPlan],
) -> dict[str, tuple[int, int, int, int, dict[str, tuple[int, int, State | None]]]]:
    """ns -> (event mark, rel mark, events, rel events, latest states) for the runtime."""
    return {
        ns: (p.ev_last if p.events else 0, p.rel_last if p.rels else 0, len(p.events), len(p.rels), p.latest)
        for ns, p in plans.items()
    }


def _newest_first(table: Table, ns: str) -> Any:
    """The first_seq of a namespace's newest WAL row, which retiring keeps: a writer with
    stale numbers finds it (wal.insert_unclaimed), and shared mode reads its floor there.
    Through a derived table, which MySQL requires to read the table a DELETE deletes from."""
    newest = select(func.max(table.c.first_seq).label("m")).where(table.c.ns == ns).subquery()
    return select(newest.c.m).scalar_subquery()


def _rebuild_table(conn: Connection, table: Table, marks: dict[str, int]) -> None:
    """Retire flushed rows without paying a written row per row (see module doc): keep each
    namespace's rows above its mark (one seek each), drop the table, put them back."""
    conn.execute(text(f"DROP TABLE IF EXISTS temp.keep_{table.name}"))
    # two seeks per namespace, not one OR (which would scan the namespace's rows): the rows
    # above the mark, and the newest row when it is at or below the mark
    parts = [
        sel.compile(conn, compile_kwargs={"literal_binds": True})
        for ns, mark in marks.items()
        for sel in (
            select(table).where(table.c.ns == ns, table.c.first_seq > mark),
            select(table).where(
                table.c.ns == ns, table.c.first_seq <= mark, table.c.first_seq == _newest_first(table, ns)
            ),
        )
    ]
    keep_sql = " UNION ALL ".join(str(p) for p in parts) if parts else f"SELECT * FROM {table.name} WHERE 0"
    conn.execute(text(f"CREATE TEMP TABLE keep_{table.name} AS {keep_sql}"))
    table.drop(conn)
    table.create(conn)
    conn.execute(text(f"INSERT INTO {table.name} SELECT * FROM temp.keep_{table.name}"))
    conn.execute(text(f"DROP TABLE temp.keep_{table.name}"))
