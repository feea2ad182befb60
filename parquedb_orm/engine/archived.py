"""Reads of the Parquet archive that the engine caches: manifest entries per kind and
namespace, file footers (row-group ranges) and delta id sets, and point reads through them.

The latest archived state of an id (`lookup`): the entities layers probed newest first,
stopping at the first file that holds it: deltas (every entities-kind file whose name
does not start with `base-`) by `last_seq` descending, then base files (compaction), then
the bulk file whose id-number range holds it. Inside a file only the row groups whose
`number` min/max covers the id are read, and of them only id/version/seq/state/types.

Caches hold no decoded states: per file, the min/max of its key column per row group
(bounded by `max_footers` files), its parsed footer (bounded by `max_footer_bytes`), for
deltas the set of their ids (bounded by `max_delta_ids` ids in all; a delta beyond that
is probed by its row-group ranges instead), and the pieces point reads fetched, as the
Arrow columns read (bounded by `max_piece_bytes`: a get of a neighbour in the same piece
then costs a filter and one decode, not another ~1 ms read of the file). A listed path
never changes, so none of these go stale, in shared mode either; only manifest lists are
re-read there.
"""

from __future__ import annotations

import bisect
import posixpath
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import Connection

from parquedb_orm.archive import parquet
from parquedb_orm.archive.files import Archive, Check
from parquedb_orm.archive.pieces import KEY_COLUMN, IdSet, Ranges
from parquedb_orm.core.events import Event, RelEvent, State, Versioned
from parquedb_orm.core.ids import chunk_number, decode_id
from parquedb_orm.engine.state import Known
from parquedb_orm.sql import manifest

#: manifest kind of the CREATE events of a bulk file (events/ns=<ns>/bulk-*.parquet)
BULK_EVENTS = "bulk_events"
#: the columns a point read takes from an entities file
#: `types`: only newer files have it; `number` (the rows' sort key) lets a probe seek its row
_POINT_COLUMNS = ["id", "number", "version", "seq", "state", "types"]
#: the columns that tell whether a point read's entity is live (`ArchivedReads.presence`)
_PRESENCE_COLUMNS = ["id", "number", "version", "seq", "created_at", "deleted_at"]
#: what an Event needs of an events row: not the before/after states, most of its bytes
_EVENT_COLUMNS = ["seq", "ts", "op", "id", "version", "actor", "data", "meta", "types"]

Latest = tuple[int, int, State | None]
_T = TypeVar("_T")  # (version, seq of the last event folded in, state or None)
#: a namespace's archived states are kept (`states`) only while its entities and bulk
#: files hold at most this many rows: engine/store.py PUSHDOWN_ABOVE, past which find
#: scans the files with DuckDB and never asks for them (without the bound, `learn` grew
#: the dict by every entity flushed, for good: +1 KiB an entity in the soak)
MAX_ARCHIVED_STATES = 20_000


def is_base(entry: manifest.Entry) -> bool:
    """A base file: written by compaction, every entity of its namespace once."""
    return entry.kind == "entities" and posixpath.basename(entry.path).startswith("base-")


