"""parquedb-orm quick start: users, posts, links and history on embedded SQLite.

Run it after `pip install -e .`:

    python examples/quickstart.py

It creates `quickstart.db` and an `archive/` folder in the current directory (the
database is recreated on every run), then walks through the API and prints, for each
step, what it cost in SQL: statements sent and rows written (rows inserted plus rows
changed by UPDATE/DELETE), counted by the row meter of this source checkout
(`tools/meter`). When Python runs on the row-counting SQLite library (see
docs/development.md, "Row meter"), it also prints the rows read and written exactly as
Cloudflare D1 / Durable Objects and Turso bill them.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import parquedb_orm as pq

# the row meter is a development tool of the repository, not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "meter"))
from parquedb_meter import Meter, meter

DB_FILE = Path.cwd() / "quickstart.db"
ARCHIVE = "./archive"
ARCHIVE_PARTS = {"events", "rels", "entities", "bulk"}  # what the store writes under the archive root


@dataclass
class Cost:
    statements: int = 0
    written: int = 0
    billed_read: int | None = None
    billed_written: int | None = None

    def add(self, other: Cost) -> None:
        self.statements += other.statements
        self.written += other.written
        if other.billed_read is not None:
            self.billed_read = (self.billed_read or 0) + other.billed_read
            self.billed_written = (self.billed_written or 0) + (other.billed_written or 0)


def cost_of(m: Meter) -> Cost:
    inserted = sum(r.inserted_rows for r in m.records)
    changed = sum(max(r.rows_affected, 0) for r in m.records if r.kind in ("UPDATE", "DELETE"))
    if m.faithful:
        return Cost(m.statements, inserted + changed, m.rows_read, m.rows_written)
    return Cost(m.statements, inserted + changed)


TOTAL = Cost()
STEPS: list[str] = []
SHOW_SQL = "--sql" in sys.argv[1:]  # also list each step's statements


@contextmanager
def step(db: pq.ParqueDB, title: str) -> Iterator[None]:
    """Meter one step and print its cost under its title."""
    with meter(db.engine) as m:
        yield
    cost = cost_of(m)
    TOTAL.add(cost)
    STEPS.append(title)
    line = f"    -> {plural(cost.statements, 'SQL statement')}, {plural(cost.written, 'row')} written"
    if cost.billed_read is not None:
        line += f" | billed (D1/Turso): {plural(cost.billed_read, 'row')} read, {cost.billed_written} written"
    print(line)
    if SHOW_SQL:
        for r in m.records:
            sql = " ".join(r.sql.split())
            print(f"       {sql[:110]}{'...' if len(sql) > 110 else ''}")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def show(title: str) -> None:
    print(f"\n[{len(STEPS) + 1}] {title}")


def short(entity: dict[str, Any] | None, *fields: str) -> str:
    if entity is None:
        return "None"
    shown = ", ".join(f"{f}={entity[f]!r}" for f in fields if f in entity)
    return f"{entity['$id']} v{entity['version']} ({shown})"


def sqid(entity: dict[str, Any]) -> str:
    """The id part of an entity's `$id` ("posts/<sqid>")."""
    return str(entity["$id"]).split("/")[1]


def open_store() -> pq.ParqueDB:
    """The store on `quickstart.db`, archiving to `./archive`.

    Flushing is manual here so that each step's cost is its own; by default the store
    flushes by itself (at 100 unflushed events within 60 s, at once past 10,000, and at
    start-up whatever a previous process left), in a background timer thread."""
    return pq.ParqueDB(f"sqlite:///{DB_FILE}", archive=ARCHIVE, policy=pq.FlushPolicy(mode="manual"))


