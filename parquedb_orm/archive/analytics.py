"""`db.duckdb()`: SQL over the history with DuckDB.

Views:
- `events`: every entity event: archived files, bulk CREATEs (their `bulk_events` files;
  derived from the bulk file itself for bulk files written before those existed) and the
  WAL tail;
- `rels`: every relationship event (archived files and WAL tail);
- `entities`: current state, one row per entity (`state` and its `types`). Base and bulk
  files hold each id at most once and never the same id (compaction keeps them
  disjoint), so only the deltas and the WAL tail, which may overlap anything, are
  deduplicated; a base or bulk row stands unless one of those holds the id at a version
  at least as high.
JSON columns are plain JSON with a `types` sidecar (docs/archive.md; `parquet.load_json`
decodes a cell exactly); rows of files written before that format hold tagged JSON and a
null `types`, which `load_json` decodes too. The WAL tail's events have no before, after
or changes (they are computed by the flush). Only files the manifest lists are read, so
an orphan left by a crash never shows up. The files are scanned lazily (Arrow datasets),
not loaded: DuckDB reads what a query needs. Each is checked against its manifest row
when the views are made (a local file whole, once per process: a damaged one raises
ArchiveError naming it here), and its pages against their CRCs as queries read them
(docs/archive.md, Integrity).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.dataset as ds

from parquedb_orm.archive import bulk, parquet
from parquedb_orm.archive.files import Check
from parquedb_orm.core.ids import chunk_number
from parquedb_orm.sql import manifest, wal

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

    from parquedb_orm.archive.files import Archive
    from parquedb_orm.core.events import Versioned


class LiveView(Protocol):
    """What the views need of the engine beyond the archive: the WAL tail's namespaces and
    the current state of entities it touched."""

    engine: Engine

    @property
    def archive(self) -> Archive | None: ...

    def namespaces(self, conn: Connection) -> list[str]: ...

    def committed_many(self, conn: Connection, ns: str, ids: list[str]) -> dict[str, Versioned]: ...


_NS = pa.field("ns", pa.string())
_ENTITY_COLUMNS = pa.schema([f for f in parquet.ENTITIES_SCHEMA])


def _scan(archive: Archive | None, entries: list[manifest.Entry], schema: pa.Schema) -> Any:
    """The files as one lazily read dataset; `ns` is a column of newer files and the hive
    partition of all (files written before the column existed get it from their path);
    a column an older file lacks reads as NULL. Each file is checked against its manifest
    row first: a local file whole (once per process: a damaged file is an ArchiveError
    naming it here, not a DuckDB error without a name in a later query), a file on an
    object store by its size and footer; pages are also verified against their CRCs as
    the queries read them (archive/files.py)."""
    if not entries:
        return schema.empty_table()
    assert archive is not None
    by_folder: dict[str, list[str]] = {}
    for e in entries:  # entities files live in two folders (bases and deltas)
        archive.verify(e.path, Check.of(e), whole=archive.local)
        by_folder.setdefault(e.path.split("/", 1)[0], []).append(e.path)
    parts = [
        archive.dataset(
            rels,
            schema=schema,
            partitioning=ds.partitioning(pa.schema([_NS]), flavor="hive"),
            partition_base_dir=archive.path(folder),
        )
        for folder, rels in by_folder.items()
    ]
    return parts[0] if len(parts) == 1 else ds.dataset(parts)


def connect(db: LiveView) -> Any:
    import duckdb

    archive = db.archive
    with db.engine.connect() as conn:
        entries = manifest.load_all(conn)
    by_kind: dict[str, list[manifest.Entry]] = {}
    for e in entries:
        by_kind.setdefault(e.kind, []).append(e)
    entity_files = by_kind.get("entities", [])
    bases = [e for e in entity_files if e.path.rsplit("/", 1)[-1].startswith("base-")]
    deltas = [e for e in entity_files if e not in bases]
    bulks = by_kind.get(manifest.BULK, [])
    twins = {(e.ns, e.first_seq) for e in by_kind.get(manifest.BULK_EVENTS, [])}
    untwinned = [e for e in bulks if (e.ns, e.first_seq) not in twins]

    # the WAL tail: committed events not yet flushed
    tail_events: list[tuple[str, Any]] = []
    tail_rels: list[tuple[str, Any]] = []
    with db.engine.connect() as conn:
        names = db.namespaces(conn)
        ev_rows = wal.read_many(conn, wal.EVENTS, [(ns, None, f"seq:{ns}") for ns in names])
        rel_rows = wal.read_many(conn, wal.RELS, [(ns, None, f"rseq:{ns}") for ns in names])
        for ns in names:
            for first, _l, recs in ev_rows[ns]:
                tail_events += [(ns, e) for e in wal.decode_events(wal.EVENTS, ns, first, recs)]
            for first, _l, recs in rel_rows[ns]:
                tail_rels += [(ns, r) for r in wal.decode_rel_events(wal.RELS, ns, first, recs)]
        touched: dict[str, list[str]] = {}
        for ns, e in tail_events:
            touched.setdefault(ns, []).append(e.id)
        # only the entities the tail touched: one batched lookup each, not the namespace
        current = {ns: db.committed_many(conn, ns, list(dict.fromkeys(ids))) for ns, ids in touched.items()}

    # the tables' builders sort their rows: one table per namespace, then its `ns` column
    ev_by_ns: dict[str, list[parquet.EventRow]] = {}
    for ns, e in tail_events:
        ev_by_ns.setdefault(ns, []).append((e, None, None, None))
    ev_tail = _per_ns({ns: parquet.events_table(ns, rows) for ns, rows in ev_by_ns.items()}, parquet.EVENTS_SCHEMA)
    rel_by_ns: dict[str, list[Any]] = {}
    for ns, r in tail_rels:
        rel_by_ns.setdefault(ns, []).append(r)
    rel_tail = _per_ns({ns: parquet.rels_table(ns, rows) for ns, rows in rel_by_ns.items()}, parquet.RELS_SCHEMA)
    # current state of entities the tail touched, as entity rows
    latest: dict[str, dict[str, tuple[str, int, int, Any, int]]] = {}
    for ns, e in tail_events:
        version, state = current[ns].get(e.id, (0, None))
        latest.setdefault(ns, {})[e.id] = (e.id, chunk_number(e.id), version, state, e.seq)
    ent_tail = _per_ns(
        {ns: parquet.entities_table(ns, list(rows.values())) for ns, rows in latest.items()}, _ENTITY_COLUMNS
    )

    legacy = [bulk.twin_table(archive, e) for e in untwinned] if archive is not None and untwinned else []
    legacy_events = (
        pa.concat_tables([t.replace_schema_metadata(None) for t in legacy])
        if legacy
        else parquet.EVENTS_SCHEMA.empty_table()
    )

    con = duckdb.connect()
    con.register("_events_archived", _scan(archive, by_kind.get("events", []), parquet.EVENTS_SCHEMA))
    con.register("_bulk_events", _scan(archive, by_kind.get(manifest.BULK_EVENTS, []), parquet.EVENTS_SCHEMA))
    con.register("_bulk_events_legacy", legacy_events)
    con.register("_events_tail", ev_tail)
    con.register("_rels_archived", _scan(archive, by_kind.get("rels", []), parquet.RELS_SCHEMA))
    con.register("_rels_tail", rel_tail)
    con.register("_entities_settled", _scan(archive, [*bases, *bulks], _ENTITY_COLUMNS))
    con.register("_entities_delta", _scan(archive, deltas, _ENTITY_COLUMNS))
    con.register("_entities_tail", ent_tail)
    cols = "seq, ts, CAST(op AS VARCHAR) AS op, ns, id, version, actor, data, before, after, changes, meta, types"
    con.execute(
        f"""CREATE VIEW events AS
        SELECT {cols} FROM _events_archived
        UNION ALL SELECT {cols} FROM _bulk_events
        UNION ALL SELECT {cols} FROM _bulk_events_legacy
        UNION ALL SELECT {cols} FROM _events_tail"""
    )
    rcols = 'seq, ts, CAST(op AS VARCHAR) AS op, ns, from_id, predicate, "to", reverse, actor, data, types'
    con.execute(f"CREATE VIEW rels AS SELECT {rcols} FROM _rels_archived UNION ALL SELECT {rcols} FROM _rels_tail")
    ecols = "id, ns, version, type, name, created_at, updated_at, deleted_at, state, types"
    # deltas and tail: the latest row per id among them (the tail wins a tie)
    con.execute(
        f"""CREATE VIEW _entities_recent AS
        SELECT {ecols} FROM (
          SELECT {ecols}, row_number() OVER (PARTITION BY ns, id ORDER BY version DESC, src DESC) AS rn
          FROM (SELECT {ecols}, 0 AS src FROM _entities_delta
                UNION ALL SELECT {ecols}, 1 AS src FROM _entities_tail)
        ) WHERE rn = 1"""
    )
    s_cols = ", ".join(f"s.{c.strip()}" for c in ecols.split(","))
    con.execute(
        f"""CREATE VIEW entities AS
        SELECT {ecols} FROM (
          SELECT {s_cols} FROM _entities_settled s
          WHERE NOT EXISTS (SELECT 1 FROM _entities_recent r
                            WHERE r.ns = s.ns AND r.id = s.id AND r.version >= s.version)
          UNION ALL
          SELECT r.* FROM _entities_recent r
          WHERE NOT EXISTS (SELECT 1 FROM _entities_settled s
                            WHERE s.ns = r.ns AND s.id = r.id AND s.version > r.version)
        ) WHERE state IS NOT NULL"""
    )
    return con


def _per_ns(tables: dict[str, pa.Table], schema: pa.Schema) -> pa.Table:
    """Per-namespace tables as one (their own extra columns dropped)."""
    parts = [t.select(schema.names).cast(schema).replace_schema_metadata(None) for _ns, t in sorted(tables.items())]
    return pa.concat_tables(parts) if parts else schema.empty_table()
