"""The examples run as they are, as a new user runs them, and print what they promise."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy import create_engine, func, select

from parquedb_orm.sql.models import EventsWal

REPO = Path(__file__).resolve().parent.parent


def run(script: str, cwd: Path, *args: str, stderr: list[str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    if stderr is not None:
        stderr.append(proc.stderr)
    return proc.stdout


def test_audit_log(tmp_path: Path) -> None:
    out = run("audit_log.py", tmp_path)
    assert "bulk update changed 3 orders" in out
    assert "History of order 1 (newest first), 4 entries:" in out
    assert "  v3 UPDATE by bob: {'total': (Decimal('19.90'), Decimal('17.90'))}" in out
    assert "  v2 UPDATE by alice from 203.0.113.7: {'status': ('new', 'paid')}" in out
    assert "Order 1 as of when it was paid: status=paid, total=19.90" in out
    assert "Reverted to version 1: status=new, total=19.90 (a new version, v4;" in out
    assert "Ann has 4 orders, found through the relationship events" in out
    assert "15 events and links in 9 WAL rows (an audit table would have written 15 rows)" in out
    assert "flushed 11 events and 4 links to audit-archive/" in out
    assert "    ('2', 2, 'UPDATE', 'billing-job', None)" in out
    assert (tmp_path / "audit.db").exists() and any((tmp_path / "audit-archive").rglob("*.parquet"))
    assert "card_token" not in out and "tok_secret" not in out  # the excluded column stays out
    # runs again from scratch in the same folder
    assert run("audit_log.py", tmp_path).count("History of order 1") == 1


def test_blog(tmp_path: Path) -> None:
    out = run("blog.py", tmp_path)
    assert "  author of 'Events all the way down' (outbound 'author'): ['Ann']" in out
    by_ann = "['Hello, world', 'Events all the way down']"
    assert f"  posts by Ann (inbound, reverse name 'posts'): {by_ann}" in out
    assert f"  posts by Ann (inbound, predicate 'author'): {by_ann}" in out
    assert (
        "  comments on 'Events all the way down': ['Great read', 'What about snapshots?', "
        "'Snapshots are the entities files']" in out
    )
    assert "  who commented on it: ['Ann', 'Bob', 'Cid']" in out
    assert "  likes of 'Events all the way down': [('Bob', 5), ('Cid', 4)]" in out
    assert "  comments on the events post: 2 shown, 3 with the deleted one" in out
    assert "  posts Bob likes: ['Events all the way down']" in out
    assert "    'Bob' -likes-> (reverse 'liked_by') data={'stars': 5}" in out
    assert "[7] flushed 12 events and 18 link events to blog-archive/" in out
    # the reopened store answers from the archive: the deleted comment stays hidden, the unlike holds
    after = out.split("[8]", 1)[1]
    assert "  comments on 'Events all the way down': ['Great read', 'Snapshots are the entities files']" in after
    assert "  who commented on it: ['Ann', 'Bob']" in after
    assert "  posts Bob likes (outbound 'likes'): ['Events all the way down']" in after
    counts = ["author  LINK    3", "by      LINK    5", "likes   LINK    4", "likes   UNLINK  1", "on      LINK    5"]
    assert "\n".join(f"    {line}" for line in counts) + "\n" in after
    assert any((tmp_path / "blog-archive" / "rels").rglob("*.parquet"))


def test_bulk_import(tmp_path: Path) -> None:
    err: list[str] = []
    out = run("bulk_import.py", tmp_path, "--rows", "5000", "--chunk", "1000", stderr=err)
    assert "wrote customers.csv (5,000 rows)" in out
    # not a terminal: no progress bar, on either stream
    assert "\x1b[" not in out + err[0] and "importing" not in out + err[0]
    assert re.search(r"^imported 5,000 rows in [0-9.]+ s: [0-9,]+ rows/s$", out, re.M)
    # one INSERT of two manifest rows per chunk; the entities and their events go to Parquet
    assert "SQL: 5 statements, 10 rows written for 5,000 entities" in out
    assert "archive: 10 Parquet files (5 in entities/, 5 of their CREATE events in events/)" in out
    # the data comes from a fixed seed: the find gives the same customers every run
    assert "find {'country': 'NZ', 'plan': 'team', 'score': {'$gte': 99}}: 4 customers, top 5 by balance" in out
    assert re.search(r"^  C0004115  Dee Patel      score=100 balance= 322.25  customers/\w+$", out, re.M)
    assert "  free    1,665  49.88\n  pro     1,657  50.52\n  team    1,678  48.82\n" in out
    assert (tmp_path / "customers.csv").stat().st_size > 0
    # a file of the user's own, with a last chunk smaller than the others
    own = tmp_path / "own.csv"
    own.write_text("ref,name,score\n" + "".join(f"R{i},n{i},{i}\n" for i in range(12)))
    out = run("bulk_import.py", tmp_path, "--csv", str(own), "--chunk", "5", "--db", "own.db", "--archive", "own")
    assert "imported 12 rows" in out and "wrote" not in out
    # two chunks of 5 are bulk files (an INSERT of 2 manifest rows each); the last 2 rows are
    # fewer than create_many's bulk threshold (5): one WAL row, after its 3 reads
    assert "SQL: 6 statements, 5 rows written for 12 entities" in out
    # and the flush after the import adds that WAL row's events file and its entity delta
    # (entity_deltas/)
    assert "archive: 6 Parquet files (2 in entities/, 3 of their CREATE events in events/)" in out
    assert "  ref='R0', name='n0', score=0\n" in out
    assert "DuckDB over the archive: 12 entities" in out
    # a column the store keeps itself: a clear message and exit status, no traceback
    (tmp_path / "bad.csv").write_text("name,version\na,1\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "bulk_import.py"), "--csv", "bad.csv", "--db", "bad.db"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    said = "bad.csv: rows 1-1 not imported (0 before them are): field 'version' is maintained by the store"
    assert said in proc.stderr


ANALYTICS_TABLES = """
events per namespace and operation
  ns        op      events
  comments  CREATE  24
  posts     CREATE  12
  posts     UPDATE  12
  users     CREATE  4

