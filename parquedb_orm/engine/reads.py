"""Committed state of entities: cache, else snapshot chunk + WAL tail (+ bulk files),
and the whole of a namespace for `find`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from parquedb_orm.core import codec, pushdown
from parquedb_orm.core.events import Versioned
from parquedb_orm.core.ids import chunk_number
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.engine.state import Known, fold
from parquedb_orm.engine.tail import WalTail
from parquedb_orm.sql import snapshots


class Reads:
    def __init__(self, known: Known, tail: WalTail, archived: ArchivedReads, chunk_size: int) -> None:
        self.known = known
        self.lock = known.lock
        self.tail = tail
        self.archived = archived
        self.chunk_size = chunk_size

    def _base(self, ns: str, chunk: snapshots.Chunk | None, entity_id: str) -> tuple[Versioned, int]:
        if chunk is not None and entity_id in chunk.entities:
            return chunk.entities[entity_id], chunk.wal_seq
        return (0, None), (chunk.wal_seq if chunk is not None else 0)

    def cached(self, ns: str, entity_id: str) -> Versioned | None:
        """A single owner's cached committed state, without touching SQL (None: not cached,
        or shared mode, where the cache must be checked against the database first)."""
        if self.known.shared:
            return None
        st = self.known.peek(ns)
        if st is None:
            return None
        with self.lock:
            return st.cache.get(entity_id)

    def committed(self, conn: Connection, ns: str, entity_id: str, *, fresh: bool = False) -> Versioned:
        """The committed state of one entity: cache, else snapshot chunk + WAL tail.
        `fresh`: the caller has just refreshed this namespace's tail (shared mode)."""
        st = self.known.ns(ns)
        if not self.known.shared or fresh:
            with self.lock:
                hit = st.cache.get(entity_id)
            if hit is not None:
                return hit
        st = self.tail.ensure(conn, ns)
        with self.lock:
            hit = st.cache.get(entity_id)
        if hit is not None:
            return hit
        number = chunk_number(entity_id)
        while True:
            epoch = st.epoch
            chunk = snapshots.read_chunk(conn, ns, number // self.chunk_size)
            bulk: Versioned | None = None
            if (chunk is None or entity_id not in chunk.entities) and not self.tail.created(st, entity_id):
                bulk = self.archived.bulk_base(conn, ns, entity_id)
            with self.lock:
                if st.epoch != epoch:
                    continue
                result: Versioned = (0, None)
                ids = set(chunk.entities) if chunk else set()
                ids.add(entity_id)
                for eid in ids:
                    base, after = self._base(ns, chunk, eid)
                    if eid == entity_id and bulk is not None and bulk[1] is not None:
                        base = bulk
                    value = fold(ns, base, st.tail.get(eid, []), after)
                    old = st.cache.get(eid)
                    if old is None or old[0] <= value[0]:
                        st.cache[eid] = value
                    if eid == entity_id:
                        result = st.cache[eid]
                return result


    def prefetch(self, conn: Connection, ns: str, ids: list[str]) -> None:
        """Cache the committed state of many ids with one snapshot read, where `committed`
        would read one chunk per id (a flush of a thousand tracked rows)."""
        st = self.tail.ensure(conn, ns)
        with self.lock:
            missing = [eid for eid in dict.fromkeys(ids) if eid not in st.cache]
        if len(missing) < 2:
            return  # committed() reads it as cheaply
        by_chunk: dict[int, list[str]] = {}
        for eid in missing:
            by_chunk.setdefault(chunk_number(eid) // self.chunk_size, []).append(eid)
        epoch = st.epoch
        chunks = {c.chunk: c for c in snapshots.read_chunks(conn, ns, sorted(by_chunk))}
        bulk = {
            eid: self.archived.bulk_base(conn, ns, eid)
            for c, eids in by_chunk.items()
            for eid in eids
            if (c not in chunks or eid not in chunks[c].entities) and not self.tail.created(st, eid)
        }
        with self.lock:
            if st.epoch != epoch:
                return  # a flush moved the chunks meanwhile: committed() reads them again
            for c, eids in by_chunk.items():
                chunk = chunks.get(c)
                for eid in {*eids, *(chunk.entities if chunk else ())}:
                    base, after = self._base(ns, chunk, eid)
                    found = bulk.get(eid)
                    if found is not None and found[1] is not None:
                        base = found
                    value = fold(ns, base, st.tail.get(eid, []), after)
                    old = st.cache.get(eid)
                    if old is None or old[0] <= value[0]:
                        st.cache[eid] = value

    def committed_all(self, conn: Connection, ns: str) -> dict[str, Versioned]:
        """Every entity of a namespace (for find): all chunks + tail, cached as complete."""
        st = self.known.ns(ns)
        if st.complete and not self.known.shared:
            with self.lock:
                return dict(st.cache)
        st = self.tail.ensure(conn, ns)
        while True:
            epoch = st.epoch
            archived = self.archived.states(conn, ns)  # Parquet: no SQL row per archived entity
            with self.lock:
                if st.epoch != epoch:
                    continue
                seen: dict[str, Versioned] = {}
                for eid, (version, seq, state) in archived.items():
                    seen[eid] = fold(ns, (version, state), st.tail.get(eid, []), seq)
                for eid, evs in st.tail.items():
                    if eid not in seen:
                        seen[eid] = fold(ns, (0, None), evs, 0)
                for eid, value in seen.items():
                    old = st.cache.get(eid)
                    if old is None or old[0] <= value[0]:
                        st.cache[eid] = value
                st.complete = True
                return dict(st.cache)

    def find_states(self, conn: Connection, ns: str, flt: dict[str, Any]) -> dict[str, Versioned]:
        """Candidates for `find` on a large archived namespace: DuckDB filters the archive's
        latest states with the pushed-down predicate; the WAL tail is folded on top (an
        entity the tail touched is always a candidate, whatever its archived state)."""
        import duckdb
        import pyarrow as pa

        st = self.tail.ensure(conn, ns)
        with self.lock:
            tail_ids = list(st.tail)
            tail = {eid: list(evs) for eid, evs in st.tail.items()}
        table = self.archived.entity_table(conn, ns)
        out: dict[str, Versioned] = {}
        if table is not None:
            con = duckdb.connect()
            con.register("ents", table)
            con.register("tail_ids", pa.table({"id": pa.array(tail_ids, pa.string())}))
            rows = con.execute(
                f"""SELECT id, version, seq, state FROM (
                      SELECT *, row_number() OVER (PARTITION BY id ORDER BY version DESC) AS rn FROM ents)
                    WHERE rn = 1 AND (({pushdown.to_sql(flt)}) OR id IN (SELECT id FROM tail_ids))"""
            ).fetchall()
            con.close()
            for eid, version, seq, text in rows:
                state = None if text is None else codec.loads(text)
                out[eid] = fold(ns, (int(version), state), tail.get(eid, []), int(seq))
        for eid, evs in tail.items():
            if eid not in out:
                out[eid] = fold(ns, (0, None), evs, 0)
        return out
