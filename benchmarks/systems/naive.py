"""The one-row-per-change layout (the reference design before row reduction), in plain
SQLAlchemy Core.

- `entities`: id TEXT PRIMARY KEY (a rowid table: the key is a hidden index, so an insert
  writes 2 rows), ns, type, data JSON, version, created/updated/deleted columns; an index
  on `ns` for listing a namespace (find).
- `relationships`: one row per link (the legacy columns of DESIGN.md), a unique index on
  (from_ns, from_id, predicate, to_ns, to_id) for outbound queries and an index on
  (to_ns, to_id, predicate) for inbound ones.
- `events`: one row per change (create / update / link), indexed by target entity for
  history.

Every operation is one transaction. Updates read the row, apply the operators in Python,
write the row back and append the event. No cache: every read goes to SQL.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    create_engine,
    desc,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from benchmarks.systems import BenchSystem, Doc, Handle, apply_update, sqlite_pragmas

metadata = MetaData()

entities = Table(
    "entities",
    metadata,
    Column("id", Text, primary_key=True),
    Column("ns", Text, nullable=False),
    Column("type", Text),
    Column("data", Text, nullable=False),  # JSON
    Column("version", Integer, nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("created_by", Text),
    Column("updated_at", Integer, nullable=False),
    Column("updated_by", Text),
    Column("deleted_at", Integer),
    Column("deleted_by", Text),
    Index("ix_entities_ns", "ns"),
)

relationships = Table(
    "relationships",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("from_ns", Text, nullable=False),
    Column("from_id", Text, nullable=False),
    Column("predicate", Text, nullable=False),
    Column("to_ns", Text, nullable=False),
    Column("to_id", Text, nullable=False),
    Column("reverse", Text),
    Column("version", Integer, nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("created_by", Text),
    Column("deleted_at", Integer),
    Column("deleted_by", Text),
    Column("match_mode", Text),
    Column("similarity", Integer),
    Column("data", Text),
    Index("ux_relationships_out", "from_ns", "from_id", "predicate", "to_ns", "to_id", unique=True),
    Index("ix_relationships_in", "to_ns", "to_id", "predicate"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", Integer, nullable=False),
    Column("op", Text, nullable=False),
    Column("target", Text, nullable=False),  # ns/id of the entity (source entity for links)
    Column("actor", Text),
    Column("data", Text),  # JSON: created data, update operators or the link
    Index("ix_events_target", "target"),
)


def _now_us() -> int:
    return time.time_ns() // 1000


class System(BenchSystem):
    name = "naive"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.url = f"sqlite:///{workdir / 'naive.db'}"
        self.engine: Engine | None = None
        self._ids = random.Random(7)

    def _connect(self) -> Engine:
        engine = create_engine(self.url)
        sqlite_pragmas(engine)
        return engine

    def open(self) -> None:
        self.engine = self._connect()
        metadata.create_all(self.engine)

    def restart(self) -> None:
        assert self.engine is not None
        self.engine.dispose()
        self.engine = self._connect()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    # -- writes ----------------------------------------------------------------
    def _new_id(self) -> str:
        return f"{self._ids.getrandbits(64):016x}"

    def _entity_row(self, ns: str, data: Doc, ts: int) -> tuple[dict[str, Any], dict[str, Any]]:
        body = {k: v for k, v in data.items() if k != "$type"}
        eid = self._new_id()
        row = {"id": eid, "ns": ns, "type": data.get("$type"), "data": json.dumps(body), "version": 1,
               "created_at": ts, "created_by": None, "updated_at": ts, "updated_by": None}
        ev = {"ts": ts, "op": "CREATE", "target": f"{ns}/{eid}", "actor": None, "data": json.dumps(data)}
        return row, ev

    def bulk_create(self, ns: str, items: list[Doc]) -> list[Handle]:
        assert self.engine is not None
        ts = _now_us()
        pairs = [self._entity_row(ns, d, ts) for d in items]
        with self.engine.begin() as conn:
            conn.execute(insert(entities), [r for r, _ in pairs])
            conn.execute(insert(events), [e for _, e in pairs])
        return [r["id"] for r, _ in pairs]

    def create(self, ns: str, data: Doc) -> Handle:
        assert self.engine is not None
        row, ev = self._entity_row(ns, data, _now_us())
        with self.engine.begin() as conn:
            conn.execute(insert(entities), row)
            conn.execute(insert(events), ev)
        return row["id"]

    def update(self, ns: str, handle: Handle, upd: Doc) -> None:
        assert self.engine is not None
        ts = _now_us()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(entities.c.data, entities.c.version).where(entities.c.id == handle)
            ).one()
            data = apply_update(json.loads(row.data), upd)
            conn.execute(
                update(entities)
                .where(entities.c.id == handle)
                .values(data=json.dumps(data), version=row.version + 1, updated_at=ts)
            )
            conn.execute(insert(events), {"ts": ts, "op": "UPDATE", "target": f"{ns}/{handle}", "actor": None,
                                          "data": json.dumps(upd)})

    def link(self, from_ns: str, from_handle: Handle, predicate: str, to_ns: str, to_handle: Handle) -> None:
        assert self.engine is not None
        ts = _now_us()
        with self.engine.begin() as conn:
            conn.execute(insert(relationships), {
                "from_ns": from_ns, "from_id": from_handle, "predicate": predicate, "to_ns": to_ns,
                "to_id": to_handle, "version": 1, "created_at": ts, "match_mode": "exact",
            })
            conn.execute(insert(events), {
                "ts": ts, "op": "LINK", "target": f"{from_ns}/{from_handle}", "actor": None,
                "data": json.dumps({"predicate": predicate, "to": f"{to_ns}/{to_handle}"}),
            })

    # -- reads -----------------------------------------------------------------
    def get(self, ns: str, handle: Handle) -> Doc | None:
        assert self.engine is not None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(entities.c.ns, entities.c.data, entities.c.version)
                .where(entities.c.id == handle, entities.c.deleted_at.is_(None))
            ).first()
        if row is None or row.ns != ns:
            return None
        doc: Doc = json.loads(row.data)
        doc["version"] = row.version
        return doc

    def related(self, ns: str, handle: Handle, predicate: str, direction: str) -> list[Doc]:
        assert self.engine is not None
        r = relationships
        if direction == "outbound":
            q = select(r.c.to_id).where(r.c.from_ns == ns, r.c.from_id == handle, r.c.predicate == predicate,
                                        r.c.deleted_at.is_(None))
        else:
            q = select(r.c.from_id).where(r.c.to_ns == ns, r.c.to_id == handle, r.c.predicate == predicate,
                                          r.c.deleted_at.is_(None))
        with self.engine.connect() as conn:
            ids = list(conn.execute(q).scalars())
            if not ids:
                return []
            rows = conn.execute(
                select(entities.c.data).where(and_(entities.c.id.in_(ids), entities.c.deleted_at.is_(None)))
            ).scalars()
            return [json.loads(d) for d in rows]

    def find(self, ns: str, field: str, gt: int, limit: int) -> list[Doc]:
        assert self.engine is not None
        value = func.json_extract(entities.c.data, f"$.{field}")
        q = (
            select(entities.c.data)
            .where(entities.c.ns == ns, entities.c.deleted_at.is_(None), value > gt)
            .order_by(desc(value))
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [json.loads(d) for d in conn.execute(q).scalars()]
