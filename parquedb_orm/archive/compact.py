"""Compaction: a namespace's files of one kind merged into fewer, exactly once.

What each kind becomes:
- `entities`, size-tiered in two levels:
  - **delta merge** (the common case): the namespace's deltas (every entities-kind file
    whose name does not start with `base-`) merge into ONE delta
    `entities/ns=<ns>/d-<first>-<last>.parquet` (first: the smallest first_seq of the
    sources, which leave the manifest in the same commit; last: the largest last_seq).
    The base and the bulk files are not touched.
  - **base rewrite**: every entities-kind file (deltas and the base) and every bulk file
    of the namespace merge into ONE base `entities/ns=<ns>/base-<first>-<last>.parquet`
    (first/last: the seq range of the merged entities-kind files, 0-0 if there were only
    bulk files). The bulk files leave the manifest in the same commit (ids no longer map
    to them: readers find those entities in the base); a bulk file without its
    `bulk_events` twin (archives written before twins existed) first gets one, listed in
    that same commit, so history keeps its CREATE events.
  Either output holds each id once, at its highest version (ties: the higher `seq`, which
  is the row of the file with the higher last_seq), sorted by (number, id), row groups of
  `parquet.ENTITY_ROW_GROUP_ROWS`, with the shredded `f_<k>` columns and the
  `parquedb.fields` map. A field's type is the type all sources holding it agree on, else
  "mixed"; a source without a map makes every field it holds "mixed".
- `events`: the events files and the `bulk_events` twins of bulk files already folded
  into a base (their bulk entry is no longer listed) merge into
  `events/ns=<ns>/c-<first>-<last>[-<digest>].parquet`, sorted by (id, seq); first/last: the
  seq range of the events files merged (0-0 if only twins), a digest of the sources'
  names when twins are in it (their id ranges are not seqs: the name stays unique and
  deterministic). Size-tiered like the entities: the largest events file stays out of
  the merge while the others hold at most B(its rows) rows (below).
  A twin whose bulk file is still listed stays: while a bulk file is listed, readers
  (engine/archived.py `events`, archive/analytics.py, `sweep_orphans`) take its CREATEs
  from the twin and would derive them from the bulk file again if it were gone. A bulk
  CREATE is seq 0 and unique per id, so in the merged file it sorts first of its id.
- `rels`: into `rels/ns=<ns>/c-<first>-<last>.parquet`, sorted by (from_id, seq), tiered
  the same way.

When (`due`), with T = threshold (FlushPolicy.compact_after) and
B = `DeltaBound.rows(settled)` = max(min_rows, fraction x settled), settled being the rows
of the base and bulk files:
- entities: more than T files counting deltas, bases and bulk files together, OR the
  deltas hold more than B rows. The base is rewritten when the deltas hold more than B
  rows, or when there are max(1, T/2) bulk files or more (they need folding), or when
  merging the deltas would not bring the count to T or below (one delta; a threshold of
  1); otherwise only the deltas merge. So after every pass a namespace has at most T
  entity files, and its deltas (which readers deduplicate) hold at most B rows;
- events: more than T files counting events files and mergeable twins (a twin whose bulk
  file is listed is not: it counts among the entity files, at most T), so at most 2T
  files in the folder after a pass;
- rels: more than T files.
For events and rels, a pass merges every file but the largest when those others hold at
most B(rows of the largest) rows and the threshold is 2 or more, else every file.
`compact_due` runs entities first, so the twins of the bulk files it folds merge into the
events file in the same pass.

Amortized cost (rows rewritten; bytes are proportional: the same rows, zstd), for a
namespace of S settled rows and deltas of k rows per flush:
- a delta merge happens once more than T - 1 - (base and bulk files) > T/2 deltas are
  listed, so at most every T/2 flushes, and rewrites at most B + T k rows: at most
  1 + 2B/(T k) rows per delta row flushed (at S = 1M, fraction 0.1, T = 32, k = 2,000:
  <= 4.2), and nothing of the base;
- a base rewrite folds more than B delta rows (or T/2 bulk files) and writes at most
  S + B rows: at most 1 + 1/fraction (= 11) rows per delta row folded; per bulk row
  folded, S / (rows of T/2 create_many calls).
The events and rels files follow the same two bounds with S the rows of their largest
file. A fixed-size flush thus costs the same compaction work at any S, up to the
1/fraction factor of the settled file's rewrite.

Memory: the merge runs in DuckDB (memory_limit, spilling to a temporary directory) over
Arrow datasets of the sources, read in batches, and its sorted result is streamed into a
`pyarrow.parquet.ParquetWriter`: nothing holds one Python object per row.

Exactly once (the same protocol as a flush): write the merged file under a deterministic
name, then ONE durable transaction under the flush lock: check the new files still exist
(a concurrent flush's sweep may have taken them as orphans), remove exactly the source
rows (rowcount check: else someone compacted first), add the new rows (removed before
added: the merged delta takes its first source's first_seq, the manifest key). The merged
file is written under its pending name (archive/files.py) and published after that
commit, then the sources are deleted. A crash anywhere loses and duplicates nothing for
manifest readers; what it leaves (a listed pending file, unlisted sources) is settled by
`sweep_orphans` at the next open or flush, so a reader globbing the folders sees each row
once.

The engine is seen only through an Engine, the Archive and the runtime's
`manifest_changed(added, removed)` callback. `step` is the crash-test hook of the caller
(flush.py's `_step`), called with "compacted_file_written" and "compaction_committed".
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine

from parquedb_orm.archive import bulk, parquet
from parquedb_orm.archive.files import (
    Archive,
    Check,
    check_of_local,
    keep_metadata,
    keeps_arrow_schema,
    pending_name,
    published_name,
    read_failure,
)
from parquedb_orm.core.ids import check_namespace
from parquedb_orm.errors import ArchiveError
from parquedb_orm.sql import dialects, manifest

Changed = Callable[[list[manifest.Entry], list[manifest.Entry]], None]
Step = Callable[[str], None]
FileLister = Callable[[Connection, str, str], list[manifest.Entry]]

#: kinds compaction merges, in the order a pass runs them (entities first: the bulk files
#: it folds make their twins mergeable into the events file)
COMPACTED = ("entities", "events", "rels")
BASE_PREFIX = "base-"
#: beside each base file, its *scan file* (`_scan/ns=<ns>/<base name>`): the base's
#: columns but the JSON texts, in large row groups, which find scans (engine/find.py). The
#: base keeps small pieces for point reads; a scan over ~1,000 of them costs ~10x one over
#: 16 large row groups. Not listed in the manifest: it lives and dies with its base.
SCAN_FOLDER = "_scan"
SCAN_ROWS = 65_536
_SCAN_DROP = frozenset({"state", "types"})  # the JSON texts
DELTA_PREFIX = "d-"
#: DuckDB's memory for one merge; beyond it, it spills to a temporary directory. (256MB
#: left the 1M base rewrite's peak where it was, ~400 MiB above the process's RSS: the
#: peak is not DuckDB's buffers)
MEMORY_LIMIT = "1GB"
#: rows of one key range of a merge (`_windows`)
WINDOW_ROWS = 65_536
#: JSON text columns: their min/max prune nothing (as archive/files.py writes them)
_NO_STATISTICS = frozenset({"state", "data", "before", "after", "changes", "meta", "types"})
#: the JSON columns of each kind: rows of older (tagged) sources are rewritten plain
_JSON = {"events": parquet.EVENT_JSON, "rels": parquet.REL_JSON, "entities": parquet.ENTITY_JSON}
_ORDER = {"events": "id, seq", "rels": "from_id, seq", "entities": "number, id"}
_SCHEMA = {"events": parquet.EVENTS_SCHEMA, "rels": parquet.RELS_SCHEMA, "entities": parquet.ENTITIES_SCHEMA}


def _no_step(_name: str) -> None:
    return None


@dataclass(frozen=True)
class DeltaBound:
    """Deltas of a namespace are folded into the base before they hold more than
    max(min_rows, fraction x settled rows) rows (settled: base + bulk files)."""

    fraction: float = 0.1
    min_rows: int = 10_000

    def rows(self, settled: int) -> int:
        return max(self.min_rows, int(self.fraction * settled))


@dataclass
class _Layers:
    """A namespace's entity files, as the manifest lists them."""

    deltas: list[manifest.Entry]
    bases: list[manifest.Entry]
    bulks: list[manifest.Entry]

    @classmethod
    def load(cls, conn: Connection, ns: str, files: FileLister | None = None) -> _Layers:
        read = files or manifest.load
        entities = read(conn, "entities", ns)
        bases = [e for e in entities if is_base(e)]
        return cls([e for e in entities if not is_base(e)], bases, read(conn, manifest.BULK, ns))

    @property
    def count(self) -> int:
        return len(self.deltas) + len(self.bases) + len(self.bulks)

    def _over_bound(self, bound: DeltaBound) -> bool:
        settled = sum(e.row_count for e in (*self.bases, *self.bulks))
        return sum(e.row_count for e in self.deltas) > bound.rows(settled)

    def due(self, threshold: int, bound: DeltaBound) -> bool:
        if self.count <= 1:
            return False  # one file (or none) is already compact
        return self.count > threshold or self._over_bound(bound)

    def plan(self, threshold: int, bound: DeltaBound) -> str | None:
        """What a pass does: "base" (rewrite it), "deltas" (merge only them) or None."""
        if not self.due(threshold, bound):
            return None
        if self._over_bound(bound) or len(self.bulks) >= max(1, threshold // 2):
            return "base"
        # merging the deltas must bring the namespace within the threshold
        fits = 1 + len(self.bases) + len(self.bulks) <= threshold
        return "deltas" if len(self.deltas) >= 2 and fits else "base"


def is_base(entry: manifest.Entry) -> bool:
    """A base file (written by compaction: every entity of its namespace once)."""
    return entry.kind == "entities" and entry.path.rsplit("/", 1)[-1].startswith(BASE_PREFIX)


def _mergeable_twins(conn: Connection, ns: str, read: FileLister) -> list[manifest.Entry]:
    """The bulk_events twins whose bulk file is folded (no longer listed)."""
    live = {bulk.twin_path(e) for e in read(conn, manifest.BULK, ns)}
    return [e for e in read(conn, manifest.BULK_EVENTS, ns) if e.path not in live]


def due(
    conn: Connection,
    kind: str,
    ns: str,
    threshold: int,
    bound: DeltaBound | None = None,
    files: FileLister | None = None,
) -> bool:
    """Whether `compact(kind, ns)` would merge now (the rules of the module doc)."""
    read = files or manifest.load
    if kind == "entities":
        return _Layers.load(conn, ns, files).due(threshold, bound or DeltaBound())
    count = len(read(conn, kind, ns))
    if kind == "events":
        count += len(_mergeable_twins(conn, ns, read))
    return count > threshold and count > 1


def compact_due(
    engine: Engine,
    archive: Archive,
    changed: Changed,
    threshold: int,
    namespaces: list[str] | None = None,
    *,
    bound: DeltaBound | None = None,
    files: FileLister | None = None,
    step: Step = _no_step,
) -> list[manifest.Entry]:
    """Compact every (kind, namespace) that is due, entities first; returns the merged
    files' entries. `files`: the engine's cached manifest reads (kept current through
    `changed`), used only to decide what is due (each compaction reads the manifest
    again). The caller serialises compactions of a process (Flusher's lock); other
    processes are excluded by the commit protocol."""
    with engine.connect() as conn:
        names = namespaces if namespaces is not None else sorted({e.ns for e in manifest.load_all(conn)})
    done = []
    for ns in names:
        for kind in COMPACTED:
            # decided after the kinds before it ran: folding bulk files makes twins mergeable
            with engine.connect() as conn:
                if not due(conn, kind, ns, threshold, bound, files):
                    continue
            merged = compact(engine, archive, changed, kind, ns, threshold, bound=bound, step=step)
            if merged is not None:
                done.append(merged)
    return done


@dataclass
class _Plan:
    sources: list[manifest.Entry]  # the manifest rows the merged file replaces
    mode: str  # "base", "deltas" or "log"
    layers: _Layers | None = None
    untwinned: list[manifest.Entry] = field(default_factory=list)  # bulk files that need a twin first
    twins: list[manifest.Entry] = field(default_factory=list)  # folded bulk files' twins merged


def _plan(conn: Connection, kind: str, ns: str, threshold: int, bound: DeltaBound) -> _Plan | None:
    if kind == "entities":
        layers = _Layers.load(conn, ns)
        mode = layers.plan(threshold, bound)
        if mode is None:
            return None
        if mode == "deltas":
            return _Plan(list(layers.deltas), mode, layers)
        twinned = {e.path for e in manifest.load(conn, manifest.BULK_EVENTS, ns)}
        untwinned = [e for e in layers.bulks if bulk.twin_path(e) not in twinned]
        return _Plan([*layers.bases, *layers.deltas, *layers.bulks], mode, layers, untwinned)
    logs = manifest.load(conn, kind, ns)
    twins = _mergeable_twins(conn, ns, manifest.load) if kind == "events" else []
    count = len(logs) + len(twins)
    if count <= threshold or count <= 1:
        return None
    return _Plan(_log_sources(logs, twins, threshold, bound), "log", twins=twins)


def _log_sources(
    logs: list[manifest.Entry], twins: list[manifest.Entry], threshold: int, bound: DeltaBound
) -> list[manifest.Entry]:
    """The events or rels files a pass merges: all but the largest while the others hold
    at most B(largest) rows (the module doc), else all. Files of a log kind are disjoint
    in seqs and read whole by every reader, so any subset may merge."""
    if len(logs) >= 2 and threshold >= 2:  # the largest and the merged file fit the threshold
        big = max(logs, key=lambda e: (e.row_count, -e.first_seq))
        rest = [e for e in logs if e is not big]
        # the merged file takes the smallest first_seq of its events files: there is one
        if len(rest) + len(twins) >= 2 and sum(e.row_count for e in (*rest, *twins)) <= bound.rows(big.row_count):
            return [*rest, *twins]
    return [*logs, *twins]


def compact(
    engine: Engine,
    archive: Archive,
    changed: Changed,
    kind: str,
    ns: str,
    threshold: int,
    *,
    bound: DeltaBound | None = None,
    step: Step = _no_step,
) -> manifest.Entry | None:
    """Merge a namespace's files of one kind if due (module doc); returns the merged
    file's entry (for entities: the base or the merged delta), or None when nothing was
    due or another process changed the files first (nothing lost: the sources stay
    listed)."""
    if kind not in COMPACTED:
        raise ArchiveError(f"compaction merges {COMPACTED}, not {kind!r}")
    check_namespace(ns)
    with engine.connect() as conn:
        plan = _plan(conn, kind, ns, threshold, bound or DeltaBound())
    if plan is None:
        return None
    try:
        added = [bulk.write_twin_of(archive, e) for e in plan.untwinned]
        if plan.mode == "log":
            merged = _merge_log(archive, kind, ns, plan.sources, plan.twins)
        else:
            assert plan.layers is not None
            merged = _merge_entities(archive, ns, plan.layers, plan.mode)
    except Exception as exc:
        if not read_failure(exc):
            raise
        raise archive.damaged(plan.sources, exc) from exc  # names the source that fails its checks
    if merged is None:
        return None
    step("compacted_file_written")
    sources = plan.sources
    new = [merged, *added]
    # the sources are deleted right after this commit: it must survive a power loss even
    # where commits in general need not (synchronous=NORMAL), or the manifest could come
    # back listing deleted files
    with dialects.durable_begin(engine) as conn:
        dialects.lock_flush(conn)
        if not all(archive.staged(e.path) for e in new):
            conn.rollback()  # swept as an orphan by a flush elsewhere: the sources stay listed
            return None
        if manifest.remove(conn, sources) != len(sources):
            conn.rollback()  # someone compacted first; our file is an unlisted orphan
            return None
        if plan.twins:
            _drop_folded(archive, ns, plan.twins)
        manifest.add(conn, new)
        # what an earlier compaction's crash left behind goes now (its sources, unlisted)
        sweep_orphans(conn, archive, [ns], keep={e.path for e in (*sources, *new)})
    step("compaction_committed")
    # visible first, then the sources go: a reader globbing meanwhile may see a row twice
    # for an instant, never miss one (an Iceberg snapshot switches atomically)
    for path in sorted(_scans(e.path for e in new)):  # before its base: find looks for it there
        archive.publish_pending(path)
    for e in new:
        archive.publish_pending(e.path)
    step("compaction_published")
    changed(new, sources)
    for e in sources:
        if e.path != merged.path:
            archive.delete(e.path)  # unlisted now: readers no longer open it
    for path in sorted(_scans(e.path for e in sources if e.path != merged.path)):
        archive.delete(path)
    return merged


def _drop_folded(archive: Archive, ns: str, twins: list[manifest.Entry]) -> None:
    """Delete what a crash after a base rewrite left of the bulk entities files these
    twins mirror (unlisted: folded into the base). Done before the twins leave the
    manifest: afterwards nothing would tell such a file from a create_many in progress,
    and the sweep would keep it for its grace period."""
    present = {path for path, _mtime in archive.listing(f"entities/ns={ns}")}
    for twin in twins:
        path = f"entities/ns={ns}/{posixpath.basename(twin.path)}"
        if path in present:
            archive.delete(path)


# ---------------------------------------------------------------------- merging
def _merge_log(
    archive: Archive, kind: str, ns: str, sources: list[manifest.Entry], twins: list[manifest.Entry]
) -> manifest.Entry | None:
    logs = [e for e in sources if e.kind == kind]
    first = min((e.first_seq for e in logs), default=0)
    last = max((e.last_seq for e in logs), default=0)
    suffix = ""
    if twins:  # their ranges are id numbers: name the file by its sources too
        digest = hashlib.sha1("\n".join(sorted(e.path for e in sources)).encode()).hexdigest()[:12]
        suffix = f"-{digest}"
    path = f"{kind}/ns={ns}/c-{first:012d}-{last:012d}{suffix}.parquet"
    if path in {e.path for e in sources}:
        return None  # never overwrite a listed file
    archive.path(path)  # the same checks as every archive path
    schema = _SCHEMA[kind]
    cols = _columns(schema, ns)
    key = _ORDER[kind].split(",")[0]
    queries = [f"SELECT {cols} FROM src{where} ORDER BY {_ORDER[kind]}" for where in _windows(archive, sources, key)]
    with _duck() as con:
        con.register("src", _dataset(archive, sources, schema))
        rows, check = _write(archive, path, con, queries, schema, _JSON[kind])
    return manifest.Entry(kind, ns, first, last, path, rows, check.size, check.text())


def _windows(archive: Archive, sources: list[manifest.Entry], column: str) -> list[str]:
    """WHERE clauses cutting the sources' `column` (each source is sorted by it) into key
    ranges of about WINDOW_ROWS rows, from the row groups' statistics: a merge sorts and
    deduplicates one range at a time, so its memory follows the range, not the namespace
    (one global sort of 1M entity rows needed ~1 GB; DuckDB's window function does not
    spill well). Sources without statistics on the column: one range, the whole."""
    starts: list[tuple[Any, int]] = []
    for e in sources:
        md = archive.footer(e.path)
        paths = [md.schema.column(i).path for i in range(md.num_columns)]
        if column not in paths:
            return [""]
        idx = paths.index(column)
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            st = rg.column(idx).statistics
            if st is None or not st.has_min_max:
                return [""]
            starts.append((st.min, rg.num_rows))
    starts.sort(key=lambda s: s[0])
    bounds: list[Any] = []
    held = 0
    for low, rows in starts:
        if held >= WINDOW_ROWS and (not bounds or low > bounds[-1]):
            bounds.append(low)
            held = 0
        held += rows

    def lit(v: Any) -> str:
        return str(int(v)) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'"

    edges: list[Any] = [None, *bounds, None]
    out = []
    for lo, hi in itertools.pairwise(edges):
        conds = [*([f'"{column}" >= {lit(lo)}'] if lo is not None else []),
                 *([f'"{column}" < {lit(hi)}'] if hi is not None else [])]  # fmt: skip
        out.append(" WHERE " + " AND ".join(conds) if conds else "")
    return out


def _merge_entities(archive: Archive, ns: str, layers: _Layers, mode: str) -> manifest.Entry | None:
    """The merged delta (mode "deltas") or the new base (mode "base") of the namespace."""
    if mode == "deltas":
        sources = list(layers.deltas)
        first = min(e.first_seq for e in sources)
        last = max(e.last_seq for e in sources)
        path = f"{manifest.DELTA_FOLDER}/ns={ns}/{DELTA_PREFIX}{first:012d}-{last:012d}.parquet"
        if path in {e.path for e in sources}:
            return None  # never overwrite a listed file
    else:
        seq_files = [*layers.bases, *layers.deltas]
        sources = [*seq_files, *layers.bulks]
        first = min((e.first_seq for e in seq_files), default=0)
        last = max((e.last_seq for e in seq_files), default=0)
        taken = {e.path for e in sources}
        path = f"entities/ns={ns}/{BASE_PREFIX}{first:012d}-{last:012d}.parquet"
        if path in taken:
            # only bulk files are new since the last base: name it by them too (deterministic,
            # so a retry after a crash writes the same file)
            top = max((e.last_seq for e in layers.bulks), default=0)
            path = f"entities/ns={ns}/{BASE_PREFIX}{first:012d}-{last:012d}-{top:012d}.parquet"
            if path in taken:
                return None
    archive.path(path)  # the same checks as every archive path
    with _duck() as con:
        fields = _base_fields(archive, con, sources)
        typed = {k: t for k, t in fields.items() if t != "mixed"}
        schema = pa.schema(
            [
                *parquet.ENTITIES_SCHEMA,
                *(pa.field(parquet.FIELD_PREFIX + k, parquet.FIELD_TYPES[t]) for k, t in typed.items()),
            ]
        )
        con.register("src", _dataset(archive, sources, schema))
        cols = _columns(schema, ns)
        # an entity's rows share its number, so each number range dedups on its own
        queries = [
            f"SELECT {cols} FROM src{where}"
            " QUALIFY row_number() OVER (PARTITION BY id ORDER BY version DESC, seq DESC) = 1"
            f" ORDER BY {_ORDER['entities']}"
            for where in _windows(archive, sources, "number")
        ]
        meta = {parquet.FIELDS_KEY: json.dumps(fields, separators=(",", ":")).encode()}
        rows, check = _write(archive, path, con, queries, schema.with_metadata(meta), _JSON["entities"])
        if mode != "deltas":  # the scan file's check rides on its base's manifest row
            check = check.with_scan(_write_scan(archive, con, path, schema.with_metadata(meta)))
    return manifest.Entry("entities", ns, first, last, path, rows, check.size, check.text())


def _columns(schema: pa.Schema, ns: str) -> str:
    """The select list of a merge: `ns` is the namespace merged (older sources lack the
    column; `check_namespace` passed, so the literal needs no escaping beyond quotes)."""
    return ", ".join("'" + ns.replace("'", "''") + "' AS ns" if f.name == "ns" else f'"{f.name}"' for f in schema)


def scan_path(base: str) -> str:
    """The scan file of a base file (SCAN_FOLDER)."""
    kind, rest = base.split("/", 1)
    if kind != "entities" or not posixpath.basename(rest).startswith(BASE_PREFIX):
        raise ArchiveError(f"only a base file has a scan file, not {base!r}")
    return f"{SCAN_FOLDER}/{rest}"


def _scans(paths: Iterable[str]) -> set[str]:
    """The scan files of the base files among `paths`."""
    return {scan_path(p) for p in paths if p.startswith("entities/") and posixpath.basename(p).startswith(BASE_PREFIX)}


def _write_scan(archive: Archive, con: Any, base: str, schema: pa.Schema) -> Check:
    """Write the scan file of the base just written (pending, like it), from that file."""
    narrow = pa.schema([f for f in schema if f.name not in _SCAN_DROP], metadata=schema.metadata)
    con.register("written", archive.dataset([pending_name(base)], schema=narrow))
    try:
        cols = ", ".join(f'"{f.name}"' for f in narrow)
        sql = f"SELECT {cols} FROM written"
        return _write(archive, scan_path(base), con, sql, narrow, (), row_group_rows=SCAN_ROWS, scan=True)[1]
    finally:
        con.unregister("written")


def _base_fields(archive: Archive, con: Any, sources: list[manifest.Entry]) -> dict[str, str]:
    """The base's `parquedb.fields`: every field some source holds, first seen first;
    typed where every source holding it has it typed alike (at most MAX_FIELDS typed)."""
    order: dict[str, None] = {}
    types: dict[str, set[str]] = {}
    unmapped: list[manifest.Entry] = []
    for e in sources:
        footer = archive.footer(e.path, Check.of(e))
        fields = parquet.fields_of(footer.metadata)
        if fields is None:
            unmapped.append(e)
            continue
        have = set(footer.schema.to_arrow_schema().names)
        for k, t in fields.items():
            order.setdefault(k)
            # a typed field must come with its column; if not, only the JSON knows it
            types.setdefault(k, set()).add(t if parquet.FIELD_PREFIX + k in have else "mixed")
    if unmapped:  # files written before the map: the fields they hold, from their JSON
        con.register("unmapped", _dataset(archive, unmapped, pa.schema([("state", pa.string())])))
        keys = con.sql(
            "SELECT DISTINCT unnest(json_keys(state)) AS k FROM unmapped WHERE state IS NOT NULL ORDER BY k"
        ).fetchall()
        con.unregister("unmapped")
        for (k,) in keys:
            if not k.startswith("$"):
                order.setdefault(k)
                types.setdefault(k, set()).add("mixed")
    out: dict[str, str] = {}
    n_typed = 0
    for k in order:
        seen = types[k]
        t = next(iter(seen)) if len(seen) == 1 else "mixed"
        if t != "mixed" and (t not in parquet.FIELD_TYPES or n_typed >= parquet.MAX_FIELDS):
            t = "mixed"
        n_typed += t != "mixed"
        out[k] = t
    return out


def _dataset(archive: Archive, sources: list[manifest.Entry], schema: pa.Schema) -> ds.Dataset:
    """The sources as one Arrow dataset, read lazily in batches; a column a file lacks
    (older files, fields it does not hold) reads as NULL. Footers checked first, pages as read."""
    for e in sources:
        archive.verify(e.path, Check.of(e))
    return archive.dataset([e.path for e in sources], schema=schema)


class _duck:
    """A DuckDB connection with bounded memory, spilling to a temporary directory."""

    def __enter__(self) -> Any:
        import duckdb

        self._tmp = tempfile.mkdtemp(prefix="parquedb-compact-")
        self._con = duckdb.connect(
            config={
                "memory_limit": MEMORY_LIMIT,
                "temp_directory": self._tmp,
                "threads": 2,
                "preserve_insertion_order": False,
                # hand freed memory back after each task instead of keeping up to 128 MiB
                # (and 512 MiB after bulk frees) cached: a merge's peak would otherwise stay
                # in the process's RSS after the merge
                "allocator_flush_threshold": "8MB",
                "allocator_bulk_deallocation_flush_threshold": "8MB",
            }
        )
        self._con.execute("SET TimeZone = 'UTC'")
        return self._con

    def __exit__(self, *exc: object) -> None:
        self._con.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def _batches(reader: Any, rows: int) -> Iterator[pa.RecordBatch]:
    """Exactly `rows`-row batches (the last one shorter) from a reader of any batch sizes."""
    pending: list[pa.RecordBatch] = []
    have = 0
    for batch in reader:
        pending.append(batch)
        have += batch.num_rows
        while have >= rows:
            table = pa.Table.from_batches(pending)
            head, rest = table.slice(0, rows), table.slice(rows)
            yield from head.combine_chunks().to_batches()
            pending = rest.to_batches()
            have = rest.num_rows
    if have:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches()


def _write(
    archive: Archive,
    rel: str,
    con: Any,
    sql: str | list[str],
    schema: pa.Schema,
    json_columns: tuple[str, ...],
    *,
    row_group_rows: int = parquet.PIECE_ROWS,
    scan: bool = False,
) -> tuple[int, Check]:
    """Stream a query's rows into the Parquet file `rel`, in row groups of `row_group_rows`,
    left under its pending name (Archive.staging_path / publish); returns (rows, its check). Rows
    of sources written before the plain JSON format are rewritten in it (`parquet.upgrade`)."""
    tmp, scratch = archive.staging_path(rel)
    rows = 0
    try:
        queries = [sql] if isinstance(sql, str) else sql
        batch_rows = max(row_group_rows, parquet.PIECE_ROWS * 16)
        # the queries run one after the other, each streamed: their results are in key order
        reader = (b for q in queries for b in con.sql(q).to_arrow_reader(batch_rows))
        stats = [f.name for f in schema if f.name not in _NO_STATISTICS]
        compression: str = "zstd"
        dictionary: bool | list[str] = True
        if scan:
            # a scan file is read whole by every find: a lighter codec, and no dictionary
            # for numbers (a high-cardinality column falls back from it page by page and
            # decodes ~3x slower than plain); strings and bools keep it
            compression = "snappy"
            dictionary = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_boolean(f.type)]
        with pq.ParquetWriter(
            tmp,
            schema,
            compression=compression,
            use_dictionary=dictionary,
            write_statistics=stats,
            store_schema=keeps_arrow_schema(schema),
            write_page_checksum=True,
        ) as writer:
            for batch in _batches(reader, row_group_rows):
                out = parquet.upgrade(pa.Table.from_batches([batch]).cast(schema), json_columns)
                writer.write_table(out, row_group_size=row_group_rows)
                rows += batch.num_rows
            keep_metadata(writer, schema)
        check = check_of_local(tmp)
        archive.publish(tmp, rel)
    except OSError as exc:
        raise ArchiveError(f"cannot write {archive.path(rel)}: {exc}") from exc
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
    return rows, check