class ArchivedReads:
    def __init__(
        self,
        known: Known,
        archive: Archive | None,
        *,
        max_footers: int = 1024,
        max_footer_bytes: int = 32 << 20,
        max_delta_ids: int = 1_000_000,
        max_piece_bytes: int = 16 << 20,
        max_archived_states: int = MAX_ARCHIVED_STATES,
    ) -> None:
        """`max_footers`: files whose row-group ranges stay cached (16 bytes a row group
        of an entities file); `max_footer_bytes`: parsed Parquet footers kept, by their
        serialized size (a footer kept saves re-reading it before each piece);
        `max_delta_ids`: ids of delta files held as id sets, all deltas together (8 bytes
        an id); `max_piece_bytes`: point-read pieces kept (their Arrow buffers);
        `max_archived_states`: a namespace's states kept for its in-memory find (`states`)
        while it has at most this many archived rows."""
        self.known = known
        self.lock = known.lock
        self.archive = archive
        self.max_footers = max_footers
        self.max_footer_bytes = max_footer_bytes
        self.max_delta_ids = max_delta_ids
        self.max_piece_bytes = max_piece_bytes
        self._piece_cache: OrderedDict[tuple[str, int, tuple[str, ...] | None], Any] = OrderedDict()
        self._piece_bytes = 0
        self.max_archived_states = max_archived_states
        self._manifest: dict[tuple[str, str], list[manifest.Entry]] = {}
        #: the whole manifest was read (preload) and every change since applied (`changed`)
        self._complete = False
        #: files found one by one (manifest.covering) before the namespace's list was read
        self._seen: dict[tuple[str, str], list[manifest.Entry]] = {}
        self._ranges: OrderedDict[str, Ranges] = OrderedDict()
        self._footers: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._footer_bytes = 0
        self._delta_ids: dict[str, IdSet] = {}
        self._delta_total = 0
        #: deltas refused an id set (the budget was spent): probed by ranges
        self._no_ids: set[str] = set()
        # used only until find moves to engine/find.py
        self._archived_states: dict[str, dict[str, Latest]] = {}

    # ------------------------------------------------------------------ manifest
    def files(self, conn: Connection, kind: str, ns: str) -> list[manifest.Entry]:
        """Manifest entries of one kind and namespace (cached by a single owner)."""
        key = (kind, ns)
        with self.lock:
            hit = self._manifest.get(key)
            if hit is None and self._complete:
                hit = self._manifest[key] = []  # preloaded: a kind the manifest has no row of
        if hit is not None and not self.known.shared:
            return hit
        entries = manifest.load(conn, kind, ns)
        with self.lock:
            self._manifest[key] = entries
        return entries

    def preload(self, conn: Connection) -> int:
        """Read the whole manifest once (one statement, a row per file: compaction bounds
        the count), so a single owner's reads never seek it again. Returns the file count."""
        entries = manifest.load_all(conn)
        grouped: dict[tuple[str, str], list[manifest.Entry]] = {}
        for e in entries:
            grouped.setdefault((e.kind, e.ns), []).append(e)
        with self.lock:
            self._complete = True
            for key, found in grouped.items():
                self._manifest[key] = sorted(found, key=lambda x: x.first_seq)
        return len(entries)

    def all_files(self) -> list[manifest.Entry] | None:
        """The whole manifest as a single owner knows it (read at open, kept current by its
        own commits, flushes and compactions), or None where it must be read afresh
        (shared mode, or not preloaded)."""
        with self.lock:
            if not self._complete or self.known.shared:
                return None
            return [e for entries in self._manifest.values() for e in entries]

    def changed(self, added: list[manifest.Entry], removed: list[manifest.Entry]) -> None:
        with self.lock:
            for e in removed:
                seen = self._seen.get((e.kind, e.ns))
                if seen is not None:
                    self._seen[(e.kind, e.ns)] = [x for x in seen if x.path != e.path]
                cached = self._manifest.get((e.kind, e.ns))
                if cached is not None:
                    self._manifest[(e.kind, e.ns)] = [x for x in cached if x.path != e.path]
                self._forget(e.path)
            for e in added:
                cached = self._manifest.get((e.kind, e.ns), [] if self._complete else None)
                if cached is not None:
                    self._manifest[(e.kind, e.ns)] = sorted(
                        [*(x for x in cached if x.path != e.path), e], key=lambda x: x.first_seq
                    )

    def _forget(self, path: str) -> None:
        """Drop what is cached of a file no longer listed (caller holds the lock)."""
        self._ranges.pop(path, None)
        footer = self._footers.pop(path, None)
        if footer is not None:
            self._footer_bytes -= footer[1]
        ids = self._delta_ids.pop(path, None)
        if ids is not None:
            self._delta_total -= len(ids)
        self._no_ids.discard(path)

    def put_files(self, kind: str, entries: list[manifest.Entry], names: list[str]) -> None:
        """Manifest entries of one kind read for several namespaces at once."""
        with self.lock:
            for n in names:
                self._manifest[(kind, n)] = [e for e in entries if e.ns == n]

    def _covering(self, conn: Connection, kind: str, ns: str, number: int) -> manifest.Entry | None:
        """The file of a number-ranged kind (bulk, bulk_events) holding `number`: from the
        cached list, else one seek (manifest.covering), remembered."""
        shared = self.known.shared
        with self.lock:
            listed = None if shared else self._manifest.get((kind, ns), [] if self._complete else None)
            seen = [] if shared else [e for e in self._seen.get((kind, ns), ()) if e.first_seq <= number <= e.last_seq]
        if listed is not None:
            i = bisect.bisect_right([e.first_seq for e in listed], number) - 1
            return listed[i] if i >= 0 and number <= listed[i].last_seq else None
        if seen:
            return seen[0]
        found = manifest.covering(conn, kind, ns, number)
        if found is None or number > found.last_seq:
            return None
        if not shared:
            with self.lock:
                self._seen.setdefault((kind, ns), []).append(found)
        return found

    # ------------------------------------------------------------------ pieces
    def metadata(self, entry: manifest.Entry) -> Any:
        """A file's parsed footer from the footer cache (None when over its budget)."""
        return self._footer(entry)[1]

    def _footer(self, entry: manifest.Entry) -> tuple[Ranges, Any]:
        """A file's row-group ranges and, while within budget, its parsed footer (None:
        read it again with the pieces)."""
        path = entry.path
        with self.lock:
            ranges = self._ranges.get(path)
            footer = self._footers.get(path)
            if ranges is not None:
                self._ranges.move_to_end(path)
                if footer is not None:
                    self._footers.move_to_end(path)
                    return ranges, footer[0]
        assert self.archive is not None
        metadata = self.archive.footer(path, Check.of(entry))
        if ranges is None:
            ranges = Ranges.of(metadata, KEY_COLUMN.get(entry.kind, "id"))
        size = int(metadata.serialized_size)
        with self.lock:
            self._ranges[path] = ranges
            self._ranges.move_to_end(path)
            while len(self._ranges) > self.max_footers:
                self._ranges.popitem(last=False)
            if size <= self.max_footer_bytes and path not in self._footers:
                self._footers[path] = (metadata, size)
                self._footer_bytes += size
                while self._footer_bytes > self.max_footer_bytes:
                    _p, (_m, n) = self._footers.popitem(last=False)
                    self._footer_bytes -= n
        return ranges, metadata

    def _pieces(self, entry: manifest.Entry, groups: list[int], columns: list[str] | None, metadata: Any) -> Any:
        assert self.archive is not None
        return self.archive.read_row_groups(entry.path, groups, columns, metadata=metadata, check=Check.of(entry))

    def _point_pieces(self, entry: manifest.Entry, groups: list[int], metadata: Any) -> Any:
        """The point columns of these row groups, from the piece cache where it has them."""
        return self.cached_pieces(entry, groups, metadata, _POINT_COLUMNS)

    def cached_pieces(
        self, entry: manifest.Entry, groups: list[int], metadata: Any, columns: list[str] | None = None
    ) -> Any:
        """These row groups' `columns` (None: all), from the piece cache where it has them
        (files never change; bounded by `max_piece_bytes`)."""
        import pyarrow as pa

        if metadata is None and len(groups) > 1:  # no row counts to cut the read into pieces
            return self._pieces(entry, groups, columns, metadata)
        path = entry.path
        cols = None if columns is None else tuple(columns)
        got: dict[int, Any] = {}
        with self.lock:
            for g in groups:
                hit = self._piece_cache.get((path, g, cols))
                if hit is not None:
                    self._piece_cache.move_to_end((path, g, cols))
                    got[g] = hit
        missing = [g for g in groups if g not in got]
        if missing:
            table = self._pieces(entry, missing, columns, metadata)
            parts: dict[int, Any] = {}
            if len(missing) == 1:
                parts[missing[0]] = table
            else:
                offset = 0
                for g in missing:
                    rows = metadata.row_group(g).num_rows
                    parts[g] = table.slice(offset, rows)
                    offset += rows
            got.update(parts)
            with self.lock:
                for g, part in parts.items():
                    size = part.nbytes
                    if size > self.max_piece_bytes or (path, g, cols) in self._piece_cache:
                        continue
                    self._piece_cache[(path, g, cols)] = part
                    self._piece_bytes += size
                while self._piece_bytes > self.max_piece_bytes and self._piece_cache:
                    _k, old = self._piece_cache.popitem(last=False)
                    self._piece_bytes -= old.nbytes
        tables = [got[g] for g in groups]
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables)

    def rows_by_number(self, entry: manifest.Entry, numbers: Iterable[int], columns: list[str]) -> Any:
        """The rows of an entities file whose `number` is one of `numbers`, reading only the
        pieces that can hold them (cached footer), as an Arrow table of `columns` (which
        must include `number`). For find's second phase: the winners' states."""
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = sorted(set(numbers))
        ranges, metadata = self._footer(entry)
        groups = sorted({g for n in wanted for g in ranges.groups(n)})
        if not groups:
            return pa.table({c: pa.array([], pa.null()) for c in columns})
        table = self.cached_pieces(entry, groups, metadata, columns)  # a warm find reads no file
        return table.filter(pc.is_in(table.column("number"), value_set=pa.array(wanted, pa.int64())))

    def _ids_of(self, entry: manifest.Entry) -> IdSet | None:
        """A delta's id set: read once (its `id` column only), None beyond the budget."""
        path = entry.path
        with self.lock:
            hit = self._delta_ids.get(path)
            if hit is not None or path in self._no_ids:
                return hit
            if self._delta_total + entry.row_count > self.max_delta_ids:
                self._no_ids.add(path)
                return None
        ranges, metadata = self._footer(entry)
        groups = list(range(len(ranges.lo)))
        ids = self._pieces(entry, groups, ["id"], metadata).column("id").to_pylist() if groups else []
        return self._install_ids(path, ids)

    def _install_ids(self, path: str, ids: Iterable[str]) -> IdSet | None:
        made = IdSet(ids)
        with self.lock:
            if path in self._delta_ids:
                return self._delta_ids[path]
            if self._delta_total + len(made) > self.max_delta_ids:
                self._no_ids.add(path)
                return None
            self._delta_ids[path] = made
            self._delta_total += len(made)
            return made

    def delta_written(self, ns: str, entry: manifest.Entry, ids: Iterable[str]) -> None:
        """A flush just wrote this delta with these ids: its id set, without reading it
        back (the manifest list learns the file through `changed`)."""
        if self.archive is not None:
            self._install_ids(entry.path, ids)

    # ------------------------------------------------------------------ point reads
    def presence(self, conn: Connection, ns: str, entity_id: str) -> bool | None:
        """Whether the archive's latest row of the id is a live entity (True), a deleted one
        (False) or nothing (None: never archived, or hard-deleted), read from the pieces'
        small columns only, not the JSON state (a link's endpoint check at 1M entities
        read a whole 1,024-row piece of states per endpoint)."""
        hit = self.lookup(conn, ns, [entity_id], narrow=True).get(entity_id)
        if hit is None or hit[2] is None:
            return None
        return "deletedAt" not in hit[2]

    def lookup(self, conn: Connection, ns: str, ids: Iterable[str], *, narrow: bool = False) -> dict[str, Latest]:
        """The latest archived (version, seq, state) of each id the archive holds (state
        None: hard-deleted); ids it does not hold are left out. Batched: each row group
        needed is read once for all the ids it holds. `narrow` (for `presence` only): the
        state is a stand-in, `{}` for a live entity and `{"deletedAt": True}` for a deleted
        one, read from `_PRESENCE_COLUMNS`."""
        if self.archive is None:
            return {}
        left = {eid: chunk_number(eid) for eid in dict.fromkeys(ids)}
        found: dict[str, Latest] = {}
        if not left:
            return found
        entities = self.files(conn, "entities", ns)
        deltas = sorted((e for e in entities if not is_base(e)), key=lambda e: e.last_seq, reverse=True)
        bases = sorted((e for e in entities if is_base(e)), key=lambda e: e.last_seq, reverse=True)
        for entry in deltas:
            if not left:
                return found
            members = self._ids_of(entry)
            probe = list(left) if members is None else [eid for eid in left if eid in members]
            if probe:
                self._probe(entry, probe, left, found, narrow)
        for entry in bases:
            if not left:
                return found
            self._probe(entry, list(left), left, found, narrow)
        by_file: dict[str, tuple[manifest.Entry, list[str]]] = {}
        for eid in list(left):
            number = decode_id(eid)
            if number is None:
                continue  # a key id: never in a bulk file
            # a file this call already found serves every id in its range (no seek each)
            bulk = next((e for e, _ in by_file.values() if e.first_seq <= number <= e.last_seq), None)
            bulk = bulk or self._covering(conn, manifest.BULK, ns, number)
            if bulk is not None:
                by_file.setdefault(bulk.path, (bulk, []))[1].append(eid)
        for entry, probe in by_file.values():
            self._probe(entry, probe, left, found, narrow)
        return found

    def _probe(
        self, entry: manifest.Entry, probe: list[str], left: dict[str, int], found: dict[str, Latest], narrow: bool
    ) -> None:
        """Read the row groups of one file that may hold `probe`; move the ids found from
        `left` to `found` (`narrow`: see `lookup`)."""
        ranges, metadata = self._footer(entry)
        groups: set[int] = set()
        for eid in probe:
            groups.update(ranges.groups(left[eid]))
            if ranges.fields is None and decode_id(eid) is None:
                groups.update(ranges.groups(0))  # flushes before the sort stored 0 for key ids
        if not groups:
            return
        import pyarrow as pa
        import pyarrow.compute as pc

        if narrow and metadata is not None and {"created_at", "deleted_at"} <= set(metadata.schema.names):
            table = self.cached_pieces(entry, sorted(groups), metadata, _PRESENCE_COLUMNS)
        else:
            narrow = False  # an older file without those columns: the states tell
            table = self._point_pieces(entry, sorted(groups), metadata)
        rows = _seek(table, probe, left)
        if rows is not None:
            table = table.take(pa.array(rows, pa.int64()))
        else:
            table = table.filter(pc.is_in(table.column("id"), value_set=pa.array(probe, pa.string())))
        if narrow:
            states = _presence(table)
        else:
            assert self.archive is not None
            with self.archive.decoding(entry.path):
                states = parquet.table_states(table)
        for eid, value in states.items():
            found[eid] = value
            left.pop(eid, None)

    def bulk_base(self, conn: Connection, ns: str, entity_id: str) -> Versioned:
        """The latest archived state of one id (all layers, bulk files included)."""
        hit = self.lookup(conn, ns, [entity_id]).get(entity_id)
        return (0, None) if hit is None else (hit[0], hit[2])

    # ------------------------------------------------------------------ history
    def _rows_of(
        self,
        entry: manifest.Entry,
        column: str,
        key: Any,
        value: str,
        columns: list[str] | None = None,
        *,
        cached: bool = False,
    ) -> Any:
        """The rows of one file whose `column` equals `value`, from the row groups whose
        range of the file's key column covers `key`; None when no row group can. Only
        `columns` are read (all when None; a column the file lacks is left out).
        `cached`: through the piece cache (relationship reads come back to the same pieces)."""
        import pyarrow.compute as pc

        ranges, metadata = self._footer(entry)
        groups = ranges.groups(key)
        if not groups:
            return None
        if cached:
            table = self.cached_pieces(entry, groups, metadata, columns)
        else:
            table = self._pieces(entry, groups, columns, metadata)
        return table.filter(pc.equal(table.column(column), value))

    def _decoded(self, entry: manifest.Entry, decode: Callable[[Any], _T], table: Any) -> _T:
        """Rows of `entry` decoded; a cell that does not decode is an ArchiveError naming the file."""
        assert self.archive is not None
        with self.archive.decoding(entry.path):
            return decode(table)

    def events(self, conn: Connection, ns: str, entity_id: str) -> list[Event]:
        """Every archived event of one entity, oldest first (bulk creates included): only
        the row groups whose `id` range covers it are read."""
        if self.archive is None:
            return []
        out: list[Event] = []
        for entry in self.files(conn, "events", ns):
            # through the piece cache: history and as_of of one entity come back to its pieces
            table = self._rows_of(entry, "id", entity_id, entity_id, _EVENT_COLUMNS, cached=True)
            if table is not None:
                out.extend(self._decoded(entry, parquet.table_events, table))
        number = decode_id(entity_id)
        if number is not None:
            twin = self._covering(conn, BULK_EVENTS, ns, number)
            if twin is not None:
                table = self._rows_of(twin, "id", entity_id, entity_id, _EVENT_COLUMNS)
                if table is not None:
                    out.extend(self._decoded(twin, parquet.table_events, table))
            else:  # a bulk file written before its CREATE events were: derive them from its row
                bulk = self._covering(conn, manifest.BULK, ns, number)
                if bulk is not None:
                    table = self._rows_of(bulk, "id", number, entity_id)
                    if table is not None:
                        out.extend(self._decoded(bulk, lambda t: parquet.bulk_create_events(ns, t), table))
        out.sort(key=lambda e: e.seq)
        return out

    def rel_events_of(self, conn: Connection, ns: str, entity_id: str) -> list[RelEvent]:
        """Outbound relationship events of one entity, oldest first: only the row groups
        whose `from_id` range covers it are read."""
        if self.archive is None:
            return []
        out: list[RelEvent] = []
        for entry in self.files(conn, "rels", ns):
            table = self._rows_of(entry, "from_id", entity_id, entity_id, cached=True)
            if table is not None:
                out.extend(self._decoded(entry, parquet.table_rel_events, table))
        out.sort(key=lambda r: r.seq)
        return out

    def rel_events(self, conn: Connection, ns: str) -> list[RelEvent]:
        """Every archived relationship event of a namespace (the relationship index)."""
        if self.archive is None:
            return []
        out: list[RelEvent] = []
        for entry in self.files(conn, "rels", ns):
            table = self.archive.read_table(entry.path, check=Check.of(entry))
            out.extend(self._decoded(entry, parquet.table_rel_events, table))
        out.sort(key=lambda r: r.seq)  # files are sorted by (from_id, seq)
        return out

    # ------------------------------------------------------------------ whole namespace
    def count(self, conn: Connection, ns: str) -> int:
        return sum(e.row_count for kind in ("entities", manifest.BULK) for e in self.files(conn, kind, ns))

    def states(self, conn: Connection, ns: str) -> dict[str, Latest]:
        """Latest archived state of every entity of `ns` (flushed and bulk files).
        Used only until find moves to engine/find.py."""
        if self.archive is None:
            return {}
        with self.lock:
            hit = self._archived_states.get(ns)
        if hit is not None and not self.known.shared:
            return hit
        merged: dict[str, Latest] = {}
        for entry in [*self.files(conn, manifest.BULK, ns), *self.files(conn, "entities", ns)]:
            table = self.archive.read_table(entry.path, columns=_POINT_COLUMNS, check=Check.of(entry))
            for eid, value in self._decoded(entry, parquet.table_states, table).items():
                old = merged.get(eid)
                if old is None or old[0] <= value[0]:
                    merged[eid] = value
        with self.lock:
            if self._states_fit(ns, len(merged)):
                self._archived_states[ns] = merged
        return merged

    def _states_fit(self, ns: str, held: int) -> bool:
        """Whether a namespace's states may stay cached (caller holds the lock): at most
        `max_archived_states` of them, and as many archived rows (those of the manifest
        lists cached; a list not cached counts 0)."""
        if held > self.max_archived_states:
            return False
        rows = sum(e.row_count for kind in ("entities", manifest.BULK) for e in self._manifest.get((kind, ns), ()))
        return rows <= self.max_archived_states

    def learn(self, ns: str, latest: dict[str, Latest]) -> None:
        """A flush archived these latest states (caller holds the lock).
        Used only until find moves to engine/find.py."""
        cached = self._archived_states.get(ns)
        if cached is not None:
            for eid, value in latest.items():
                old = cached.get(eid)
                if old is None or old[0] <= value[0]:
                    cached[eid] = value
            if not self._states_fit(ns, len(cached)):
                del self._archived_states[ns]  # find scans the files now (see MAX_ARCHIVED_STATES)

    def bulk_created(self, ns: str, states: list[tuple[str, State]]) -> None:
        """A commit listed a bulk file with these entities (caller holds the lock).
        Used only until find moves to engine/find.py."""
        archived = self._archived_states.get(ns)
        if archived is not None:
            for eid, state in states:
                archived[eid] = (1, 0, state)
            if not self._states_fit(ns, len(archived)):
                del self._archived_states[ns]


