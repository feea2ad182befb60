"""`find` on an archived namespace as one columnar scan: DuckDB runs filter + sort + limit
over the namespace's entity files, with no dedup of the whole namespace per call.

Base (`base-*`) and bulk files are disjoint in ids, so only delta rows (the other entities
files: small) are compared with anything: a big-file row counts unless a delta holds its id
(deltas are written after the files they shadow, so they hold the higher version); a delta
row counts if no other delta holds a higher version (ties: the file with the higher
`last_seq`). Ids are matched on `number` (a sqid's counter: one id per number), and on the
id too for key ids, which share hash buckets above `KEY_BASE`. The WAL tail's ids and the
caller's own (its unit's overlay) are shadowed the same way and left to the caller.

Predicates use a file's typed `f_<k>` columns where its field list gives one type
(`pushdown.to_sql`); they are a superset, and every candidate is checked again in Python.
When the sort is on columns DuckDB orders exactly as `filters.sort_docs` (typed keys of
one kind in every file, store keys) and a limit is given, only the first skip + limit
rows come back, in the order of `Store.find` (sort keys, then createdAt, id number, id);
the scan runs again with a larger limit if Python rejects too many of them.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from parquedb_orm.archive import parquet
from parquedb_orm.archive.compact import scan_path
from parquedb_orm.archive.files import DECODE_ERRORS, Archive, Check, read_failure
from parquedb_orm.core import pushdown
from parquedb_orm.core.events import State, Versioned
from parquedb_orm.core.filters import compile_filter
from parquedb_orm.core.ids import chunk_number
from parquedb_orm.engine.runtime import Runtime
from parquedb_orm.errors import ArchiveError, ParqueDBError
from parquedb_orm.sql import manifest

#: DuckDB's memory for find scans (spills or fails beyond it, never grows the process further)
MEMORY_LIMIT = "256MB"
THREADS = max(1, min(4, os.cpu_count() or 1))
#: numbers at or above this are key-id hash buckets, shared by many ids (core/ids.py)
KEY_BASE = 1 << 62
_FIELDS_KEY = b"parquedb.fields"
#: how many files' field lists are remembered (files never change once listed)
FIELDS_CACHE = 4096
_SHADOW = 1 << 62  # the version a tail/overlay id is shadowed with: above any stored one

_lock = threading.Lock()
_db: Any = None
_fields_cache: OrderedDict[tuple[str, str], tuple[dict[str, str] | None, bool]] = OrderedDict()
_scan_cache: OrderedDict[tuple[str, str], bool] = OrderedDict()


@dataclass
class Found:
    """Archived candidates (latest archived state, not deleted unless asked, matching the
    filter in Python) and the ids the caller must read itself (WAL tail)."""

    states: dict[str, Versioned] = field(default_factory=dict)
    tail_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Source:
    sql: str  # a DuckDB table expression
    fields: dict[str, str] | None
    rank: int  # delta tie order (manifest last_seq)
    path: str
    bulk: bool = False  # create_many: every row a live version 1, never deleted
    plain: bool = True  # plain JSON + `types` (False: a file written before, with tagged JSON)
    scan: str | None = None  # a base's scan file (archive/compact.py) for phase one, if it has one
    entry: manifest.Entry | None = None
    #: checks the file whole before DuckDB's own reader scans it, when `file_info` did not
    whole: Callable[[], object] | None = None


def _duckdb() -> Any:
    global _db
    with _lock:
        if _db is None:
            import duckdb

            # an in-memory DuckDB spills past its memory limit into ./.tmp of the current
            # directory: the user's working directory, which may not be writable or be a
            # project folder; a private temporary directory instead, removed at exit
            tmp = tempfile.mkdtemp(prefix="parquedb-find-")
            atexit.register(shutil.rmtree, tmp, True)
            _db = duckdb.connect(
                config={
                    "memory_limit": MEMORY_LIMIT,
                    "threads": THREADS,
                    "preserve_insertion_order": False,
                    "temp_directory": tmp,
                }
            )
            _db.execute("SET parquet_metadata_cache = true")  # listed files never change
        return _db.cursor()  # one connection per call: cursors may run in parallel threads


def file_fields(archive: Archive, rel: str, check: Check | None = None) -> dict[str, str] | None:
    """A file's `parquedb.fields` (field -> type), None for files written without it;
    fields whose typed column is missing count as mixed. Cached: files never change."""
    return file_info(archive, rel, check)[0]


def file_info(
    archive: Archive, rel: str, check: Check | None = None, *, whole: bool = True
) -> tuple[dict[str, str] | None, bool]:
    """`file_fields` and whether the file is plain JSON with a `types` column (by its
    schema; older files hold tagged JSON). Cached: files never change. The file is checked
    against its manifest row (`check`) before it is cached, and so before DuckDB scans it:
    a local file whole (DuckDB's own reader verifies no page CRC), once per process; a file
    on an object store by its size and footer (its pages are verified as pyarrow reads them
    for DuckDB: `_table`). `whole=False`: the caller checks it whole before DuckDB reads it."""
    key = (archive.uri, rel)
    with _lock:
        if key in _fields_cache:
            _fields_cache.move_to_end(key)
            return _fields_cache[key]
    metadata = archive.verify(rel, check, whole=whole and archive.local)
    target = archive.path(rel)
    with archive.reading(rel):
        schema = metadata.schema.to_arrow_schema()
    raw = (metadata.metadata or {}).get(_FIELDS_KEY)
    fields: dict[str, str] | None = None
    if raw is not None:
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise ArchiveError(f"corrupt parquedb.fields metadata in {target}: {exc}") from exc
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise ArchiveError(f"corrupt parquedb.fields metadata in {target}: {raw[:200]!r}")
        names = set(schema.names)
        fields = {k: (v if v == "mixed" or f"f_{k}" in names else "mixed") for k, v in loaded.items()}
    info = (fields, "types" in schema.names)
    with _lock:
        _fields_cache[key] = info
        while len(_fields_cache) > FIELDS_CACHE:
            _fields_cache.popitem(last=False)
    return info


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sources(rt: Runtime, conn: Connection, ns: str, cur: Any, names: list[str]) -> tuple[list[_Source], list[_Source]]:
    """(big files: bulk and base, deltas) of the namespace as DuckDB table expressions."""
    archive = rt.archive
    assert archive is not None
    big: list[_Source] = []
    deltas: list[_Source] = []
    entries = [*rt.archived.files(conn, manifest.BULK, ns), *rt.archived.files(conn, "entities", ns)]
    for entry in entries:
        check = Check.of(entry)
        is_base = entry.kind != manifest.BULK and entry.path.rsplit("/", 1)[-1].startswith("base-")
        scan = None
        if is_base:
            scan_rel = scan_path(entry.path)
            if _has_scan(archive, scan_rel, None if check is None else check.scan_check()):
                scan = _table(archive, scan_rel, cur, names)
        # a base with a scan file is read whole by DuckDB only for queries the scan file
        # cannot answer: checked whole then (`_select`), not before every first find
        defer = scan is not None and archive.local and check is not None
        fields, plain = file_info(archive, entry.path, check, whole=not defer)
        sql = _table(archive, entry.path, cur, names)
        whole = (lambda rel=entry.path, c=check: archive.verify(rel, c, whole=True)) if defer else None
        (big if is_base or entry.kind == manifest.BULK else deltas).append(
            _Source(sql, fields, entry.last_seq, entry.path, entry.kind == manifest.BULK, plain, scan, entry, whole)
        )
    return big, deltas


def _table(archive: Archive, rel: str, cur: Any, names: list[str]) -> str:
    """A DuckDB table expression reading the archive file `rel`."""
    target = archive.path(rel)
    if archive.local:  # checked whole first (file_info, _has_scan)
        return f"read_parquet({_lit(target)})"
    # object storage: pyarrow reads it (pages checked), DuckDB scans the dataset
    name = f"f{len(names)}"
    cur.register(name, archive.dataset([rel]))
    names.append(name)
    return name


def _has_scan(archive: Archive, rel: str, check: Check | None) -> bool:
    """Whether a base has its scan file (bases written before scan files have none),
    checked (`check`: from its base's manifest row) as `file_info` checks a file.
    Remembered: a listed base and its scan file change together."""
    key = (archive.uri, rel)
    with _lock:
        known = _scan_cache.get(key)
    if known is None:
        known = archive.exists(rel)
        if known or check is not None:  # a base written with one must have it
            archive.verify(rel, check, whole=archive.local)
            known = True
        with _lock:
            _scan_cache[key] = known
            while len(_scan_cache) > FIELDS_CACHE:
                _scan_cache.popitem(last=False)
    return known


def _order(order: list[tuple[str, int]], sources: list[_Source]) -> list[tuple[str, int]] | None:
    """Sort keys as (column, direction) if DuckDB orders every source as Python would."""
    out: list[tuple[str, int]] = []
    for key, direction in order:
        kinds = set()
        for src in sources:
            typed = pushdown.sort_column(key, src.fields)
            if typed is None:
                return None
            kinds.add(typed[1])
        kinds.discard("null")
        if len(kinds) > 1:
            return None  # e.g. int in one file, float in another: no one column type is exact
        out.append((key, direction))
    return out


def _select(src: _Source, pred: str, keys: list[tuple[str, int]], *, full: bool, with_id: bool, where: str) -> str:
    """One file's candidate rows: src, number, version, r, created_at, k0.., id[, seq, state, types]."""
    cols = [f"{_lit(src.path)} AS src", "number", "version", f"{src.rank} AS r", "created_at"]
    for i, (key, _d) in enumerate(keys):
        typed = pushdown.sort_column(key, src.fields)
        assert typed is not None
        cols.append(f"{typed[0]} AS k{i}")
    cols.append("id" if with_id or full else "NULL::VARCHAR AS id")
    if full:
        cols += ["seq", "state", _types(src)]
    # the scan file has every column but the JSON texts: a predicate or sort key that
    # reads `state` (an untyped field) scans the base itself (a crude test, never wrong)
    narrow = src.scan is not None and not full and "state" not in pred and not any("state" in c for c in cols)
    table = src.scan if narrow and src.scan is not None else src.sql
    if table == src.sql and src.whole is not None:
        src.whole()  # once per process and file (archive/files.py)
    return f"SELECT {', '.join(cols)} FROM {table} WHERE ({pred}){where}"


def _branches(
    src: _Source, flt: dict[str, Any], keys: list[tuple[str, int]], full: bool, deleted: str, big: bool
) -> list[str]:
    pred = pushdown.to_sql(flt, src.fields, plain=src.plain)
    if pred == pushdown.FALSE:
        return []
    # created_at is NULL exactly for hard deletes; a bulk file has neither kind of delete
    where = "" if src.bulk else f" AND created_at IS NOT NULL{deleted}"
    if not big or full:
        return [_select(src, pred, keys, full=full, with_id=True, where=where)]
    # a sqid's number names one id: the id column is read only in the key-id bucket range
    return [
        _select(src, pred, keys, full=False, with_id=False, where=f"{where} AND number < {KEY_BASE}"),
        _select(src, pred, keys, full=False, with_id=True, where=f"{where} AND number >= {KEY_BASE}"),
    ]


def find_candidates(
    rt: Runtime,
    conn: Connection,
    ns: str,
    flt: dict[str, Any],
    order: list[tuple[str, int]],
    *,
    want: int | None,
    include_deleted: bool,
    exclude: Collection[str] = (),
) -> Found:
    """Candidates for `Store.find` from the archive (see the module doc). `want`: skip +
    limit when a limit was given; `exclude`: ids the caller has a newer state of."""
    import pyarrow as pa

    st = rt.tail.ensure(conn, ns)
    with rt.known.lock:
        tail_ids = list(st.tail)
    found = Found(tail_ids=tail_ids)
    shadow_ids = list(dict.fromkeys([*tail_ids, *exclude]))
    cur = _duckdb()
    names: list[str] = []
    listed: list[manifest.Entry] = []
    try:
        big, deltas = _sources(rt, conn, ns, cur, names)
        listed = [s.entry for s in (*big, *deltas) if s.entry is not None]
        if not big and not deltas:
            return found
        keys = _order(order, [*big, *deltas]) if want is not None else None
        limited = keys is not None
        full = not limited
        deleted = "" if include_deleted else " AND deleted_at IS NULL"
        shadow = [f"SELECT number, id, version, {d.rank} AS r FROM {d.sql}" for d in deltas]
        if shadow_ids:
            cur.register(
                "shadowed",
                pa.table(
                    {
                        "number": pa.array([chunk_number(e) for e in shadow_ids], pa.int64()),
                        "id": pa.array(shadow_ids, pa.string()),
                        "version": pa.array([_SHADOW] * len(shadow_ids), pa.int64()),
                        "r": pa.array([_SHADOW] * len(shadow_ids), pa.int64()),
                    }
                ),
            )
            names.append("shadowed")
            shadow.append("SELECT number, id, version, r FROM shadowed")
        parts_big = [b for s in big for b in _branches(s, flt, keys or [], full, deleted, True)]
        parts_delta = [b for s in deltas for b in _branches(s, flt, keys or [], full, deleted, False)]
        if not parts_big and not parts_delta:
            return found
        ctes = []
        selects = []
        if shadow:
            ctes.append(f"dk AS ({' UNION ALL '.join(shadow)})")
        if parts_big:
            where = ""
            if shadow:
                where = (
                    " WHERE NOT EXISTS (SELECT 1 FROM dk WHERE dk.number = b.number"
                    f" AND (b.number < {KEY_BASE} OR dk.id = b.id) AND dk.version >= b.version)"
                )
            selects.append(f"SELECT b.* FROM ({' UNION ALL '.join(parts_big)}) b{where}")
        if parts_delta:
            selects.append(
                f"SELECT d.* FROM ({' UNION ALL '.join(parts_delta)}) d WHERE NOT EXISTS (SELECT 1 FROM dk"
                " WHERE dk.number = d.number AND dk.id = d.id"
                " AND (dk.version > d.version OR (dk.version = d.version AND dk.r > d.r)))"
            )
        with_sql = ("WITH " + ", ".join(ctes) + " ") if ctes else ""
        body = f"{with_sql}SELECT * FROM ({' UNION ALL '.join(selects)}) c"
        if not limited:
            rows = cur.execute(body).fetchall()
            found.states = _checked(ns, [(r[5], r[2], r[7], r[8], r[0]) for r in rows], flt, include_deleted)
            return found
        assert want is not None and keys is not None
        ordering = []
        for i, (_key, direction) in enumerate(keys):
            ordering.append(f"k{i} ASC NULLS FIRST" if direction == 1 else f"k{i} DESC NULLS LAST")
        ordering += ["created_at ASC", f"(CASE WHEN number >= {KEY_BASE} THEN 0 ELSE number END) ASC", "id ASC"]
        limit = max(want, 1)
        while True:
            rows = cur.execute(f"{body} ORDER BY {', '.join(ordering)} LIMIT {limit}").fetchall()
            states = _checked(ns, _fetch(rt, rows, big, deltas), flt, include_deleted)
            if len(states) >= want or len(rows) < limit:
                found.states = states
                return found
            limit *= 4  # Python rejected too many of the first rows: scan for more
    except Exception as exc:
        if not read_failure(exc) or rt.archive is None:
            raise
        raise rt.archive.damaged(listed, exc) from exc  # DuckDB does not say which file failed
    finally:
        for name in names:
            cur.unregister(name)
        cur.close()


def _types(src: _Source) -> str:
    return "types" if src.plain else "NULL::VARCHAR AS types"


#: (id, version, state JSON, its `types` cell, the archive file it was read from)
_Row = tuple[str, int, str | None, str | None, str]


def _fetch(rt: Runtime, rows: list[Any], big: list[_Source], deltas: list[_Source]) -> list[_Row]:
    """(id, version, state JSON, types) of the rows phase one picked (src, number, version,
    ..., id), read from their files by number: only the pieces that can hold them (the
    engine's cached footers), a few ms for a page of results at any size."""
    by_src: dict[str, set[int]] = {}
    for row in rows:
        by_src.setdefault(row[0], set()).add(row[1])
    source_of = {s.path: s for s in [*big, *deltas]}
    got: dict[tuple[int, str | None, int], tuple[str, str | None, str | None]] = {}
    for path, numbers in by_src.items():
        src = source_of[path]
        assert src.entry is not None
        columns = ["number", "id", "version", "state", *(["types"] if src.plain else [])]
        table = rt.archived.rows_by_number(src.entry, numbers, columns).to_pydict()
        types = table.get("types") or [None] * len(table["number"])  # files before the column: none
        for number, eid, version, state, typed in zip(
            table["number"], table["id"], table["version"], table["state"], types, strict=True
        ):
            got[(number, eid if number >= KEY_BASE else None, version)] = (eid, state, typed)
    out = []
    for row in rows:
        number, version, eid = row[1], row[2], row[-1]
        hit = got.get((number, eid if number >= KEY_BASE else None, version))
        if hit is not None:
            out.append((hit[0], version, hit[1], hit[2], path))
    return out


def _checked(ns: str, rows: list[_Row], flt: dict[str, Any], include_deleted: bool) -> dict[str, Versioned]:
    """Decode, keep the highest version of each id, and the documents Python accepts."""
    latest: dict[str, tuple[int, str | None, str | None, str]] = {}
    for eid, version, text, types, path in rows:
        old = latest.get(eid)
        if old is None or old[0] < version:
            latest[eid] = (version, text, types, path)
    test = compile_filter(flt)  # built once, tested per state
    out: dict[str, Versioned] = {}
    for eid, (version, text, types, path) in latest.items():
        if text is None:
            continue
        try:
            state: State = parquet.load_json(text, types, "state")
        except ParqueDBError:
            raise  # typed already (e.g. a value whose registered type is gone)
        except DECODE_ERRORS as exc:
            raise ArchiveError(
                f"archive file {path} holds a state the store cannot decode (id {eid!r}, {type(exc).__name__}: "
                f"{str(exc)[:200]}): the file is damaged; restore it from a backup"
            ) from None
        if ("deletedAt" in state and not include_deleted) or not test(state):
            continue
        out[eid] = (version, state)
    return out
