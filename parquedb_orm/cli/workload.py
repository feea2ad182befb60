"""The demo's workload and its meter, shared by every system the demo runs.

The workload is a small blog: users, posts, comments, links (post -> author, comment ->
post, comment -> author), updates (post views, user bios) and orders of a tracked ORM model
(created, then paid, then shipped). Each operation is one commit, as an application makes
them. It is generated from a fixed seed, so each system (and the Continuum worker process)
runs exactly the same operations.

The meter counts what SQLAlchemy can see of every statement on any engine of this process:
statements (transaction control left out), rows written as the driver reports them
(inserted rows and the rowcount of UPDATE / DELETE; index entries not included) and rows
returned to the client (every row fetched from a cursor). When the development row meter
(`parquedb_meter`, tools/meter) is importable with its counting SQLite library loaded, its
exact rows read and rows written (as SQLite counts them, index entries included) are taken
too.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine, create_engine, event

#: an op: (kind, namespace, key, payload); keys name entities across systems
Op = tuple[str, str, str, Any]

NAMESPACES = ("users", "posts", "comments")
ORDERS = "orders"


@dataclass(frozen=True)
class Workload:
    users: int
    posts: int
    comments: int
    orders: int
    updates: int
    ops: list[Op] = field(repr=False)

    def counts(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for kind, ns, _key, _payload in self.ops:
            name = {
                "create": f"create {ns}",
                "update": f"update {ns}",
                "link": "link",
                "order_create": "create orders (tracked ORM model)",
                "order_update": "update orders (tracked ORM model)",
            }[kind]
            kinds[name] = kinds.get(name, 0) + 1
        return kinds


def build(scale: int = 1, seed: int = 14) -> Workload:
    """`scale` 1: 10 users, 20 posts, 40 comments, 100 links, 50 updates, 10 orders x 3
    changes (250 commits)."""
    rng = random.Random(seed)
    n_users, n_posts, n_comments, n_orders = 10 * scale, 20 * scale, 40 * scale, 10 * scale
    ops: list[Op] = []
    for i in range(n_users):
        ops.append(
            (
                "create",
                "users",
                f"u{i}",
                {"name": f"user {i}", "email": f"user{i}@example.com", "bio": "hello", "karma": 0},
            )
        )
    for i in range(n_posts):
        author = f"u{rng.randrange(n_users)}"
        ops.append(("create", "posts", f"p{i}", {"title": f"post {i}", "body": "lorem ipsum " * 8, "views": 0}))
        ops.append(("link", "posts", f"p{i}", ("author", "users", author)))
    for i in range(n_comments):
        post, author = f"p{rng.randrange(n_posts)}", f"u{rng.randrange(n_users)}"
        ops.append(("create", "comments", f"c{i}", {"body": f"comment {i}", "score": 0}))
        ops.append(("link", "comments", f"c{i}", ("on", "posts", post)))
        ops.append(("link", "comments", f"c{i}", ("author", "users", author)))
    n_updates = 0
    for i in range(n_posts * 2):
        ops.append(("update", "posts", f"p{rng.randrange(n_posts)}", {"$inc": {"views": 1 + i % 5}}))
        n_updates += 1
    for i in range(n_users):
        ops.append(("update", "users", f"u{i}", {"$set": {"bio": f"bio of user {i}, edited"}}))
        n_updates += 1
    for i in range(n_orders):
        ops.append(("order_create", ORDERS, f"o{i}", {"status": "new", "total_cents": 1000 + 37 * i}))
    for status in ("paid", "shipped"):
        for i in range(n_orders):
            ops.append(("order_update", ORDERS, f"o{i}", {"status": status}))
    rng.shuffle(ops[-2 * n_orders :])  # interleave the orders' updates
    return Workload(n_users, n_posts, n_comments, n_orders, n_updates, ops)


# --------------------------------------------------------------------------- meter


class CountingCursor(sqlite3.Cursor):
    """Counts the rows a client fetches (SQLite itself does not say for a SELECT)."""

    def fetchone(self) -> Any:
        row = super().fetchone()
        if row is not None:
            METER.add_returned(1)
        return row

    def fetchmany(self, size: int | None = None) -> list[Any]:
        rows = super().fetchmany(size) if size is not None else super().fetchmany()
        METER.add_returned(len(rows))
        return rows

    def fetchall(self) -> list[Any]:
        rows = super().fetchall()
        METER.add_returned(len(rows))
        return rows


class CountingConnection(sqlite3.Connection):
    def cursor(self, factory: Any = CountingCursor) -> Any:
        return super().cursor(factory)


_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")
_DML = ("INSERT", "UPDATE", "DELETE", "REPLACE", "WITH")


class Meter:
    """Process-wide counters (one system runs at a time): listeners on the Engine class,
    so the store's side engines are counted too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.statements = 0
        self.rows_written = 0
        self.rows_returned = 0
        self._exact: Any = None  # parquedb_meter.EngineMeter on the Engine class, when faithful
        self._installed = False

    def add_returned(self, n: int) -> None:
        with self._lock:
            self.rows_returned += n

    def install(self) -> Meter:
        if not self._installed:
            event.listen(Engine, "after_cursor_execute", self._after)
            self._installed = True
            self._exact = _faithful_meter()
        return self

    def uninstall(self) -> None:
        if self._installed:
            event.remove(Engine, "after_cursor_execute", self._after)
            self._installed = False
        if self._exact is not None:
            self._exact.uninstall()
            self._exact = None

    @property
    def exact(self) -> bool:
        return self._exact is not None

    def _after(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        head = statement.lstrip()[:10].upper()
        if head.startswith(_CONTROL):
            return
        rowcount = getattr(cursor, "rowcount", -1)
        with self._lock:
            self.statements += 1
            if head.startswith(_DML) and isinstance(rowcount, int) and rowcount > 0:
                self.rows_written += rowcount

    def snapshot(self) -> dict[str, int | None]:
        with self._lock:
            snap: dict[str, int | None] = {
                "statements": self.statements,
                "rows_written": self.rows_written,
                "rows_returned": self.rows_returned,
                "exact_rows_read": None,
                "exact_rows_written": None,
            }
        if self._exact is not None:
            exact = self._exact.meter.snapshot()
            snap["exact_rows_read"] = exact["rows_read"]
            snap["exact_rows_written"] = exact["rows_written"]
        return snap


def _faithful_meter() -> Any:
    try:
        import parquedb_meter  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    if not parquedb_meter.faithful_available():
        return None
    from types import SimpleNamespace

    # its constructor reads engine.dialect.name; then the Engine class: every engine of the process
    fake: Any = SimpleNamespace(dialect=SimpleNamespace(name="sqlite"))
    exact = parquedb_meter.EngineMeter(fake, max_records=0)
    exact.engine = cast(Any, Engine)
    return exact.install()


def delta(after: dict[str, int | None], before: dict[str, int | None]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for key, value in after.items():
        was = before.get(key)
        out[key] = None if value is None or was is None else value - was
    return out


METER = Meter()


def counted_engine(path: str) -> Engine:
    """A SQLite file engine whose cursors count fetched rows, with the store's settings
    (WAL, synchronous=NORMAL, busy timeout), for every system alike."""
    from parquedb_orm.engine.setup import sqlite_settings

    engine = create_engine(f"sqlite:///{path}", connect_args={"factory": CountingConnection})
    return sqlite_settings(engine)
