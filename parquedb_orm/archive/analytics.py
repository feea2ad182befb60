"""`db.duckdb()`: SQL over the history with DuckDB.

Views:
- `events`: every entity event (archived files, bulk creates as CREATE events, WAL tail);
- `rels`: every relationship event (archived files and WAL tail);
- `entities`: current state, one row per entity (latest archived version merged with the tail).
Only files the manifest lists are read, so an orphan left by a crash never shows up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from parquedb_orm.archive import parquet
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

    def committed_all(self, conn: Connection, ns: str) -> dict[str, Versioned]: ...


def _files(db: LiveView, kind: str) -> list[tuple[str, manifest.Entry]]:
    with db.engine.connect() as conn:
        entries = [e for e in manifest.load_all(conn) if e.kind == kind]
    return [(e.ns, e) for e in entries]


def _read(db: LiveView, entries: list[tuple[str, manifest.Entry]], schema: pa.Schema) -> pa.Table:
    archive = db.archive
    tables = []
    for ns, entry in entries:
        assert archive is not None
        t = pq.read_table(archive.path(entry.path), filesystem=archive.fs, partitioning=None)
        tables.append(t.append_column("ns", pa.array([ns] * t.num_rows, pa.string())))
    if not tables:
        return schema.empty_table().append_column("ns", pa.array([], pa.string()))
    return pa.concat_tables(tables, promote_options="default")


def connect(db: LiveView) -> Any:
    import duckdb

    rt = db
    con = duckdb.connect()
    events = _read(db, _files(db, "events"), parquet.EVENTS_SCHEMA)
    rels = _read(db, _files(db, "rels"), parquet.RELS_SCHEMA)
    ents = _read(db, _files(db, "entities") + _files(db, manifest.BULK), parquet.ENTITIES_SCHEMA)
    bulk_entries = _files(db, manifest.BULK)
    bulk = _read(db, bulk_entries, parquet.ENTITIES_SCHEMA)

    # the WAL tail: committed events not yet flushed
    tail_events: list[tuple[str, Any]] = []
    tail_rels: list[tuple[str, Any]] = []
    with rt.engine.connect() as conn:
        names = rt.namespaces(conn)
        ev_rows = wal.read_many(conn, wal.EVENTS, [(ns, None, f"seq:{ns}") for ns in names])
        rel_rows = wal.read_many(conn, wal.RELS, [(ns, None, f"rseq:{ns}") for ns in names])
        for ns in names:
            for first, _l, recs in ev_rows[ns]:
                tail_events += [(ns, e) for e in wal.decode_events(wal.EVENTS, ns, first, recs)]
            for first, _l, recs in rel_rows[ns]:
                tail_rels += [(ns, r) for r in wal.decode_rel_events(wal.RELS, ns, first, recs)]
        current = {ns: rt.committed_all(conn, ns) for ns in {ns for ns, _ in tail_events}}

    ev_tail = parquet.events_table([(e, None, None) for _ns, e in tail_events])
    ev_tail = ev_tail.append_column("ns", pa.array([ns for ns, _ in tail_events], pa.string()))
    rel_tail = parquet.rels_table([r for _ns, r in tail_rels]).append_column(
        "ns", pa.array([ns for ns, _ in tail_rels], pa.string())
    )
    # current state of entities the tail touched, as entity rows
    touched = []
    for ns, e in tail_events:
        version, state = current[ns].get(e.id, (0, None))
        touched.append((ns, e.id, version, state, e.seq))
    latest: dict[tuple[str, str], tuple[str, str, int, Any, int]] = {}
    for row in touched:
        latest[(row[0], row[1])] = row
    from parquedb_orm.core.ids import chunk_number

    ent_tail = parquet.entities_table(
        [(eid, chunk_number(eid), v, st, seq) for (_n, eid, v, st, seq) in latest.values()]
    )
    ent_tail = ent_tail.append_column("ns", pa.array([k[0] for k in latest], pa.string()))

    con.register("_events_archived", events)
    con.register("_events_tail", ev_tail)
    con.register("_bulk", bulk)
    con.register("_rels_archived", rels)
    con.register("_rels_tail", rel_tail)
    con.register("_entities_archived", ents)
    con.register("_entities_tail", ent_tail)
    cols = "seq, ts, CAST(op AS VARCHAR) AS op, ns, id, version, actor, data, before, after, meta"
    con.execute(
        f"""CREATE VIEW events AS
        SELECT {cols} FROM _events_archived
        UNION ALL SELECT 0 AS seq, created_at AS ts, 'CREATE' AS op, ns, id, 1 AS version,
               json_extract_string(state, '$.createdBy') AS actor, state AS data, NULL AS before, state AS after,
               NULL AS meta
          FROM _bulk
        UNION ALL SELECT {cols} FROM _events_tail"""
    )
    rcols = 'seq, ts, CAST(op AS VARCHAR) AS op, ns, from_id, predicate, "to", reverse, actor, data'
    con.execute(f"CREATE VIEW rels AS SELECT {rcols} FROM _rels_archived UNION ALL SELECT {rcols} FROM _rels_tail")
    ecols = "id, ns, version, type, name, created_at, updated_at, deleted_at, state"
    con.execute(
        f"""CREATE VIEW entities AS
        SELECT {ecols} FROM (
          SELECT {ecols}, row_number() OVER (PARTITION BY ns, id ORDER BY version DESC, src DESC) AS rn
          FROM (SELECT {ecols}, 0 AS src FROM _entities_archived
                UNION ALL SELECT {ecols}, 1 AS src FROM _entities_tail)
        ) WHERE rn = 1 AND state IS NOT NULL"""
    )
    return con