most active actors (entity and link events)
  actor    events
  Dee      25
  Bob      21
  Ann      19
  Cid      18
  counter  8

fields changed by updates (the flush's `changes` column)
  field  updates
  draft  2
  views  8

most viewed posts (entities: the current state)
  title          views  draft
  On parquet #1  50     false
  On duckdb #7   49     true
  On iceberg #2  48     true

comments and likes per post (link events)
  title          comments  likes
  On iceberg #2  5         3
  On sql #3      4         2
  On sql #5      6         0
"""


def check_png(path: Path) -> None:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    # 8 x 4.5 inches at 100 dpi
    assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == (800, 450)


def test_analytics(tmp_path: Path) -> None:
    # the seeded workload's counts do not depend on the rounds' timing
    out4 = run("analytics.py", tmp_path, "--pause", "0.4")
    assert "; flushed 52 events and 43 link events to analytics-archive/ (9 Parquet files)" in out4
    assert ANALYTICS_TABLES in out4
    png = tmp_path / "events_per_second.png"
    check_png(png)
    # 4 rounds 0.4 s apart span more than a second: at least 2 one-second bars (more on a slow machine)
    m = re.search(r"chart: events_per_second.png \(([0-9,]+) bytes\): (\d+) bars of seconds, 52 events in 3 namespaces",
                  out4)
    assert m and int(m[1].replace(",", "")) == png.stat().st_size and int(m[2]) >= 2
    bars = re.findall(r"^  \d\d:\d\d:\d\d  comments=(\d+)  posts=(\d+)  users=(\d+)$", out4, re.M)
    assert len(bars) == int(m[2]) and [sum(int(b[i]) for b in bars) for i in range(3)] == [24, 24, 4]
    # per day: one bar, today's (the API has no settable event time)
    out = run("analytics.py", tmp_path, "--rounds", "1", "--pause", "0", "--bucket", "day")
    check_png(tmp_path / "events_per_day.png")
    assert re.search(r"\): 1 bar of days, \d+ events in 3 namespaces\n  \d{4}-\d\d-\d\d  comments=6  posts=", out)


def test_fastapi_walkthrough(tmp_path: Path) -> None:
    out = run("fastapi_app.py", tmp_path)
    assert "POST /posts -> 201\n  created posts/" in out
    assert "PATCH /posts/Uk -> 409 (a stale expected_version)\n  posts/Uk is at version 2, not the expected 1" in out
    assert "POST /posts/Uk/publish -> 409 (raises after writing)\n  a post needs at least one tag" in out
    assert "POST /posts/Uk/comments -> 500 (async, raises after writing)\n" in out
    assert "  comments: ['Welcome!']\n" in out
    assert "  published posts: ['Hello, FastAPI']\n" in out
    assert "GET /posts/nosuch0 -> 404 (no such post)\n" in out
    history = "    CREATE v1 by ann\n    UPDATE v2 by ann\n    UPDATE v3 by ann\n    UPDATE v4 by ann\n"
    assert f"  history of posts/Uk, oldest first (4 events):\n{history}" in out
    assert "  notifications (the app's own table): [\"ann drafted 'Hello'\", \"ann published 'Hello, FastAPI'\"]" in out
    assert "flushed 5 events and 1 link events to app-archive/" in out


@pytest.fixture(scope="module")
def fastapi_app() -> ModuleType:
    pytest.importorskip("fastapi")
    spec = importlib.util.spec_from_file_location("example_fastapi_app", REPO / "examples" / "fastapi_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


def wal_rows(db_file: Path) -> int:
    engine = create_engine(f"sqlite:///{db_file}")
    with engine.connect() as conn:
        n = conn.scalar(select(func.count()).select_from(EventsWal))
    engine.dispose()
    return int(n or 0)


def test_fastapi_routes_sync_and_async_sessions(tmp_path: Path, fastapi_app: ModuleType) -> None:
    from fastapi.testclient import TestClient

    db_file = tmp_path / "app.db"
    app = fastapi_app.create_app(db_file, tmp_path / "archive")
    ann, bob = {"X-User": "ann"}, {"X-User": "bob"}
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/posts", json={"title": "First", "tags": ["a"]}, headers=ann)
        assert r.status_code == 201, r.text
        sqid = r.json()["$id"].split("/")[1]
        assert client.post("/posts", json={"title": "Second"}, headers=bob).status_code == 201
        r = client.patch(f"/posts/{sqid}", json={"title": "First!", "expected_version": 1}, headers=bob)
        assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["updatedBy"] == "bob"
        # typed errors as statuses
        stale = client.patch(f"/posts/{sqid}", json={"title": "x", "expected_version": 1}, headers=ann)
        assert stale.status_code == 409 and "not the expected 1" in stale.json()["detail"]
        assert client.get("/posts/not-an-id!").status_code == 422  # InvalidIdError, a ValidationError
        assert client.patch("/posts/zzzz", json={"title": "x"}, headers=ann).status_code == 404
        assert client.post("/posts", json={"title": "x"}, headers={"X-User": "Not A User"}).status_code == 422
        assert client.get(f"/posts/{sqid}").json()["title"] == "First!"

        # async routes: a comment and its link commit with the AsyncSession
        r = client.post(f"/posts/{sqid}/comments", json={"body": "nice"}, headers=bob)
        assert r.status_code == 201, r.text
        assert [c["body"] for c in client.get(f"/posts/{sqid}/comments").json()] == ["nice"]
        # the sync and the async sessions share one store: the async find sees the sync writes
        assert [p["title"] for p in client.get("/posts").json()] == ["First!", "Second"]

        # requests that raise after writing commit nothing: no WAL row, no app row, no event
        before = wal_rows(db_file)
        r = client.post(f"/posts/{sqid}/publish", headers=bob)
        assert r.status_code == 200 and r.json()["published"] is True  # this one has a tag
        assert wal_rows(db_file) == before + 1
        second = next(p for p in client.get("/posts").json() if p["title"] == "Second")
        second_id = second["$id"].split("/")[1]
        assert client.post(f"/posts/{second_id}/publish", headers=bob).status_code == 409  # HTTPException
        assert client.post(f"/posts/{sqid}/comments", json={"body": "http://spam"}, headers=bob).status_code == 500
        assert wal_rows(db_file) == before + 1
        assert client.get(f"/posts/{second_id}").json()["published"] is False
        assert [c["body"] for c in client.get(f"/posts/{sqid}/comments").json()] == ["nice"]
        # the store's handle outside any request: one comment in the namespace, not two
        assert [c["body"] for c in app.state.handle.find("comments")] == ["nice"]
        assert client.get("/notifications").json() == [
            "ann drafted 'First'", "bob drafted 'Second'", "bob published 'First!'"
        ]  # fmt: skip
        assert [p["title"] for p in client.get("/posts", params={"published": True}).json()] == ["First!"]

        # history through a route: the post's events, oldest first, with their actors
        history = client.get(f"/posts/{sqid}/history").json()
        assert [(h["op"], h["version"], h["actor"]) for h in history] == [
            ("CREATE", 1, "ann"), ("UPDATE", 2, "bob"), ("UPDATE", 3, "bob")
        ]  # fmt: skip
        assert history[2]["data"] == {"$set": {"published": True}}
        # flushed, the archive holds the committed events only
        app.state.handle.flush()
        con = app.state.handle.duckdb()
        by_ns = con.execute("SELECT ns, op, count(*) FROM events GROUP BY ns, op ORDER BY ns, op").fetchall()
        links = con.execute("SELECT predicate, count(*) FROM rels GROUP BY predicate").fetchall()
        con.close()
        assert by_ns == [("comments", "CREATE", 1), ("posts", "CREATE", 2), ("posts", "UPDATE", 2)]
        assert links == [("on", 1)]
    # closed at shutdown (the lifespan): a new app on the same file reads it all back
    with TestClient(fastapi_app.create_app(db_file, tmp_path / "archive")) as client:
        assert len(client.get(f"/posts/{sqid}/history").json()) == 3
        assert [c["body"] for c in client.get(f"/posts/{sqid}/comments").json()] == ["nice"]
