"""Migrations: the legacy layout (pq0001) -> the store's layout (head) and back, losing nothing.

Runs on SQLite (file), PostgreSQL and MariaDB. Server backends use a database of their
own (`pqmig<worker>`), and every test drops all our tables and the version table before
and after. An unreachable server skips, or fails with PARQUEDB_REQUIRE_SERVERS=1 / CI=true.

The proof is independent of the migration code: the expected store state is computed
here from the seed as read back from the database (MariaDB keeps whole seconds and
float32 similarities), then compared with what decoding rels_wal / events_wal with the
codec and folding with events.apply_rel_event / apply_event gives.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import zstandard
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from parquedb_orm import migrate
from parquedb_orm.core import codec
from parquedb_orm.core.events import (
    CREATE,
    DELETE,
    LINK,
    UNLINK,
    UPDATE,
    Event,
    Link,
    RelEvent,
    apply_event,
    apply_rel_event,
)
from parquedb_orm.core.ids import decode_id
from parquedb_orm.core.ids import encode_id as _encode_id
from parquedb_orm.sql import revision_kit as kit
from parquedb_orm.sql.autogen import include_ours
from parquedb_orm.sql.legacy import legacy_metadata
from parquedb_orm.sql.migrations import _config
from parquedb_orm.sql.models import metadata

PG_URL = os.environ.get("PARQUEDB_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("PARQUEDB_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
DB_NAME = "pqmig" + os.environ.get("PYTEST_XDIST_WORKER", "")
REPO = Path(__file__).resolve().parent.parent

HEAD = migrate.heads()[0]
LEGACY = "pq0001"
RELS = legacy_metadata.tables["relationships"]
BATCHES = legacy_metadata.tables["event_batches"]
EVENTS_WAL = metadata.tables["events_wal"]
RELS_WAL = metadata.tables["rels_wal"]
COUNTERS = metadata.tables["counters"]
META = frozenset(
    {"$id", "$type", "version", "createdAt", "createdBy", "updatedAt", "updatedBy", "deletedAt", "deletedBy"}
)
T0 = datetime(2024, 1, 1, tzinfo=UTC)
encode_id = lru_cache(maxsize=None)(_encode_id)  # the seed reuses ids a lot; sqids encoding is slow


# --------------------------------------------------------------------------- backends


def _servers_required() -> bool:
    return os.environ.get("PARQUEDB_REQUIRE_SERVERS") == "1" or os.environ.get("CI", "").lower() == "true"


def _server_url(kind: str) -> str:
    admin = PG_URL if kind == "postgresql" else MY_URL
    try:
        eng = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            if kind == "postgresql":
                if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname=:n"), {"n": DB_NAME}).first():
                    conn.execute(sa.text(f'CREATE DATABASE "{DB_NAME}"'))
            else:
                conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{DB_NAME}`"))
        eng.dispose()
    except Exception as exc:  # any failure to reach the server means "unavailable"
        msg = f"{kind} unreachable: {exc}"
        if _servers_required():
            pytest.fail(msg + " (PARQUEDB_REQUIRE_SERVERS=1)")
        pytest.skip(msg)
    return str(sa.make_url(admin).set(database=DB_NAME).render_as_string(hide_password=False))


def _drop_ours(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        names = set(sa.inspect(conn).get_table_names())
        for name in sorted(migrate.OWNED_TABLES & names):
            sa.Table(name, sa.MetaData()).drop(conn)


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'migrations.db'}" if request.param == "sqlite" else _server_url(request.param)
    eng = sa.create_engine(url)
    _drop_ours(eng)
    yield eng
    _drop_ours(eng)
    eng.dispose()


def _backend(engine: sa.Engine) -> str:
    return "mariadb" if engine.dialect.name == "mysql" else engine.dialect.name


# --------------------------------------------------------------------------- the seed


def _legacy_blob(records: list[dict[str, Any]], streamed: bool) -> bytes:
    """As the reference design wrote batches: JSON (default separators) in a zstd frame."""
    raw = json.dumps(records).encode()
    if streamed:  # a frame without content size, as a streaming writer leaves it
        cobj = zstandard.ZstdCompressor(level=3).compressobj()
        return cobj.compress(raw) + cobj.flush()
    return zstandard.ZstdCompressor(level=3).compress(raw)


@dataclass
class Seed:
    events_wal: list[dict[str, Any]] = field(default_factory=list)
    rels_wal: list[dict[str, Any]] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)
    relationships: list[dict[str, Any]] = field(default_factory=list)


def _wal_rows(ns: str, records: list[list[Any]], when: datetime) -> list[dict[str, Any]]:
    return [
        {
            "ns": ns,
            "first_seq": chunk[0][0],
            "last_seq": chunk[-1][0],
            "event_count": len(chunk),
            "events": codec.encode_batch(chunk),
            "created_at": when,
        }
        for chunk in (records[i : i + 100] for i in range(0, len(records), 100))
    ]


def _seed_wal(seed: Seed) -> None:
    """What the store had already written to its WAL tables in the legacy layout."""
    for ns, count in (("posts", 150), ("users", 60)):
        recs: list[list[Any]] = []
        for n in range(1, count + 1):
            ts = int((T0 + timedelta(minutes=n)).timestamp() * 1_000_000)
            data = {"$type": ns[:-1].title(), "name": f"{ns} {n}", "score": n}
            recs.append(Event(len(recs) + 1, ts, CREATE, encode_id(n), "users/admin", data, 1).to_record())
            if n % 3 == 0:
                recs.append(
                    Event(len(recs) + 1, ts + 5, UPDATE, encode_id(n), None, {"$inc": {"score": 1}}, 2).to_record()
                )
        seed.events_wal += _wal_rows(ns, recs, T0 + timedelta(days=1))
    recs = []
    for n in range(1, 121):
        ts = int((T0 + timedelta(hours=n)).timestamp() * 1_000_000)
        to = f"users/{encode_id(n % 60 + 1)}"
        recs.append(
            RelEvent(len(recs) + 1, ts, LINK, encode_id(n), "pinnedBy", to, "pins", "users/admin", None).to_record()
        )
        if n % 12 == 0:
            recs.append(
                RelEvent(len(recs) + 1, ts + 9, UNLINK, encode_id(n), "pinnedBy", to, "pins", None, None).to_record()
            )
    seed.rels_wal += _wal_rows("posts", recs, T0 + timedelta(days=2))


LINK_KINDS = {
    "posts": [("author", "users", "posts"), ("tags", "tags", "tagged"), ("related", "posts", "related")],
    "comments": [("on", "posts", "comments"), ("author", "users", "comments")],
    "users": [("follows", "users", "followers"), ("likes", "posts", "likedBy")],
}


def _link_data(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.45:
        return None
    if roll < 0.80:
        return json.dumps(
            {"weight": rng.randint(1, 9), "note": rng.choice(["", "café ☕", "ok"])},
            separators=(",", ":"),
            ensure_ascii=False,
        )
    if roll < 0.85:
        return json.dumps({"weight": rng.randint(1, 9), "flag": True})  # spaces: not the compact form
    if roll < 0.87:
        return json.dumps({"note": "naïve"}, separators=(",", ":"))  # \u escapes
    if roll < 0.88:
        return "null"
    if roll < 0.89:
        return f"legacy note #{rng.randint(1, 999)}"  # not JSON at all
    if roll < 0.90:
        return json.dumps([1, 2.5, None], separators=(",", ":"))
    if roll < 0.901:
        return json.dumps({"$matchMode": "user-data"}, separators=(",", ":"))  # collides with our key
    return json.dumps({"ctx": {"a": [1, 2.5, True, None], "b": {"c": "d"}}, "n": 1.0}, separators=(",", ":"))


def _seed_relationships(seed: Seed, rng: random.Random, count: int) -> None:
    keys: set[tuple[str, str, str, str, str]] = set()
    while len(keys) < count:
        from_ns = rng.choices(["posts", "comments", "users"], weights=[6, 3, 1])[0]
        predicate, to_ns, _ = rng.choice(LINK_KINDS[from_ns])
        from_id = encode_id(rng.randint(1, 20_000)) if rng.random() > 0.01 else f"legacy{rng.randint(1, 500)}"
        keys.add((from_ns, from_id, predicate, to_ns, encode_id(rng.randint(1, 5_000))))
    for from_ns, from_id, predicate, to_ns, to_id in sorted(keys):
        reverse = next(r for p, t, r in LINK_KINDS[from_ns] if p == predicate)
        created = T0 + timedelta(seconds=rng.randint(0, 30_000_000), microseconds=rng.randint(0, 999_999))
        deleted = rng.random() < 0.12
        match_roll = rng.random()
        match_mode = similarity = None
        if match_roll < 0.04:
            match_mode, similarity = "fuzzy", round(rng.uniform(0.5, 1.0), 3)
        elif match_roll < 0.06:
            match_mode = "exact"
        elif match_roll < 0.07:
            similarity = 0.1
        seed.relationships.append(
            {
                "from_ns": from_ns,
                "from_id": from_id,
                "predicate": predicate,
                "to_ns": to_ns,
                "to_id": to_id,
                "reverse": reverse if rng.random() > 0.05 else None,
                "version": (2 if deleted else 1) if rng.random() > 0.04 else rng.randint(3, 7),
                "created_at": created,
                "created_by": f"users/{encode_id(rng.randint(1, 5_000))}" if rng.random() > 0.1 else None,
                "deleted_at": created + timedelta(days=rng.randint(1, 90), seconds=rng.randint(0, 86_399))
                if deleted
                else None,
                "deleted_by": (f"users/{encode_id(rng.randint(1, 5_000))}" if rng.random() > 0.2 else None)
                if deleted
                else None,
                "match_mode": match_mode,
                "similarity": similarity,
                "data": _link_data(rng),
            }
        )


def _seed_batches(seed: Seed, rng: random.Random, count: int, flushed_share: float) -> None:
    """The reference design's batches: entities created, updated, deleted across namespaces."""
    live: dict[str, dict[str, dict[str, Any]]] = {"posts": {}, "comments": {}, "tags": {}}
    next_number = {"posts": 10_000, "comments": 30_000, "tags": 50_000}
    ts = int(T0.timestamp() * 1000)
    for batch_id in range(1, count + 1):
        namespaces = [rng.choice(list(live))] if rng.random() > 0.15 else list(live)
        records: list[dict[str, Any]] = []
        for _ in range(rng.randint(10, 60)):
            ns = rng.choice(namespaces)
            ts += rng.randint(1, 5_000)
            actor = f"users/{encode_id(rng.randint(1, 5_000))}" if rng.random() > 0.1 else None
            roll = rng.random()
            if roll < 0.4 or len(live[ns]) < 5:
                next_number[ns] += 1
                eid = encode_id(next_number[ns])
                after = {"$type": ns[:-1].title(), "title": f"{ns} #{next_number[ns]}", "views": 0, "tags": ["a"]}
                if rng.random() < 0.2:
                    after["meta"] = {"lang": "fr", "draft": True, "ratio": 0.5}
                live[ns][eid] = after
                records.append(
                    {"ts": ts, "op": CREATE, "ns": ns, "id": eid, "actor": actor, "before": None, "after": after}
                )
            elif roll < 0.85:
                eid = rng.choice(sorted(live[ns]))
                before = live[ns][eid]
                after = json.loads(json.dumps(before))
                change = rng.random()
                if change < 0.5:
                    after["views"] = before["views"] + rng.randint(1, 10)
                    after["title"] = before["title"] + "!"
                elif change < 0.7:
                    after["tags"] = [*before.get("tags", []), rng.choice("bcd")]
                    after["summary"] = "résumé ✓"
                elif change < 0.85:
                    after.pop("tags", None)
                    after.pop("meta", None)
                elif change < 0.9:
                    after["views"] = float(before["views"])  # 3 -> 3.0: must still be a change
                elif change < 0.95:
                    after["due"] = {"$date": "2024-06-01T00:00:00Z"}
                # else: an UPDATE that changes nothing (still counts as a version)
                live[ns][eid] = after
                records.append(
                    {"ts": ts, "op": UPDATE, "ns": ns, "id": eid, "actor": actor, "before": before, "after": after}
                )
            else:
                eid = rng.choice(sorted(live[ns]))
                before = live[ns].pop(eid)
                records.append(
                    {"ts": ts, "op": DELETE, "ns": ns, "id": eid, "actor": actor, "before": before, "after": None}
                )
        if batch_id == count // 2:  # odd records the store's events cannot reproduce as they are
            records[0] = {**records[0], "meta": {"source": "import"}}
            records[1] = {**records[1], "ts": float(records[1]["ts"])}
        seed.batches.append(
            {
                "id": batch_id,
                "batch": _legacy_blob(records, streamed=batch_id % 7 == 0),
                "min_ts": min(int(r["ts"]) for r in records),
                "max_ts": max(int(r["ts"]) for r in records),
                "event_count": len(records),
                "flushed": batch_id <= count * flushed_share,
                "created_at": datetime.fromtimestamp(ts / 1000, UTC),
            }
        )


