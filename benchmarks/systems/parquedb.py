"""parquedb-orm through its public API: `pq.ParqueDB(url, archive=..., policy=pq.FlushPolicy())`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import parquedb_orm as pq
from benchmarks.systems import BenchSystem, Doc, Handle


class System(BenchSystem):
    name = "parquedb"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.url = f"sqlite:///{workdir / 'parquedb.db'}"
        self.archive = str(workdir / "archive")
        self.db: Any = None

    # -- lifecycle -------------------------------------------------------------
    def _connect(self) -> Any:
        kwargs: dict[str, Any] = {}
        policy_cls = getattr(pq, "FlushPolicy", None)
        manual = os.environ.get("PARQUEDB_BENCH_POLICY") == "manual"
        if policy_cls is not None and manual:
            kwargs["policy"] = policy_cls(mode="manual")
            if not any("manual" in n for n in self.notes):
                self.notes.append("--parquedb-policy manual: FlushPolicy(mode='manual'), only phase 8 flushes")
        elif policy_cls is not None:
            kwargs["policy"] = policy_cls()  # the defaults: min 100, max 10,000 events, 60 s
        elif not any("FlushPolicy" in n for n in self.notes):
            self.notes.append("pq.FlushPolicy is missing in this build: ran with policy=None")
        return pq.ParqueDB(self.url, archive=self.archive, **kwargs)

    def open(self) -> None:
        self.db = self._connect()

    def restart(self) -> None:
        self.db.close()
        self.db = self._connect()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def sql_engine(self) -> Any:
        return None if self.db is None else self.db.engine

    # -- writes ----------------------------------------------------------------
    @staticmethod
    def _sqid(state: Doc) -> str:
        return str(state["$id"]).split("/", 1)[1]

    def bulk_create(self, ns: str, items: list[Doc]) -> list[Handle]:
        return [self._sqid(s) for s in self.db.create_many(ns, items)]

    def create(self, ns: str, data: Doc) -> Handle:
        return self._sqid(self.db.create(ns, data))

    def update(self, ns: str, handle: Handle, update: Doc) -> None:
        self.db.update(ns, handle, update)

    def link(self, from_ns: str, from_handle: Handle, predicate: str, to_ns: str, to_handle: Handle) -> None:
        self.db.link(f"{from_ns}/{from_handle}", predicate, f"{to_ns}/{to_handle}")

    def flush(self) -> dict[str, Any]:
        flush = getattr(self.db, "flush", None)
        if flush is None:
            self.notes.append("db.flush() is missing in this build: phase 8 flushed nothing")
            return {"available": False}
        before = self.stats()
        result = flush()
        info: dict[str, Any] = {"available": True, "unflushed_before": before.get("unflushed_events")}
        as_dict = getattr(result, "as_dict", None)
        if callable(as_dict):
            result = as_dict()
        if isinstance(result, dict):
            info["result"] = {k: v for k, v in result.items() if k != "paths"}
            events = (result.get("events") or 0) + (result.get("rel_events") or 0)
            if isinstance(events, int):
                info["flushed_events"] = events
        elif isinstance(result, (int, float)):
            info["result"] = result
        elif result is not None:
            info["result"] = repr(result)[:200]
        return info

    # -- reads -----------------------------------------------------------------
    def get(self, ns: str, handle: Handle) -> Doc | None:
        return self.db.get(ns, handle)  # type: ignore[no-any-return]

    def related(self, ns: str, handle: Handle, predicate: str, direction: str) -> list[Doc]:
        return self.db.related(f"{ns}/{handle}", predicate, direction=direction)  # type: ignore[no-any-return]

    def find(self, ns: str, field: str, gt: int, limit: int) -> list[Doc]:
        return self.db.find(ns, {field: {"$gt": gt}}, sort={field: -1}, limit=limit)  # type: ignore[no-any-return]

    # -- footprint -------------------------------------------------------------
    def archive_dir(self) -> Path | None:
        return Path(self.archive)

    def stats(self) -> dict[str, Any]:
        try:
            st = self.db.stats() if self.db is not None else {}
        except Exception as exc:
            return {"error": repr(exc)}
        return {k: v for k, v in st.items() if isinstance(v, (int, float, str, bool, dict)) or v is None}
