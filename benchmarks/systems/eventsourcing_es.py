"""The `eventsourcing` library with its SQLAlchemy persistence module
(`eventsourcing-sqlalchemy`): one stored-event row per event, snapshots on.

- One aggregate class `Entity` (namespace + data dict + outbound / inbound links) with
  events Created, Updated, Linked, LinkedFrom. A link is two events saved atomically in one
  `app.save(source, target)`: `Linked` on the source and `LinkedFrom` on the target, so both
  directions are answered from the aggregates themselves.
- Snapshots every `SNAPSHOT_INTERVAL` versions (`snapshotting_intervals`).
- Repository cache on, unbounded, without fast-forward (`AGGREGATE_CACHE_MAXSIZE=0`,
  `AGGREGATE_CACHE_FASTFORWARD=n`): the single-process setting in which the cache is
  authoritative, like parquedb-orm's single-owner mode (a cached read costs no SQL).
- `find`: the library has no queries; the idiomatic way is a projection of the
  application's notification log. It is built on the first `find` (one pass over the log)
  and kept current by later writes of this process.
- Bulk create: `app.save(*aggregates)`, one transaction.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.systems import BenchSystem, Doc, Handle, apply_update, sqlite_pragmas

SNAPSHOT_INTERVAL = 10
_LOG_PAGE = 1_000


class Entity(Aggregate):
    @event("Created")
    def __init__(self, ns: str, data: dict[str, Any]) -> None:
        self.ns = ns
        self.data = copy.deepcopy(data)
        self.links: list[list[str]] = []  # [predicate, "ns/id"] outbound
        self.inbound: list[list[str]] = []  # [predicate, "ns/id"] inbound

    @event("Updated")
    def update_data(self, update: dict[str, Any]) -> None:
        apply_update(self.data, copy.deepcopy(update))

    @event("Linked")
    def add_link(self, predicate: str, to: str) -> None:
        self.links.append([predicate, to])

    @event("LinkedFrom")
    def add_inbound(self, predicate: str, source: str) -> None:
        self.inbound.append([predicate, source])


class BlogApp(Application[UUID]):
    snapshotting_intervals = {Entity: SNAPSHOT_INTERVAL}


class System(BenchSystem):
    name = "eventsourcing"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.url = f"sqlite:///{workdir / 'eventsourcing.db'}"
        self.app: BlogApp | None = None
        self._projection: dict[str, dict[UUID, Doc]] | None = None

    def _connect(self) -> BlogApp:
        app = BlogApp(env={
            "PERSISTENCE_MODULE": "eventsourcing_sqlalchemy",
            "SQLALCHEMY_URL": self.url,
            "AGGREGATE_CACHE_MAXSIZE": "0",  # <= 0: unbounded cache
            "AGGREGATE_CACHE_FASTFORWARD": "n",
        })
        # every system's journal settings (WAL, synchronous=NORMAL): the datastore's own
        # engine left a rollback journal and FULL (read back), so it gets them on every
        # connection from now on, and the connections made while it set up are dropped
        engine = app.recorder.datastore.engine  # type: ignore[attr-defined]
        sqlite_pragmas(engine)
        engine.dispose()
        return app

    def sql_engine(self) -> Any:
        return None if self.app is None else self.app.recorder.datastore.engine  # type: ignore[attr-defined]

    def open(self) -> None:
        self.app = self._connect()
        self.notes.append(
            f"snapshots every {SNAPSHOT_INTERVAL} versions; unbounded repository cache without "
            "fast-forward; a link is 2 events (Linked + LinkedFrom); find = projection of the notification log"
        )

    def restart(self) -> None:
        assert self.app is not None
        self.app.close()
        self.app = self._connect()
        self._projection = None

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None

    # -- writes ----------------------------------------------------------------
    def bulk_create(self, ns: str, items: list[Doc]) -> list[Handle]:
        assert self.app is not None
        aggs = [Entity(ns, {k: v for k, v in d.items() if k != "$type"}) for d in items]
        self.app.save(*aggs)
        if self._projection is not None:
            for a in aggs:
                self._projection.setdefault(ns, {})[a.id] = copy.deepcopy(a.data)
        return [a.id for a in aggs]

    def create(self, ns: str, data: Doc) -> Handle:
        return self.bulk_create(ns, [data])[0]

    def update(self, ns: str, handle: Handle, update: Doc) -> None:
        assert self.app is not None
        agg: Entity = self.app.repository.get(handle)
        agg.update_data(update)
        self.app.save(agg)
        if self._projection is not None and handle in self._projection.get(ns, {}):
            apply_update(self._projection[ns][handle], update)

    def link(self, from_ns: str, from_handle: Handle, predicate: str, to_ns: str, to_handle: Handle) -> None:
        assert self.app is not None
        source: Entity = self.app.repository.get(from_handle)
        target: Entity = self.app.repository.get(to_handle)
        source.add_link(predicate, f"{to_ns}/{to_handle}")
        target.add_inbound(predicate, f"{from_ns}/{from_handle}")
        self.app.save(source, target)

    # -- reads -----------------------------------------------------------------
    def _agg(self, handle: Handle) -> Entity:
        assert self.app is not None
        return self.app.repository.get(handle)  # type: ignore[no-any-return]

    def get(self, ns: str, handle: Handle) -> Doc | None:
        agg = self._agg(handle)
        if agg.ns != ns:
            return None
        doc = dict(agg.data)
        doc["version"] = agg.version
        return doc

    def related(self, ns: str, handle: Handle, predicate: str, direction: str) -> list[Doc]:
        agg = self._agg(handle)
        pairs = agg.links if direction == "outbound" else agg.inbound
        out: list[Doc] = []
        seen: set[str] = set()
        for pred, ref in pairs:
            if pred != predicate or ref in seen:
                continue
            seen.add(ref)
            _ns, sid = ref.split("/", 1)
            out.append(dict(self._agg(UUID(sid)).data))
        return out

    def _build_projection(self) -> dict[str, dict[UUID, Doc]]:
        assert self.app is not None
        proj: dict[str, dict[UUID, Doc]] = {}
        owner: dict[UUID, str] = {}
        start = 1
        while True:
            notes = self.app.recorder.select_notifications(start=start, limit=_LOG_PAGE)
            if not notes:
                break
            for n in notes:
                ev = self.app.mapper.to_domain_event(n)
                kind = type(ev).__name__
                if kind == "Created":
                    owner[ev.originator_id] = ev.ns  # type: ignore[attr-defined]
                    proj.setdefault(ev.ns, {})[ev.originator_id] = copy.deepcopy(ev.data)  # type: ignore[attr-defined]
                elif kind == "Updated":
                    ns = owner.get(ev.originator_id)
                    if ns is not None:
                        apply_update(proj[ns][ev.originator_id], ev.update)  # type: ignore[attr-defined]
            start = notes[-1].id + 1
        return proj

    def find(self, ns: str, field: str, gt: int, limit: int) -> list[Doc]:
        if self._projection is None:
            self._projection = self._build_projection()
        docs = [d for d in self._projection.get(ns, {}).values() if d.get(field, 0) > gt]
        docs.sort(key=lambda d: d[field], reverse=True)
        return [dict(d) for d in docs[:limit]]
