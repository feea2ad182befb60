"""Rows per commit of the session extension, pattern by pattern (run on demand):

    python -m benchmarks.session_patterns            # re-runs itself under the faithful meter

Each pattern runs in a SQLAlchemy session on a fresh SQLite file (WAL journal,
synchronous=NORMAL, checked below) with one app model, and is measured from the session's
first statement to the end of its transaction. Columns: app rows the pattern commits,
store events it commits, WAL rows written, SQL statements, and rows read / written as
Cloudflare D1 / Turso bill them (faithful: SQLite with libSQL's counters). The app's own
INSERTs are in the statement and row counts; "store rows" subtracts them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parquedb_meter import meter, metered_env
from sqlalchemy import Engine, String, event, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import parquedb_orm as pq
from parquedb_orm.sql.dialects import create_engine_for
from parquedb_orm.sql.models import EventsWal, RelsWal


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    item: Mapped[str] = mapped_column(String(50))


Pattern = Callable[[Session, sessionmaker[Session]], tuple[int, int]]  # -> (app rows, store events) committed


def one_create(s: Session, _m: Any) -> tuple[int, int]:
    pq.store(s).create("posts", {"name": "p"})
    s.add(Order(id=1, item="x"))
    s.commit()
    return 1, 1


def create_update_link(s: Session, _m: Any) -> tuple[int, int]:
    st = pq.store(s)
    a, b = st.create("posts", {"n": 0}), st.create("users", {"n": 0})
    st.update("posts", a["$id"].split("/")[1], {"$inc": {"n": 1}})
    st.link(a["$id"], "author", b["$id"])
    s.add(Order(id=1, item="x"))
    s.commit()
    return 1, 4


def events_250(s: Session, _m: Any) -> tuple[int, int]:
    st = pq.store(s)
    posts = [st.create("posts", {"n": i}) for i in range(200)]
    users = [st.create("users", {"n": i}) for i in range(25)]
    for i in range(25):
        st.link(posts[i]["$id"], "author", users[i]["$id"])
    s.add(Order(id=1, item="x"))
    s.commit()
    return 1, 250


def before_flush_mirror(s: Session, maker: sessionmaker[Session]) -> tuple[int, int]:
    def mirror(session: Session, _c: Any, _i: Any) -> None:
        for obj in session.new:
            pq.store(session).create("mirrors", {"order": obj.id})

    event.listen(maker, "before_flush", mirror)
    try:
        for i in range(3):
            s.add(Order(id=i + 1, item="x"))
        s.commit()  # the listener runs inside the commit's own flush
    finally:
        event.remove(maker, "before_flush", mirror)
    return 3, 3


def savepoint_released(s: Session, _m: Any) -> tuple[int, int]:
    st = pq.store(s)
    s.add(Order(id=1, item="x"))
    s.flush()
    st.create("posts", {"n": 0})
    with s.begin_nested():
        st.create("posts", {"n": 1})
    s.commit()
    return 1, 2


def savepoint_rolled_back(s: Session, _m: Any) -> tuple[int, int]:
    st = pq.store(s)
    s.add(Order(id=1, item="x"))
    s.flush()
    st.create("posts", {"n": 0})
    sp = s.begin_nested()
    st.create("posts", {"n": 1})
    s.add(Order(id=2, item="y"))
    sp.rollback()
    s.commit()
    return 1, 1


def two_levels(s: Session, _m: Any) -> tuple[int, int]:
    st = pq.store(s)
    s.add(Order(id=1, item="x"))
    s.flush()
    st.create("posts", {"n": 0})
    with s.begin_nested():
        st.create("posts", {"n": 1})
        inner = s.begin_nested()
        st.create("posts", {"n": 2})
        inner.rollback()
    s.commit()
    return 1, 2


def rollback_after_sql(s: Session, _m: Any) -> tuple[int, int]:
    pq.store(s).create("posts", {"n": 0})
    s.add(Order(id=1, item="x"))
    s.flush()
    s.rollback()
    return 0, 0


def close_before_sql(s: Session, _m: Any) -> tuple[int, int]:
    pq.store(s).create("posts", {"n": 0})
    s.close()
    return 0, 0


PATTERNS: list[tuple[str, Pattern]] = [
    ("1 create + 1 app row, commit", one_create),
    ("create, create, update, link + 1 app row", create_update_link),
    ("250 events in 2 namespaces + 1 app row", events_250),
    ("before_flush listener mirrors 3 app rows during commit", before_flush_mirror),
    ("savepoint released", savepoint_released),
    ("savepoint rolled back (outer event kept)", savepoint_rolled_back),
    ("2 levels: inner rolled back, outer released", two_levels),
    ("rollback after SQL", rollback_after_sql),
    ("close before SQL", close_before_sql),
]


def wal_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return sum(int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in (EventsWal, RelsWal))


def main() -> None:
    if os.environ.get("PARQUEDB_METERED") != "1":
        env = {**metered_env(), "PARQUEDB_METERED": "1"}
        raise SystemExit(subprocess.run([sys.executable, "-m", "benchmarks.session_patterns"], env=env).returncode)
    rows = []
    for name, pattern in PATTERNS:
        tmp = Path(tempfile.mkdtemp(prefix="pq-session-"))
        engine = create_engine_for(f"sqlite:///{tmp / 'app.db'}")
        Base.metadata.create_all(engine)
        maker = sessionmaker(engine)
        handle = pq.enable(maker)
        with maker() as s:  # warm: the namespaces' first commit loads their (empty) tails
            for ns in ("posts", "users", "mirrors"):
                pq.store(s).create(ns, {"warm": True})
            s.commit()
        with engine.connect() as conn:
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        before = wal_rows(engine)
        with maker() as s, meter(engine) as m:
            app_rows, events = pattern(s, maker)
        app_inserts = len([r for r in m.records if r.sql.lstrip().upper().startswith("INSERT INTO ORDERS")])
        rows.append((name, app_rows, events, wal_rows(engine) - before, m.statements, m.rows_read, m.rows_written,
                     app_inserts, f"{journal}/{'NORMAL' if sync == 1 else sync}", m.faithful))
        handle.close()
        engine.dispose()
    print("| pattern | app rows | store events | WAL rows | statements | rows read | rows written | journal/sync |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, app, ev, walr, stmts, read, written, _app_ins, js, faithful in rows:
        note = "" if faithful else " (not faithful)"
        print(f"| {name} | {app} | {ev} | {walr} | {stmts} | {read} | {written}{note} | {js} |")
    print("\nrows written include the app's own rows (1 per app INSERT here: orders has no secondary index)")


if __name__ == "__main__":
    main()