def clean_start() -> None:
    """Remove the previous run's database, and its archive folder when it holds only our files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{DB_FILE}{suffix}").unlink(missing_ok=True)
    archive = Path(ARCHIVE)
    if archive.is_dir():
        entries = {p.name for p in archive.iterdir()}
        if entries <= ARCHIVE_PARTS:
            shutil.rmtree(archive)


def main() -> int:
    started = time.perf_counter()
    clean_start()
    db = open_store()
    print(f"parquedb-orm {pq.__version__} on SQLite {sqlite3.sqlite_version}: {DB_FILE} + {ARCHIVE}/")

    show("create 3 users, one call (and one commit) each")
    with step(db, "create users"):
        ann = db.create("users", {"$type": "User", "name": "Ann", "email": "ann@example.com", "karma": 10})
        bob = db.create("users", {"$type": "User", "name": "Bob", "email": "bob@example.com", "karma": 3})
        cid = db.create("users", {"$type": "User", "name": "Cid", "email": "cid@example.com", "karma": 7})
    for user in (ann, bob, cid):
        print("   ", short(user, "name", "karma"))

    show("create 4 posts in one transaction, each linked to its author (one commit)")
    posts_data = [
        ("Hello, world", ann, ["intro"], 12),
        ("Events all the way down", ann, ["design", "sql"], 40),
        ("Parquet for history", bob, ["parquet"], 25),
        ("Rows are money", cid, ["billing", "sql"], 7),
    ]
    with step(db, "create posts"), db.transaction() as tx:
        posts = []
        for title, author, tags, views in posts_data:
            post = tx.create("posts", {"$type": "Post", "title": title, "tags": tags, "views": views},
                             actor=author["$id"])
            tx.link(post["$id"], "author", author["$id"], reverse="posts", actor=author["$id"])
            posts.append(post)
    for post in posts:
        print("   ", short(post, "title", "views"))

    show("update a post with several operators at once")
    with step(db, "update"):
        hello = db.update(
            "posts",
            sqid(posts[0]),
            {
                "$set": {"title": "Hello, parquedb", "meta.lang": "en"},
                "$inc": {"views": 5},
                "$push": {"tags": {"$each": ["news", "intro"]}},
                "$addToSet": {"topics": "sql"},
                "$currentDate": {"editedAt": True},
            },
            expected_version=1,
            actor=ann["$id"],
        )
    print("   ", short(hello, "title", "views", "tags", "topics", "meta"))

    show("more updates: $max, $pull, $rename, $unset, $mul")
    with step(db, "more updates"):
        db.update("users", sqid(bob), {"$max": {"karma": 9}, "$rename": {"email": "contact"}})
        db.update("posts", sqid(posts[1]), {"$pull": {"tags": "sql"}, "$mul": {"views": 2}})
        db.update("users", sqid(cid), {"$unset": {"email": ""}, "$inc": {"karma": -2}})
        hello = db.update("posts", sqid(posts[0]), {"$pull": {"tags": "intro"}}, actor=bob["$id"])
    print("   ", short(db.get("users", sqid(bob)), "name", "karma", "contact"))
    print("   ", short(hello, "title", "tags"))

    show("delete a post (soft) and restore it")
    with step(db, "delete + restore"):
        db.delete("posts", sqid(posts[3]), actor=cid["$id"])
        gone = db.get("posts", sqid(posts[3]))
        back = db.restore("posts", sqid(posts[3]), actor=cid["$id"])
    print(f"    after delete: get -> {gone}; after restore: {short(back, 'title')}")

    show("read back: get (served from the cache)")
    with step(db, "get"):
        got = db.get("posts", sqid(posts[0]))
    print("   ", short(got, "title", "views"))

    show("find posts with views > 20, most viewed first")
    with step(db, "find"):
        popular = db.find("posts", {"views": {"$gt": 20}}, sort={"views": -1}, limit=10)
    for post in popular:
        print(f"    {post['views']:>4} views  {post['title']}")

    show("related: a post's author (outbound) and Ann's posts (inbound)")
    with step(db, "related"):
        authors = db.related(posts[2]["$id"], "author")
        anns = db.related(ann["$id"], "posts", direction="inbound")
    print(f"    author of {posts[2]['title']!r}: {[a['name'] for a in authors]}")
    print(f"    posts by Ann: {[p['title'] for p in anns]}")

    show("history of the first post, oldest first")
    with step(db, "history"):
        history = db.history(posts[0]["$id"])
    for h in history:
        print(f"    {h['op']:<7} v{h['version'] or '-'}  by {h['actor']}")

    if hasattr(db, "flush"):
        show("flush: move the WAL to Parquet files in the archive")
        with step(db, "flush"):
            result = db.flush()
        print(f"    {result.events} events, {result.rel_events} relationship events -> {result.files} Parquet files")

    db.close()
    db = open_store()
    show("restart: a fresh store (as in a new process, caches cold) reads the post back")
    with step(db, "cold get"):
        cold = db.get("posts", sqid(posts[0]))
        as_of_1 = db.get("posts", sqid(posts[0]), as_of=1)
    print("   ", short(cold, "title", "views"))
    print("    as of version 1:", short(as_of_1, "title", "views"))
    db.close()
    if cold != hello:
        print("ERROR: the restarted store did not give back the state the live calls returned")
        return 1

    elapsed = time.perf_counter() - started
    summary = f"\nSummary: {len(STEPS)} steps, {TOTAL.statements} SQL statements, {TOTAL.written} rows written"
    if TOTAL.billed_read is not None:
        summary += f" (billed: {TOTAL.billed_read} rows read, {TOTAL.billed_written} rows written)"
    print(summary + f", {elapsed:.2f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