# ---------------------------------------------------------------------- sweeping
#: an unlisted temporary or bulk file younger than this may belong to a write in progress
ORPHAN_GRACE_SECONDS = 3600.0
#: the folders a namespace's files live in
FOLDERS = manifest.FOLDERS


def _listing(archive: Archive, ns: str) -> list[tuple[str, float]]:
    return [found for folder in (*FOLDERS, SCAN_FOLDER) for found in archive.listing(f"{folder}/ns={ns}")]


def clean(archive: Archive, ns: str, cached: Callable[[str, str], list[manifest.Entry]]) -> bool:
    """Whether the namespace's folders hold only files `cached(kind, ns)` lists (nothing
    for `sweep_orphans` to do); folder listings only."""
    known = {e.path for kind in manifest.ALL_KINDS for e in cached(kind, ns)}
    known |= _scans(known)
    return all(path in known for path, _mtime in _listing(archive, ns))


def sweep_orphans(
    conn: Connection,
    archive: Archive,
    namespaces: Iterable[str],
    keep: set[str] | None = None,
    *,
    cached: Callable[[str, str], list[manifest.Entry]] | None = None,
) -> int:
    """Make the folders of these namespaces hold exactly the files the manifest lists.
    Runs under the flush lock, in the caller's transaction. Every writer writes its file
    under a hidden pending name and publishes it only after the commit that lists it
    (archive/files.py), so, per file found:

    - a pending file the manifest lists: its writer crashed between commit and publish;
      publish it now;
    - a pending file it does not list: a write whose transaction has not committed (a
      create_many in another process's application transaction) or never will (a crash,
      a rollback). Invisible to readers either way; deleted once ORPHAN_GRACE_SECONDS old;
    - a hidden temp file (`.<name>.<uuid>.tmp`) of a write in progress: the same;
    - a visible file it does not list: never listed again (the sources of a compaction
      committed just before a crash, or a leftover of a version that wrote files before
      committing them); deleted at once, so a glob reader sees each row once.
    The listing comes first and the manifest is read after it, so a file published after
    its commit is always seen as listed.

    `keep`: paths not to touch (the caller's own files, listed by its uncommitted
    transaction, and a compaction's sources, which it deletes itself after its commit).
    `cached(kind, ns)`: the caller's copy of the manifest lists. When every file the
    folders hold is in it (or in `keep`), there is nothing to sweep and the manifest is not
    read: a flush then reads no row per archive file. Returns the files deleted or published."""
    now = time.time()
    done = 0
    keep = (keep or set()) | _scans(keep or ())
    for ns in namespaces:
        listing = _listing(archive, ns)
        if cached is not None:
            known = {e.path for kind in manifest.ALL_KINDS for e in cached(kind, ns)} | keep
            known |= _scans(known)
            # the caller's own pending files are expected; anyone else's need the full pass
            if all(path in known or published_name(path) in keep for path, _mtime in listing):
                continue
        listed = {e.path for kind in manifest.ALL_KINDS for e in manifest.load(conn, kind, ns)}
        listed |= _scans(listed)  # a base's scan file counts as listed with it
        for path, mtime in listing:
            if path in listed or path in keep:
                continue
            young = now - mtime < ORPHAN_GRACE_SECONDS
            target = published_name(path)
            if target is not None:
                if target in keep:
                    continue  # the caller's own file: published after its commit
                if target in listed:
                    archive.publish_pending(target)
                    done += 1
                    continue
            if (target is not None or path.rsplit("/", 1)[1].startswith(".")) and young:
                continue  # a write in progress, invisible to readers
            archive.delete(path)
            done += 1
    return done
