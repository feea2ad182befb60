"""Compaction: a namespace's files of one kind merged into one, exactly once.

What each kind becomes:
- `entities`: every entities-kind file (deltas and the base) and every bulk file of the
  namespace merge into ONE base file `entities/ns=<ns>/base-<first>-<last>.parquet`
  (first/last: the seq range of the merged entities-kind files, 0-0 if there were only
  bulk files): each id once, at its highest version (ties: the higher `seq`, which is
  the row of the file with the higher last_seq), sorted by (number, id), row groups of
  `parquet.ENTITY_ROW_GROUP_ROWS`, with the shredded `f_<k>` columns and the
  `parquedb.fields` map. A field's type in the base is the type all files holding it
  agree on, else "mixed"; a file without a map makes every field it holds "mixed". The
  bulk files leave the manifest in the same commit (ids no longer map to them: readers
  find those entities in the base); a bulk file without its `bulk_events` twin (archives
  written before twins existed) first gets one, listed in that same commit, so history
  keeps its CREATE events.
- `events`: merged into `events/ns=<ns>/c-<first>-<last>.parquet`, sorted by (id, seq);
  `bulk_events` files are not merged (ids map to them by range);
- `rels`: into `rels/ns=<ns>/c-<first>-<last>.parquet`, sorted by (from_id, seq).

When (`due`):
- events, rels: more than `threshold` (FlushPolicy.compact_after) files of the kind;
- entities: more than `threshold` files counting deltas, bases and bulk files together,
  OR the deltas hold more rows than `DeltaBound.rows(settled)` = max(min_rows,
  fraction x settled), settled being the rows of the base and bulk files. So after every
  compaction pass a namespace has at most `threshold` entity files and its deltas (which
  readers must deduplicate) stay under that bound; a compaction triggered by the row rule
  rewrites at most (1 + 1/fraction) rows per delta row it folds in.

Memory: the merge runs in DuckDB (memory_limit, spilling to a temporary directory) over
Arrow datasets of the sources, read in batches, and its sorted result is streamed into a
`pyarrow.parquet.ParquetWriter`: nothing holds one Python object per row.

Exactly once (the same protocol as a flush): write the merged file under a deterministic
name, then ONE durable transaction under the flush lock: check the new files still exist
(a concurrent flush's sweep may have taken them as orphans), remove exactly the source
rows (rowcount check: else someone compacted first), add the new rows. Only then are the
sources deleted. A crash anywhere loses and duplicates nothing for manifest readers; the
files it leaves unlisted are swept (`sweep_orphans`), so a reader globbing the folders
sees each row once after the next sweep.

The engine is seen only through an Engine, the Archive and the runtime's
`manifest_changed(added, removed)` callback. `step` is the crash-test hook of the caller
(flush.py's `_step`), called with "compacted_file_written" and "compaction_committed".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from sqlalchemy import Connection, Engine

from parquedb_orm.archive import bulk, parquet
from parquedb_orm.archive.files import Archive
from parquedb_orm.core.ids import check_namespace
from parquedb_orm.errors import ArchiveError
from parquedb_orm.sql import dialects, manifest

Changed = Callable[[list[manifest.Entry], list[manifest.Entry]], None]
Step = Callable[[str], None]
FileLister = Callable[[Connection, str, str], list[manifest.Entry]]

#: kinds compaction merges (entities includes the namespace's bulk files)
COMPACTED = ("events", "rels", "entities")
BASE_PREFIX = "base-"
#: DuckDB's memory for one merge; beyond it, it spills to a temporary directory
MEMORY_LIMIT = "1GB"  # 256MB failed at 1M entities: Arrow scans pin blocks DuckDB cannot spill
#: JSON text columns: their min/max prune nothing (as archive/files.py writes them)
_NO_STATISTICS = frozenset({"state", "data", "before", "after", "meta"})
_ORDER = {"events": "id, seq", "rels": "from_id, seq", "entities": "number, id"}
_SCHEMA = {"events": parquet.EVENTS_SCHEMA, "rels": parquet.RELS_SCHEMA, "entities": parquet.ENTITIES_SCHEMA}


def _no_step(_name: str) -> None:
    return None


@dataclass(frozen=True)
class DeltaBound:
    """Deltas of a namespace are compacted before they hold more than
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

    def due(self, threshold: int, bound: DeltaBound) -> bool:
        if self.count <= 1:
            return False  # one file (or none) is already compact
        if self.count > threshold:
            return True
        settled = sum(e.row_count for e in (*self.bases, *self.bulks))
        return sum(e.row_count for e in self.deltas) > bound.rows(settled)


def is_base(entry: manifest.Entry) -> bool:
    """A base file (written by compaction: every entity of its namespace once)."""
    return entry.kind == "entities" and entry.path.rsplit("/", 1)[-1].startswith(BASE_PREFIX)


