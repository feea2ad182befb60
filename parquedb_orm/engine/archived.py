"""Reads of the Parquet archive that the engine caches: manifest entries per kind and
namespace, bulk files (id -> row), the latest archived state of every entity."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from parquedb_orm.archive import parquet
from parquedb_orm.archive.files import Archive
from parquedb_orm.core import codec
from parquedb_orm.core.events import Event, RelEvent, State, Versioned
from parquedb_orm.core.ids import decode_id
from parquedb_orm.engine.state import Known
from parquedb_orm.sql import manifest


class ArchivedReads:
    def __init__(self, known: Known, archive: Archive | None) -> None:
        self.known = known
        self.lock = known.lock
        self.archive = archive
        self._manifest: dict[tuple[str, str], list[manifest.Entry]] = {}
        #: bulk files found one by one (manifest.covering) before the namespace's list was read
        self._bulk_seen: dict[str, list[manifest.Entry]] = {}
        self._archived_states: dict[str, dict[str, tuple[int, int, State | None]]] = {}
        self._bulk_files: dict[str, tuple[dict[str, int], Any]] = {}
        self._arrow_entities: dict[str, Any] = {}  # ns -> the archive's entity files as one Arrow table

    def files(self, conn: Connection, kind: str, ns: str) -> list[manifest.Entry]:
        """Manifest entries of one kind and namespace (cached by a single owner)."""
        key = (kind, ns)
        with self.lock:
            hit = self._manifest.get(key)
        if hit is not None and not self.known.shared:
            return hit
        entries = manifest.load(conn, kind, ns)
        with self.lock:
            self._manifest[key] = entries
        return entries

    def changed(self, added: list[manifest.Entry], removed: list[manifest.Entry]) -> None:
        with self.lock:
            for e in (*added, *removed):
                if e.kind in ("entities", manifest.BULK):
                    self._arrow_entities.pop(e.ns, None)
            for e in removed:
                if e.kind == manifest.BULK and e.ns in self._bulk_seen:
                    self._bulk_seen[e.ns] = [x for x in self._bulk_seen[e.ns] if x.path != e.path]
                cached = self._manifest.get((e.kind, e.ns))
                if cached is not None:
                    self._manifest[(e.kind, e.ns)] = [x for x in cached if x.path != e.path]
            for e in added:
                cached = self._manifest.get((e.kind, e.ns))
                if cached is not None:
                    self._manifest[(e.kind, e.ns)] = sorted([*cached, e], key=lambda x: x.first_seq)

    def bulk_base(self, conn: Connection, ns: str, entity_id: str) -> Versioned:
        """The state a bulk file (create_many) holds for an id: its number maps to one file."""
        number = decode_id(entity_id)
        if self.archive is None or number is None:
            return (0, None)
        with self.lock:
            listed = None if self.known.shared else self._manifest.get((manifest.BULK, ns))
        if listed is not None:
            candidates = [e for e in listed if e.first_seq <= number <= e.last_seq]
        else:  # not listed yet: the one file that can hold it, not the whole list
            with self.lock:
                seen = [e for e in self._bulk_seen.get(ns, ()) if e.first_seq <= number <= e.last_seq]
            found = seen[0] if seen and not self.known.shared else manifest.covering(conn, manifest.BULK, ns, number)
            candidates = [found] if found is not None and number <= found.last_seq else []
            if candidates and not seen:
                with self.lock:
                    self._bulk_seen.setdefault(ns, []).append(found)  # type: ignore[arg-type]
        for entry in candidates:
            index, table = self._bulk_file(entry)
            row = index.get(entity_id)
            if row is not None:
                text = table.column("state")[row].as_py()
                return (1, codec.loads(text))
        return (0, None)

    def _bulk_file(self, entry: manifest.Entry) -> tuple[dict[str, int], Any]:
        """A bulk file's (id -> row, table), read once per process (it never changes)."""
        with self.lock:
            hit = self._bulk_files.get(entry.path)
        if hit is None:
            assert self.archive is not None
            table = self.archive.read_table(entry.path, columns=["id", "state"])
            hit = ({eid: i for i, eid in enumerate(table.column("id").to_pylist())}, table)
            with self.lock:
                self._bulk_files[entry.path] = hit
        return hit

    def states(self, conn: Connection, ns: str) -> dict[str, tuple[int, int, State | None]]:
        """Latest archived state of every entity of `ns` (flushed and bulk files)."""
        if self.archive is None:
            return {}
        with self.lock:
            hit = self._archived_states.get(ns)
        if hit is not None and not self.known.shared:
            return hit
        merged: dict[str, tuple[int, int, State | None]] = {}
        for entry in [*self.files(conn, manifest.BULK, ns), *self.files(conn, "entities", ns)]:
            for eid, value in parquet.table_states(self.archive.read_table(entry.path)).items():
                old = merged.get(eid)
                if old is None or old[0] <= value[0]:
                    merged[eid] = value
        with self.lock:
            self._archived_states[ns] = merged
        return merged

    def events(self, conn: Connection, ns: str, entity_id: str) -> list[Event]:
        """Every archived event of one entity, oldest first (bulk creates included)."""
        if self.archive is None:
            return []
        out: list[Event] = []
        number = decode_id(entity_id)
        for entry in self.files(conn, manifest.BULK, ns):
            if number is not None and entry.first_seq <= number <= entry.last_seq:
                table = self.archive.read_table(entry.path, filters=[("id", "=", entity_id)])
                out.extend(parquet.bulk_create_events(ns, table))
        for entry in self.files(conn, "events", ns):
            table = self.archive.read_table(entry.path, filters=[("id", "=", entity_id)])
            out.extend(parquet.table_events(table))
        return out

    def rel_events(self, conn: Connection, ns: str) -> list[RelEvent]:
        if self.archive is None:
            return []
        out: list[RelEvent] = []
        for entry in self.files(conn, "rels", ns):
            out.extend(parquet.table_rel_events(self.archive.read_table(entry.path)))
        return out


    def count(self, conn: Connection, ns: str) -> int:
        return sum(e.row_count for kind in ("entities", manifest.BULK) for e in self.files(conn, kind, ns))

    def learn(self, ns: str, latest: dict[str, tuple[int, int, State | None]]) -> None:
        """A flush archived these latest states (caller holds the lock)."""
        cached = self._archived_states.get(ns)
        if cached is not None:
            for eid, value in latest.items():
                old = cached.get(eid)
                if old is None or old[0] <= value[0]:
                    cached[eid] = value

    def bulk_created(self, ns: str, states: list[tuple[str, State]]) -> None:
        """A commit listed a bulk file with these entities (caller holds the lock)."""
        archived = self._archived_states.get(ns)
        if archived is not None:
            for eid, state in states:
                archived[eid] = (1, 0, state)

    def put_files(self, kind: str, entries: list[manifest.Entry], names: list[str]) -> None:
        """Manifest entries of one kind read for several namespaces at once."""
        with self.lock:
            for n in names:
                self._manifest[(kind, n)] = [e for e in entries if e.ns == n]

    def entity_table(self, conn: Connection, ns: str) -> Any:
        """The namespace's archived entity rows (bulk and flushed files) as one Arrow table."""
        import pyarrow as pa

        with self.lock:
            table = self._arrow_entities.get(ns)
        if table is None or self.known.shared:
            assert self.archive is not None
            parts = [
                self.archive.read_table(e.path, columns=["id", "version", "seq", "type", "state"])
                for kind in (manifest.BULK, "entities")
                for e in self.files(conn, kind, ns)
            ]
            table = pa.concat_tables(parts) if parts else None
            with self.lock:
                self._arrow_entities[ns] = table
        return table