def _presence(table: Any) -> dict[str, Latest]:
    """`lookup(narrow=True)`'s rows: per id its highest version, with a stand-in state (a
    row without `created_at` is a hard delete: every stored state has one)."""
    cols = table.select(["id", "version", "seq", "created_at", "deleted_at"]).to_pydict()
    out: dict[str, Latest] = {}
    for eid, version, seq, created, deleted in zip(
        cols["id"], cols["version"], cols["seq"], cols["created_at"], cols["deleted_at"], strict=True
    ):
        old = out.get(eid)
        if old is None or old[0] <= version:
            out[eid] = (version, seq, None if created is None else ({"deletedAt": True} if deleted is not None else {}))
    return out


def _seek(table: Any, probe: list[str], numbers: dict[str, int]) -> list[int] | None:
    """The rows of `table` holding the probed ids, found by binary search on its `number`
    column (files are sorted by it): a few µs, where filtering the piece's ids costs tens.
    None when any id is not found that way (a file without the column, or not sorted by
    it): the caller filters the piece instead, so a miss is never taken for an answer."""
    import bisect

    where = table.schema.get_all_field_indices("number")
    if len(where) != 1:
        return None
    column = table.column(where[0])
    ids = table.column("id")
    size = len(column)

    def key(i: int) -> Any:
        return column[i].as_py()

    out: list[int] = []
    for eid in probe:
        n = numbers[eid]
        i = bisect.bisect_left(range(size), n, key=key)
        hit = False
        while i < size and key(i) == n:
            if ids[i].as_py() == eid:
                out.append(i)
                hit = True
            i += 1
        if not hit:
            return None
    return out