def due(
    conn: Connection,
    kind: str,
    ns: str,
    threshold: int,
    bound: DeltaBound | None = None,
    files: FileLister | None = None,
) -> bool:
    """Whether `compact(kind, ns)` would merge now (the rules of the module doc)."""
    if kind == "entities":
        return _Layers.load(conn, ns, files).due(threshold, bound or DeltaBound())
    return len((files or manifest.load)(conn, kind, ns)) > threshold


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
    """Compact every (kind, namespace) that is due; returns the merged files' entries.
    `files`: the engine's cached manifest reads, used only to decide what is due (each
    compaction reads the manifest again). The caller serialises compactions of a process
    (Flusher's lock); other processes are excluded by the commit protocol."""
    with engine.connect() as conn:
        names = namespaces if namespaces is not None else sorted({e.ns for e in manifest.load_all(conn)})
        todo = [(kind, ns) for ns in names for kind in COMPACTED if due(conn, kind, ns, threshold, bound, files)]
    done = []
    for kind, ns in todo:
        merged = compact(engine, archive, changed, kind, ns, threshold, bound=bound, step=step)
        if merged is not None:
            done.append(merged)
    return done


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
    file's entry (for entities: the base), or None when nothing was due or another
    process changed the files first (nothing lost: the sources stay listed)."""
    if kind not in COMPACTED:
        raise ArchiveError(f"compaction merges {COMPACTED}, not {kind!r}")
    check_namespace(ns)
    with engine.connect() as conn:
        if kind == "entities":
            layers = _Layers.load(conn, ns)
            if not layers.due(threshold, bound or DeltaBound()):
                return None
            twins = {e.first_seq for e in manifest.load(conn, manifest.BULK_EVENTS, ns)}
            sources = [*layers.bases, *layers.deltas, *layers.bulks]
        else:
            sources = manifest.load(conn, kind, ns)
            if len(sources) <= threshold or len(sources) <= 1:
                return None
    if kind == "entities":
        added = [bulk.write_twin_of(archive, e) for e in layers.bulks if e.first_seq not in twins]
        merged = _merge_entities(archive, ns, layers)
    else:
        added = []
        merged = _merge_log(archive, kind, ns, sources)
    if merged is None:
        return None
    step("compacted_file_written")
    new = [merged, *added]
    # the sources are deleted right after this commit: it must survive a power loss even
    # where commits in general need not (synchronous=NORMAL), or the manifest could come
    # back listing deleted files
    with dialects.durable_begin(engine) as conn:
        dialects.lock_flush(conn)
        if not all(archive.exists(e.path) for e in new):
            conn.rollback()  # swept as an orphan by a flush elsewhere: the sources stay listed
            return None
        if manifest.remove(conn, sources) != len(sources):
            conn.rollback()  # someone compacted first; our file is an unlisted orphan
            return None
        manifest.add(conn, new)
        # what an earlier compaction's crash left behind goes now (its sources, unlisted)
        sweep_orphans(conn, archive, [ns], keep={e.path for e in sources})
    step("compaction_committed")
    changed(new, sources)
    for e in sources:
        if e.path != merged.path:
            archive.delete(e.path)  # unlisted now: readers no longer open it
    return merged


# ---------------------------------------------------------------------- merging
def _merge_log(archive: Archive, kind: str, ns: str, sources: list[manifest.Entry]) -> manifest.Entry | None:
    first, last = sources[0].first_seq, max(e.last_seq for e in sources)
    path = Archive.file_name(kind, ns, first, last, prefix="c-")
    if path in {e.path for e in sources}:
        return None  # cannot happen with disjoint ranges; never overwrite a listed file
    schema = _SCHEMA[kind]
    cols = ", ".join(f'"{f.name}"' for f in schema)
    with _duck() as con:
        con.register("src", _dataset(archive, sources, schema))
        rows, size = _write(archive, path, con, f"SELECT {cols} FROM src ORDER BY {_ORDER[kind]}", schema)
    return manifest.Entry(kind, ns, first, last, path, rows, size)


def _merge_entities(archive: Archive, ns: str, layers: _Layers) -> manifest.Entry | None:
    seq_files = [*layers.bases, *layers.deltas]
    first = min((e.first_seq for e in seq_files), default=0)
    last = max((e.last_seq for e in seq_files), default=0)
    taken = {e.path for e in (*seq_files, *layers.bulks)}
    path = f"entities/ns={ns}/{BASE_PREFIX}{first:012d}-{last:012d}.parquet"
    if path in taken:
        # only bulk files are new since the last base: name it by them too (deterministic,
        # so a retry after a crash writes the same file)
        top = max((e.last_seq for e in layers.bulks), default=0)
        path = f"entities/ns={ns}/{BASE_PREFIX}{first:012d}-{last:012d}-{top:012d}.parquet"
        if path in taken:
            return None
    archive.path(path)  # the same checks as every archive path
    sources = [*layers.bases, *layers.deltas, *layers.bulks]
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
        cols = ", ".join(f'"{f.name}"' for f in schema)
        sql = (
            f"SELECT {cols} FROM src"
            " QUALIFY row_number() OVER (PARTITION BY id ORDER BY version DESC, seq DESC) = 1"
            f" ORDER BY {_ORDER['entities']}"
        )
        meta = {parquet.FIELDS_KEY: json.dumps(fields, separators=(",", ":")).encode()}
        rows, size = _write(archive, path, con, sql, schema.with_metadata(meta))
    return manifest.Entry("entities", ns, first, last, path, rows, size)


def _base_fields(archive: Archive, con: Any, sources: list[manifest.Entry]) -> dict[str, str]:
    """The base's `parquedb.fields`: every field some source holds, first seen first;
    typed where every source holding it has it typed alike (at most MAX_FIELDS typed)."""
    order: dict[str, None] = {}
    types: dict[str, set[str]] = {}
    unmapped: list[manifest.Entry] = []
    for e in sources:
        footer = archive.footer(e.path)
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
    (older files, fields it does not hold) reads as NULL."""
    return ds.dataset([archive.path(e.path) for e in sources], schema=schema, format="parquet", filesystem=archive.fs)


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