_SEEDS: dict[tuple[int, int], Seed] = {}


def make_seed(n_rels: int, n_batches: int) -> Seed:
    if (n_rels, n_batches) not in _SEEDS:
        rng = random.Random(20240101 + n_rels)
        seed = Seed()
        _seed_wal(seed)
        _seed_relationships(seed, rng, n_rels)
        _seed_batches(seed, rng, n_batches, flushed_share=0.4)
        _SEEDS[(n_rels, n_batches)] = seed
    return _SEEDS[(n_rels, n_batches)]


def load_seed(engine: sa.Engine, seed: Seed) -> None:
    migrate.upgrade(engine, LEGACY)
    with engine.begin() as conn:
        for table, rows in (
            (EVENTS_WAL, seed.events_wal),
            (RELS_WAL, seed.rels_wal),
            (BATCHES, seed.batches),
            (RELS, seed.relationships),
        ):
            for i in range(0, len(rows), 10_000):
                conn.execute(table.insert(), rows[i : i + 10_000])  # executemany


# --------------------------------------------------------------------------- snapshots


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else kit.as_utc(value)


def _canon(value: Any) -> str:
    return kit.canonical(value)


def legacy_snapshot(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """The r1 tables, normalised only where drivers differ (time zones); batches by content."""
    rels = [
        (*row[:7], _utc(row.created_at), row.created_by, _utc(row.deleted_at), *row[10:])
        for row in conn.execute(sa.select(RELS))
    ]
    batches = [
        (
            row.id,
            _canon(kit.decode_legacy_batch(row.batch)),
            row.min_ts,
            row.max_ts,
            row.event_count,
            bool(row.flushed),
            _utc(row.created_at),
        )
        for row in conn.execute(sa.select(BATCHES))
    ]
    return {
        "relationships": sorted(rels, key=lambda r: tuple(map(str, r[:5]))),
        "event_batches": sorted(batches),
        "events_wal": _wal_snapshot(conn, EVENTS_WAL),
        "rels_wal": _wal_snapshot(conn, RELS_WAL),
    }


def _wal_snapshot(conn: sa.Connection, table: sa.Table) -> list[tuple[Any, ...]]:
    return sorted(
        (r.ns, r.first_seq, r.last_seq, r.event_count, bytes(r.events), _utc(r.created_at))
        for r in conn.execute(sa.select(table))
    )


def head_snapshot(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
    prov = kit.provenance_table()
    return {
        "events_wal": _wal_snapshot(conn, EVENTS_WAL),
        "rels_wal": _wal_snapshot(conn, RELS_WAL),
        "counters": sorted(tuple(r) for r in conn.execute(sa.select(COUNTERS))),
        "provenance": sorted(
            (r.revision, r.ns, r.seq, _canon(kit.read_info(r)), r.payload and bytes(r.payload))
            for r in conn.execute(sa.select(prov))
        ),
    }


def row_counts(conn: sa.Connection) -> dict[str, int]:
    names = set(sa.inspect(conn).get_table_names()) & (migrate.OWNED_TABLES - {migrate.VERSION_TABLE})
    return {n: kit.count_rows(conn, sa.Table(n, sa.MetaData())) for n in sorted(names)}


# --------------------------------------------------------------------------- expected store state


def expected_link_data(text: str | None, match_mode: str | None, similarity: float | None) -> Any:
    """The documented mapping (docs/migrations.md), written independently of the migration."""
    parsed: Any
    try:
        parsed = None if text is None else json.loads(text)
    except ValueError:
        parsed = text
    if match_mode is None and similarity is None:
        return parsed
    data = dict(parsed) if isinstance(parsed, dict) else ({} if parsed is None else {"$data": parsed})
    if match_mode is not None:
        data["$matchMode"] = match_mode
    if similarity is not None:
        data["$similarity"] = similarity
    return data


def decode_wal(conn: sa.Connection, table: sa.Table) -> dict[str, list[list[Any]]]:
    """Every record per namespace in seq order; checks the rows are well formed and contiguous."""
    out: dict[str, list[list[Any]]] = defaultdict(list)
    for row in conn.execute(sa.select(table).order_by(table.c.ns, table.c.first_seq)):
        recs = codec.decode_batch(row.events, table=table.name, row=f"{row.ns}/{row.first_seq}")
        assert row.event_count == len(recs) and 0 < len(recs) <= 110, (row.ns, row.first_seq)
        assert (recs[0][0], recs[-1][0]) == (row.first_seq, row.last_seq)
        prev = out[row.ns][-1][0] if out[row.ns] else 0
        assert [r[0] for r in recs] == list(range(prev + 1, prev + 1 + len(recs))), f"{table.name} {row.ns} gap"
        out[row.ns] += recs
    return out


def verify_head(conn: sa.Connection, seed_snap: dict[str, list[tuple[Any, ...]]]) -> None:
    names = set(sa.inspect(conn).get_table_names())
    assert names & migrate.OWNED_TABLES == set(metadata.tables) | {migrate.VERSION_TABLE, migrate.PROVENANCE_TABLE}
    _verify_relationships(conn, seed_snap)
    _verify_events(conn, seed_snap)
    _verify_counters(conn, seed_snap)


def _verify_relationships(conn: sa.Connection, seed_snap: dict[str, list[tuple[Any, ...]]]) -> None:
    # Expected: the WAL's own links, then every legacy row that is not soft-deleted.
    expected: dict[tuple[str, str, str], Link] = {}
    seed_rel_counts: dict[str, int] = defaultdict(int)
    for ns, _first, last, _, blob, _ in seed_snap["rels_wal"]:
        for rec in codec.decode_batch(blob, table="rels_wal", row="seed"):
            apply_rel_event(expected, ns, RelEvent.from_record(rec, table="rels_wal", row="seed"))
        seed_rel_counts[ns] = max(seed_rel_counts[ns], last)
    for r in seed_snap["relationships"]:
        (from_ns, from_id, pred, to_ns, to_id, reverse, _v, created, created_by, deleted, _db, mm, sim, text) = r
        if deleted is None:
            key = (f"{from_ns}/{from_id}", pred, f"{to_ns}/{to_id}")
            data = expected_link_data(text, mm, sim)
            data = None if data is None else codec.loads(codec.dumps(data))
            expected[key] = Link(key[0], pred, key[2], reverse, data, kit.to_us(created), created_by)

    links: dict[tuple[str, str, str], Link] = {}
    history: dict[tuple[str, str, str], list[RelEvent]] = defaultdict(list)
    for ns, recs in decode_wal(conn, RELS_WAL).items():
        for rec in recs:
            ev = RelEvent.from_record(rec, table="rels_wal", row=ns)
            apply_rel_event(links, ns, ev)
            if ev.seq > seed_rel_counts[ns]:
                history[(f"{ns}/{ev.from_id}", ev.predicate, ev.to)].append(ev)
    assert links.keys() == expected.keys()
    for key, link in links.items():
        want = expected[key]
        assert (link.reverse, link.created_at, link.created_by) == (want.reverse, want.created_at, want.created_by), key
        assert (link.data is None and want.data is None) or _canon(link.data) == _canon(want.data), key
    # Soft-deleted rows: LINK then UNLINK, each with its time and actor.
    for r in seed_snap["relationships"]:
        key = (f"{r[0]}/{r[1]}", r[2], f"{r[3]}/{r[4]}")
        ops = [(e.op, e.ts, e.actor) for e in history[key]]
        want_ops = [(LINK, kit.to_us(r[7]), r[8])]
        if r[9] is not None:
            want_ops.append((UNLINK, kit.to_us(r[9]), r[10]))
        assert ops == want_ops, key


def _expected_update(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    changed = {k: v for k, v in after.items() if k not in before or _canon(before[k]) != _canon(v)}
    data: dict[str, Any] = {"$set": changed}
    removed = [k for k in before if k not in after]
    if removed:
        data["$unset"] = dict.fromkeys(removed, "")
    return data


def _verify_events(conn: sa.Connection, seed_snap: dict[str, list[tuple[Any, ...]]]) -> None:
    wal = decode_wal(conn, EVENTS_WAL)
    seed_last = {ns: last for ns, _, last, *_ in seed_snap["events_wal"]}
    seed_counts = defaultdict(int)
    for ns, first, last, *_ in seed_snap["events_wal"]:
        seed_counts[ns] += last - first + 1
    cursor = {ns: seed_last.get(ns, 0) for ns in wal}
    versions: dict[tuple[str, str], int] = {}
    states: dict[tuple[str, str], Any] = {}
    last_after: dict[tuple[str, str], Any] = {}
    created_here: set[tuple[str, str]] = set()
    moved = 0
    for _id, records_json, *_rest, flushed, _created in seed_snap["event_batches"]:
        for rec in json.loads(records_json):
            key = (rec["ns"], rec["id"])
            versions[key] = 1 if rec["op"] == CREATE else versions.get(key, 0) + 1
            if flushed:
                continue
            # The next event of this namespace in events_wal must be this one, field by field.
            ev = Event.from_record(wal[rec["ns"]][cursor[rec["ns"]]], table="events_wal", row=rec["ns"])
            cursor[rec["ns"]] += 1
            moved += 1
            if rec["op"] == CREATE:
                want = rec["after"]
                created_here.add(key)
            elif rec["op"] == UPDATE:
                want = _expected_update(rec["before"], rec["after"])
            else:
                want = {"hard": False}
            assert (ev.ts, ev.op, ev.id, ev.actor, ev.version) == (
                round(rec["ts"] * 1000),
                rec["op"],
                rec["id"],
                rec["actor"],
                versions[key],
            ), rec
            assert _canon(ev.data) == _canon(codec.loads(codec.dumps(want))), rec
            states[key] = apply_event(rec["ns"], states.get(key), ev)
            last_after[key] = (rec["op"], rec["after"] if rec["op"] != DELETE else rec["before"])
    assert moved > 0
    for ns, n in cursor.items():
        assert n == len(wal[ns]), f"events_wal {ns}: {len(wal[ns]) - n} unexpected events"
    # Folding the moved events gives the legacy state of every entity created in them.
    for key in created_here:
        state = states[key]
        op, fields = last_after[key]
        assert state is not None
        assert ("deletedAt" in state) == (op == DELETE)
        body = {k: v for k, v in state.items() if k not in META} | {"$type": state["$type"]}
        assert _canon(body) == _canon(codec.loads(codec.dumps(fields))), key


def _verify_counters(conn: sa.Connection, seed_snap: dict[str, list[tuple[Any, ...]]]) -> None:
    counters = dict(conn.execute(sa.select(COUNTERS.c.name, COUNTERS.c.value)).all())
    for kind, rows in (("seq", seed_snap["events_wal"]), ("rseq", seed_snap["rels_wal"])):
        for ns in {r[0] for r in rows}:
            # the flushed mark stays below every WAL row: nothing was archived by the migration
            assert counters[f"{kind}:{ns}"] == min(r[1] for r in rows if r[0] == ns) - 1
    top: dict[str, int] = defaultdict(int)

    def seen(ns: str, eid: str) -> None:
        n = decode_id(eid)
        if n is not None:
            top[ns] = max(top[ns], n)

    for r in seed_snap["relationships"]:
        seen(r[0], r[1])
        seen(r[3], r[4])
    for batch in seed_snap["event_batches"]:
        for rec in json.loads(batch[1]):
            seen(rec["ns"], rec["id"])
    for ns, _f, _l, _c, blob, _ in seed_snap["events_wal"]:
        for rec in codec.decode_batch(blob, table="events_wal", row="seed"):
            seen(ns, rec[3])
    for ns, n in top.items():
        assert counters[f"id:{ns}"] >= n, ns


def schema_diff(conn: sa.Connection) -> list[Any]:
    ctx = MigrationContext.configure(conn, opts={"include_name": include_ours, "compare_type": True})
    return list(compare_metadata(ctx, metadata))


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_round_trip_loses_nothing(engine: sa.Engine, capsys: pytest.CaptureFixture[str]) -> None:
    seed = make_seed(n_rels=52_000, n_batches=240)
    load_seed(engine, seed)
    with engine.connect() as conn:
        seed_snap = legacy_snapshot(conn)
        before = row_counts(conn)
    assert len(seed_snap["relationships"]) == 52_000 and len(seed_snap["event_batches"]) == 240

    t0 = time.perf_counter()
    migrate.upgrade(engine)
    t_up = time.perf_counter() - t0
    assert migrate.current(engine) == (HEAD,)
    with engine.connect() as conn:
        verify_head(conn, seed_snap)
        assert schema_diff(conn) == []
        after = row_counts(conn)
        first_head = head_snapshot(conn)
    _store_spot_checks(engine, seed_snap)

    t0 = time.perf_counter()
    migrate.downgrade(engine, LEGACY)
    t_down = time.perf_counter() - t0
    assert migrate.current(engine) == (LEGACY,)
    with engine.connect() as conn:
        assert legacy_snapshot(conn) == seed_snap
        assert not sa.inspect(conn).has_table(migrate.PROVENANCE_TABLE)
    with engine.begin() as conn:  # the legacy writer can go on: ids continue after the restored ones
        row = {k: v for k, v in seed.batches[0].items() if k != "id"}
        new_id = conn.execute(BATCHES.insert().values(**row).returning(BATCHES.c.id)).scalar_one()
        assert new_id == len(seed.batches) + 1
        conn.execute(BATCHES.delete().where(BATCHES.c.id == new_id))

    t0 = time.perf_counter()
    migrate.upgrade(engine)
    t_again = time.perf_counter() - t0
    with engine.connect() as conn:
        assert head_snapshot(conn) == first_head  # the same rows, byte for byte: verified above

    total_before, total_after = sum(before.values()), sum(after.values())
    with capsys.disabled():
        print(
            f"\n[migration {_backend(engine)}] rows before {total_before:,} {before}\n"
            f"[migration {_backend(engine)}] rows after  {total_after:,} {after}\n"
            f"[migration {_backend(engine)}] upgrade pq0001->head {t_up:.2f}s, downgrade {t_down:.2f}s, "
            f"upgrade again {t_again:.2f}s"
        )


def _store_spot_checks(engine: sa.Engine, seed_snap: dict[str, list[tuple[Any, ...]]]) -> None:
    """A few reads through the store itself, when the store is importable."""
    try:
        from parquedb_orm import ParqueDB
    except ImportError:
        return
    live = [r for r in seed_snap["relationships"] if r[9] is None][::5_000]
    db = ParqueDB(engine)
    try:
        for r in live:
            found = db.links(f"{r[0]}/{r[1]}", r[2])
            match = [lk for lk in found if lk["to"] == f"{r[3]}/{r[4]}"]
            assert len(match) == 1, r
            assert match[0]["createdBy"] == r[8] and match[0]["reverse"] == r[5]
        deleted = next(r for r in seed_snap["relationships"] if r[9] is not None)
        assert all(
            lk["to"] != f"{deleted[3]}/{deleted[4]}" for lk in db.links(f"{deleted[0]}/{deleted[1]}", deleted[2])
        )
    finally:
        db.close()


def test_schema_matches_models(engine: sa.Engine) -> None:
    """`alembic check`: the head creates exactly models.py; pq0001 exactly the legacy layout."""
    migrate.upgrade(engine, LEGACY)
    with engine.connect() as conn:
        legacy_md = sa.MetaData()
        for t in (*legacy_metadata.tables.values(), EVENTS_WAL, RELS_WAL):
            t.to_metadata(legacy_md)
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": _only(legacy_md)})
        assert compare_metadata(ctx, legacy_md) == []
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) & migrate.OWNED_TABLES == set(metadata.tables) | {
            migrate.VERSION_TABLE
        }
        if engine.dialect.name == "sqlite":  # clustered tables, as models.py declares them
            ddl = dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type='table'").all())
            assert all("WITHOUT ROWID" in ddl[name] for name in metadata.tables)
    with engine.connect() as conn:
        cfg = _config(conn)
        command.check(cfg)  # raises if autogenerate finds any difference


def _only(md: sa.MetaData) -> Any:
    return lambda name, type_, parent: type_ != "table" or name in md.tables


def _transactional(engine: sa.Engine) -> bool:
    return engine.dialect.name != "mysql"


def test_interrupted_upgrade_keeps_previous_revision(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = make_seed(n_rels=3_000, n_batches=30)
    load_seed(engine, seed)
    with engine.connect() as conn:
        seed_snap = legacy_snapshot(conn)

    # pq0002 fails after creating its tables and writing the counters.
    monkeypatch.setenv(migrate.FAIL_AT_ENV, "pq0002:mid")
    with pytest.raises(migrate.InjectedFailure):
        migrate.upgrade(engine)
    assert migrate.current(engine) == (LEGACY,)
    with engine.connect() as conn:
        assert legacy_snapshot(conn) == seed_snap
        tables = set(sa.inspect(conn).get_table_names())
        if _transactional(engine):
            assert "counters" not in tables and "entity_snapshots" not in tables  # the DDL rolled back too
        else:  # MariaDB: CREATE TABLE committed at once, the counter rows rolled back
            assert kit.count_rows(conn, COUNTERS) == 0

    # pq0003 fails after writing rels_wal rows: pq0002 stays applied.
    monkeypatch.setenv(migrate.FAIL_AT_ENV, "pq0003:mid")
    with pytest.raises(migrate.InjectedFailure):
        migrate.upgrade(engine)
    assert migrate.current(engine) == ("pq0002",)
    with engine.connect() as conn:
        snap = legacy_snapshot(conn)
        assert snap == seed_snap  # relationships intact, no rels_wal row left behind
        if _transactional(engine):
            assert not sa.inspect(conn).has_table(migrate.PROVENANCE_TABLE)

    # pq0004's downgrade fails half way: pq0005 went down, nothing moved back.
    monkeypatch.delenv(migrate.FAIL_AT_ENV)
    migrate.upgrade(engine)  # a re-run completes (MariaDB too: the leftovers are tolerated)
    with engine.connect() as conn:
        verify_head(conn, seed_snap)
        head = head_snapshot(conn)
    monkeypatch.setenv(migrate.FAIL_AT_ENV, "pq0004-down:mid")
    with pytest.raises(migrate.InjectedFailure):
        migrate.downgrade(engine, LEGACY)
    assert migrate.current(engine) == ("pq0004",)  # pq0005 went down (its own transaction), pq0004 did not
    with engine.connect() as conn:
        assert head_snapshot(conn) == head
        if _transactional(engine):
            assert not sa.inspect(conn).has_table("event_batches")
    monkeypatch.delenv(migrate.FAIL_AT_ENV)
    migrate.downgrade(engine, LEGACY)
    with engine.connect() as conn:
        assert legacy_snapshot(conn) == seed_snap


def test_downgrade_refuses_when_moved_events_were_flushed(engine: sa.Engine) -> None:
    """If the store flushed migrated events since, the legacy rows cannot be rebuilt: refuse, keep everything."""
    load_seed(engine, make_seed(n_rels=300, n_batches=12))
    migrate.upgrade(engine)
    with engine.begin() as conn:  # what a flush does to the WAL: the oldest moved row is retired
        ns, first = conn.execute(
            sa.select(RELS_WAL.c.ns, RELS_WAL.c.first_seq)
            .where(RELS_WAL.c.ns == "comments")
            .order_by(RELS_WAL.c.first_seq)
            .limit(1)
        ).one()
        conn.execute(RELS_WAL.delete().where(RELS_WAL.c.ns == ns, RELS_WAL.c.first_seq == first))
    with pytest.raises(RuntimeError, match="flushed"):
        migrate.downgrade(engine, "pq0002")
    # pq0004's downgrade had committed (one transaction per revision); pq0003's did not.
    assert migrate.current(engine) == ("pq0003",)
    with engine.connect() as conn:
        assert kit.count_rows(conn, RELS_WAL) > 0
        if _transactional(engine):
            assert not sa.inspect(conn).has_table("relationships")


def test_autogenerate_filter_for_apps(tmp_path: Path) -> None:
    """An app's autogenerate with include_object sees its own tables only, never ours."""
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    migrate.upgrade(eng)
    app_md = sa.MetaData()
    sa.Table("orders", app_md, sa.Column("id", sa.Integer, primary_key=True))
    with eng.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_object": migrate.include_object})
        diff = compare_metadata(ctx, app_md)
        ctx = MigrationContext.configure(conn, opts={"include_name": migrate.include_name})
        diff_by_name = compare_metadata(ctx, app_md)
    assert [d[0] for d in diff] == ["add_table"] and diff[0][1].name == "orders"
    assert [d[0] for d in diff_by_name] == ["add_table"]
    eng.dispose()


def test_alembic_cli_from_repo_root(tmp_path: Path) -> None:
    """`alembic upgrade head` / `alembic check` from the repository root, URL via -x or $PARQUEDB_URL."""
    import subprocess
    import sys

    db = tmp_path / "cli.db"
    env = {**os.environ, "PARQUEDB_URL": f"sqlite:///{tmp_path / 'env.db'}"}
    run = [sys.executable, "-m", "alembic"]
    subprocess.run([*run, "-x", f"url=sqlite:///{db}", "upgrade", "head"], cwd=REPO, check=True, env=env)
    out = subprocess.run(
        [*run, "-x", f"url=sqlite:///{db}", "current"], cwd=REPO, check=True, env=env, capture_output=True, text=True
    )
    assert f"{HEAD} (head)" in out.stdout
    subprocess.run([*run, "-x", f"url=sqlite:///{db}", "check"], cwd=REPO, check=True, env=env)
    subprocess.run([*run, "upgrade", "heads"], cwd=REPO, check=True, env=env)  # $PARQUEDB_URL
    assert migrate.current(f"sqlite:///{tmp_path / 'env.db'}") == (HEAD,)
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:
        assert set(metadata.tables) <= set(sa.inspect(conn).get_table_names())


APP_ENV = """
from alembic import context
import sqlalchemy as sa
from parquedb_orm.migrate import include_object

config = context.config
engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as conn:
    context.configure(connection=conn, target_metadata=None, include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
"""

APP_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "app0001"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade():
    op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("orders")
"""


def test_app_alembic_with_our_version_location(tmp_path: Path) -> None:
    """An app with its own Alembic adds our versions and runs `alembic upgrade heads`."""
    from alembic.config import Config

    app = tmp_path / "app_migrations"
    (app / "versions").mkdir(parents=True)
    (app / "env.py").write_text(APP_ENV)
    (app / "versions" / "app0001_orders.py").write_text(APP_REVISION)
    url = f"sqlite:///{tmp_path / 'app.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(app))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join([str(app / "versions"), *migrate.version_locations()]))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "heads")
    eng = sa.create_engine(url)
    with eng.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        versions = {v for (v,) in conn.exec_driver_sql("SELECT version_num FROM alembic_version")}
    assert set(metadata.tables) | {"orders"} <= tables
    assert versions == {HEAD, "app0001"}  # both branches, in the app's own version table
    assert migrate.VERSION_TABLE not in tables
    command.downgrade(cfg, "parquedb@base")  # our branch alone
    with eng.connect() as conn:
        assert set(sa.inspect(conn).get_table_names()) & set(metadata.tables) == set()
        assert {v for (v,) in conn.exec_driver_sql("SELECT version_num FROM alembic_version")} == {"app0001"}
    eng.dispose()


def test_downgrade_below_pq0002_keeps_the_archive_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping a manifest that lists archived files would hide those events: refused unless forced."""
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate.upgrade(eng)
    manifest = metadata.tables["archive_manifest"]
    with eng.begin() as conn:
        conn.execute(
            manifest.insert().values(
                kind="events",
                ns="posts",
                first_seq=1,
                last_seq=9,
                path="events/ns=posts/1-9.parquet",
                row_count=9,
                bytes=100,
                created_at=T0,
            )
        )
    with pytest.raises(RuntimeError, match="archive_manifest"):
        migrate.downgrade(eng, LEGACY)
    assert migrate.current(eng) == ("pq0002",)  # pq0004 and pq0003 went down (nothing to move), pq0002 did not
    monkeypatch.setenv(migrate.ALLOW_LOSS_ENV, "1")
    migrate.downgrade(eng, LEGACY)
    assert migrate.current(eng) == (LEGACY,)
    eng.dispose()


def test_pq0005_manifest_checksum_column_round_trip(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """pq0005 adds the nullable `checksum` column (rows before it: NULL, not verified) and
    its downgrade drops it, keeping every row; an interrupted upgrade leaves pq0004."""
    manifest = metadata.tables["archive_manifest"]
    row = {
        "kind": "events",
        "ns": "posts",
        "first_seq": 1,
        "last_seq": 9,
        "path": "events/ns=posts/000000000001-000000000009.parquet",
        "row_count": 9,
        "bytes": 1234,
        "created_at": T0,
    }
    migrate.upgrade(engine, "pq0004")
    with engine.begin() as conn:  # a row an older version wrote: no checksum column yet
        conn.execute(sa.table("archive_manifest", *(sa.column(k) for k in row)).insert().values(**row))

    def columns() -> set[str]:
        with engine.connect() as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns("archive_manifest")}

    monkeypatch.setenv(migrate.FAIL_AT_ENV, "pq0005:mid")
    with pytest.raises(migrate.InjectedFailure):
        migrate.upgrade(engine)
    assert migrate.current(engine) == ("pq0004",)
    if _transactional(engine):
        assert "checksum" not in columns()  # the DDL rolled back too
    monkeypatch.delenv(migrate.FAIL_AT_ENV)
    migrate.upgrade(engine)  # a re-run completes (MariaDB: the committed column is tolerated)
    assert migrate.current(engine) == ("pq0005",) and "checksum" in columns()
    with engine.begin() as conn:
        got = conn.execute(sa.select(manifest).where(manifest.c.first_seq == 1)).one()
        assert got.checksum is None and got.bytes == 1234 and got.path == row["path"]
        conn.execute(
            manifest.insert().values(**{**row, "first_seq": 10, "last_seq": 12, "checksum": "crc32 0a0b0c0d 01020304"})
        )
        assert schema_diff(conn) == []
    migrate.downgrade(engine, "pq0004")
    assert migrate.current(engine) == ("pq0004",) and "checksum" not in columns()
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT first_seq, bytes, path FROM archive_manifest ORDER BY first_seq")).all()
    assert [tuple(r) for r in kept] == [(1, 1234, row["path"]), (10, 1234, row["path"])]
    if engine.dialect.name == "sqlite":  # dropped in place: still clustered on its key
        with engine.connect() as conn:
            ddl = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = 'archive_manifest'").scalar_one()
        assert "WITHOUT ROWID" in ddl
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert [r.checksum for r in conn.execute(sa.select(manifest).order_by(manifest.c.first_seq))] == [None, None]


UPGRADE_CHECKPOINTS = (
    "pq0002:mid",
    "pq0003:mid",
    "pq0003:before-drop",
    "pq0004:mid",
    "pq0004:before-drop",
    "pq0005:mid",
)


@pytest.mark.slow
@pytest.mark.parametrize("label", UPGRADE_CHECKPOINTS)
def test_an_upgrade_killed_at_any_checkpoint_completes_on_rerun(engine: sa.Engine, label: str) -> None:
    """A process killed (os._exit, no handler runs) at each checkpoint of the upgrade from
    the legacy layout: a re-run of the upgrade completes and loses no legacy row."""
    import subprocess
    import sys

    seed = make_seed(n_rels=300, n_batches=8)
    load_seed(engine, seed)
    with engine.connect() as conn:
        seed_snap = legacy_snapshot(conn)
    url = engine.url.render_as_string(hide_password=False)
    code = (
        "import sys, sqlalchemy as sa; from parquedb_orm import migrate; migrate.upgrade(sa.create_engine(sys.argv[1]))"
    )
    env = {**os.environ, kit.KILL_AT_ENV: label}
    env.pop(migrate.FAIL_AT_ENV, None)
    proc = subprocess.run([sys.executable, "-c", code, url], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, f"the upgrade did not reach {label!r} ({proc.returncode}): {proc.stderr[-2000:]}"
    engine.dispose()  # the dead process's connections are gone; start afresh
    migrate.upgrade(engine)
    with engine.connect() as conn:
        verify_head(conn, seed_snap)
