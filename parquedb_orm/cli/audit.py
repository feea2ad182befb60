"""The one-row-per-change layout the demo compares with, in plain SQLAlchemy Core.

Live rows (`entities`: one per entity, `links`: one per link) plus an audit table
(`changes`: one row per change, its data as JSON). Every operation is one transaction; an
update reads the live row, applies the operator in Python, writes the row back and
appends its change. This is how an application usually keeps history in its database.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Column, Engine, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text, insert, select
from sqlalchemy import update as sql_update

metadata = MetaData()

entities = Table(
    "entities",
    metadata,
    Column("ns", String(64), nullable=False),
    Column("id", Integer, nullable=False),
    Column("data", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", Integer, nullable=False),
    PrimaryKeyConstraint("ns", "id"),
)
links = Table(
    "links",
    metadata,
    Column("from_ns", String(64), nullable=False),
    Column("from_id", Integer, nullable=False),
    Column("predicate", String(64), nullable=False),
    Column("to_ns", String(64), nullable=False),
    Column("to_id", Integer, nullable=False),
    Column("created_at", Integer, nullable=False),
    PrimaryKeyConstraint("from_ns", "from_id", "predicate", "to_ns", "to_id"),
)
changes = Table(
    "changes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", Integer, nullable=False),
    Column("ns", String(64), nullable=False),
    Column("entity_id", Integer, nullable=False),
    Column("op", String(16), nullable=False),
    Column("data", Text, nullable=False),
)


def _now() -> int:
    return time.time_ns() // 1000


class AuditStore:
    """create / update / link, each one transaction: live row + one change row."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._next: dict[str, int] = {}

    def setup(self) -> None:
        metadata.create_all(self.engine)

    def create(self, ns: str, data: dict[str, Any]) -> int:
        number = self._next[ns] = self._next.get(ns, 0) + 1
        ts = _now()
        with self.engine.begin() as conn:
            conn.execute(
                insert(entities), {"ns": ns, "id": number, "data": json.dumps(data), "version": 1, "updated_at": ts}
            )
            conn.execute(
                insert(changes), {"ts": ts, "ns": ns, "entity_id": number, "op": "CREATE", "data": json.dumps(data)}
            )
        return number

    def update(self, ns: str, number: int, change: dict[str, Any]) -> None:
        ts = _now()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(entities.c.data, entities.c.version).where(entities.c.ns == ns, entities.c.id == number)
            ).one()
            data = json.loads(row.data)
            for op, fields in change.items():
                for key, value in fields.items():
                    data[key] = data.get(key, 0) + value if op == "$inc" else value
            conn.execute(
                sql_update(entities)
                .where(entities.c.ns == ns, entities.c.id == number)
                .values(data=json.dumps(data), version=row.version + 1, updated_at=ts)
            )
            conn.execute(
                insert(changes), {"ts": ts, "ns": ns, "entity_id": number, "op": "UPDATE", "data": json.dumps(change)}
            )

    def link(self, from_ns: str, from_id: int, predicate: str, to_ns: str, to_id: int) -> None:
        ts = _now()
        with self.engine.begin() as conn:
            conn.execute(
                insert(links),
                {
                    "from_ns": from_ns,
                    "from_id": from_id,
                    "predicate": predicate,
                    "to_ns": to_ns,
                    "to_id": to_id,
                    "created_at": ts,
                },
            )
            conn.execute(
                insert(changes),
                {
                    "ts": ts,
                    "ns": from_ns,
                    "entity_id": from_id,
                    "op": "LINK",
                    "data": json.dumps({"predicate": predicate, "to": f"{to_ns}/{to_id}"}),
                },
            )