def _write(archive: Archive, rel: str, con: Any, sql: str, schema: pa.Schema) -> tuple[int, int]:
    """Stream a query's rows into the Parquet file `rel`, published atomically for readers
    (Archive.staging_path / publish); returns (rows, bytes)."""
    tmp, scratch = archive.staging_path(rel)
    rows = 0
    try:
        reader = con.sql(sql).to_arrow_reader(parquet.PIECE_ROWS * 16)
        stats = [f.name for f in schema if f.name not in _NO_STATISTICS]
        with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=True, write_statistics=stats) as writer:
            for batch in _batches(reader, parquet.PIECE_ROWS):
                out = pa.Table.from_batches([batch]).cast(schema)
                writer.write_table(out, row_group_size=parquet.PIECE_ROWS)
                rows += batch.num_rows
        size = os.path.getsize(tmp)
        archive.publish(tmp, rel)
    except OSError as exc:
        raise ArchiveError(f"cannot write {archive.path(rel)}: {exc}") from exc
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        elif os.path.exists(tmp):
            os.unlink(tmp)
    return rows, size


# ---------------------------------------------------------------------- sweeping
#: an unlisted temporary or bulk file younger than this may belong to a write in progress
ORPHAN_GRACE_SECONDS = 3600.0


def sweep_orphans(
    conn: Connection,
    archive: Archive,
    namespaces: list[str],
    keep: set[str] | None = None,
    *,
    cached: Callable[[str, str], list[manifest.Entry]] | None = None,
) -> int:
    """Delete Parquet files of these namespaces that the manifest does not list: leftovers
    of a crash (a flush retried over a longer range, the sources of a compaction committed
    just before the crash). Runs under the flush lock; a writer checks its own files still
    exist under that lock before listing them, so a sweep never loses data. Readers that
    glob the folders (DuckDB's read_parquet) then see each row once.

    A young unlisted `bulk-` file may be a create_many whose transaction has not committed
    yet, and is kept for ORPHAN_GRACE_SECONDS; except a bulk entities file whose twin
    (`events/.../bulk-<same range>`) is listed: that create_many committed, so compaction
    folded the file into the base. `keep`: paths not to delete (a compaction's sources,
    which it deletes itself once its commit is durable).

    `cached(kind, ns)`: the caller's copy of the manifest lists. When every file the folders
    hold is in it (or in `keep`), there is nothing to sweep and the manifest is not read:
    a flush then reads no row per archive file."""
    now = time.time()
    removed = 0
    for ns in namespaces:
        listing = [(folder, found) for folder in manifest.KINDS for found in archive.listing(f"{folder}/ns={ns}")]
        if cached is not None:
            known = {e.path for kind in manifest.ALL_KINDS for e in cached(kind, ns)} | (keep or set())
            if all(path in known for _folder, (path, _mtime) in listing):
                continue
        entries = [e for kind in manifest.ALL_KINDS for e in manifest.load(conn, kind, ns)]
        listed = {e.path for e in entries} | (keep or set())
        twins = {e.path for e in entries if e.kind == manifest.BULK_EVENTS}
        for folder, (path, mtime) in listing:
            if path in listed:
                continue
            name = path.rsplit("/", 1)[1]
            young = now - mtime < ORPHAN_GRACE_SECONDS
            folded = folder == "entities" and f"events/ns={ns}/{name}" in twins
            if (name.startswith(".") or (name.startswith("bulk-") and not folded)) and young:
                continue  # a write (or an application transaction's create_many) in progress
            archive.delete(path)
            removed += 1
    return removed
