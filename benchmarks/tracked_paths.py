"""What tracking costs, path by path, in SQL rows (run on demand):

    python -m benchmarks.tracked_paths          # re-runs itself under the faithful meter

Each path runs twice on a fresh SQLite file (WAL journal, synchronous=NORMAL, read back
with PRAGMA): once with the `Order` model untracked (the app's own cost), once tracked
with `pq.track(Order)`. The table gives both and the difference, split into rows read and
rows written as Cloudflare D1 / Turso bill them (faithful: libSQL's counters). 1,000 orders
are seeded first, and one warm-up commit per run loads the namespace's (empty) WAL tail and
its snapshot chunks, as a running app has them.

The SELECT fallback (the path MariaDB/MySQL take for UPDATE, which has no RETURNING there)
is measured on SQLite by giving the statement a RETURNING of its own: the store then leaves
the app's result alone and selects the keys before and the rows after.
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
from sqlalchemy import String, delete, insert, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import parquedb_orm as pq
from parquedb_orm.sql.dialects import create_engine_for

N = 1000


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(20))
    qty: Mapped[int]


def orm_insert_one(s: Session) -> None:
    s.add(Order(id=N + 1, status="new", qty=1))
    s.commit()


def orm_update_one(s: Session) -> None:
    s.get(Order, 1).qty += 1  # type: ignore[union-attr]
    s.commit()


def orm_update_all_one_commit(s: Session) -> None:
    for o in s.scalars(select(Order)):
        o.qty += 1
    s.commit()


def bulk_update_returning(s: Session) -> None:
    s.execute(update(Order).values(qty=Order.qty + 1))
    s.commit()


def bulk_update_selecting(s: Session) -> None:
    s.execute(update(Order).values(qty=Order.qty + 1).returning(Order.id)).all()
    s.commit()


def bulk_update_by_pk(s: Session) -> None:
    s.execute(update(Order), [{"id": i, "qty": 7} for i in range(1, N + 1)])
    s.commit()


def bulk_delete_returning(s: Session) -> None:
    s.execute(delete(Order))
    s.commit()


def bulk_insert_returning(s: Session) -> None:
    s.execute(insert(Order), [{"id": N + i, "status": "new", "qty": 1} for i in range(1, N + 1)])
    s.commit()


def upsert_returning(s: Session) -> None:
    stmt = sqlite_insert(Order).values([{"id": i, "status": "x", "qty": 9} for i in range(1, N + 1)])
    s.execute(stmt.on_conflict_do_update(index_elements=[Order.id], set_={"qty": stmt.excluded.qty}))
    s.commit()


PATHS: list[tuple[str, Callable[[Session], None]]] = [
    ("ORM: insert 1 row", orm_insert_one),
    ("ORM: update 1 row", orm_update_one),
    (f"ORM: update {N:,} rows, one commit", orm_update_all_one_commit),
    (f"bulk update() of {N:,} rows (RETURNING)", bulk_update_returning),
    (f"bulk update() of {N:,} rows (SELECT fallback)", bulk_update_selecting),
    (f"bulk update by primary key, {N:,} rows", bulk_update_by_pk),
    (f"bulk delete() of {N:,} rows (RETURNING)", bulk_delete_returning),
    (f"bulk insert() of {N:,} rows (RETURNING)", bulk_insert_returning),
    (f"upsert of {N:,} rows (RETURNING)", upsert_returning),
]


def run(path: Callable[[Session], None], tracked: bool) -> tuple[int, int, int, str, bool]:
    """(statements, rows read, rows written, journal/sync, faithful) of one path."""
    if tracked:
        pq.track(Order)
    else:
        pq.untrack(Order)
    tmp = Path(tempfile.mkdtemp(prefix="pq-tracked-"))
    engine = create_engine_for(f"sqlite:///{tmp / 'app.db'}")
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    handle = pq.enable(maker)
    try:
        with maker() as s:
            s.execute(insert(Order), [{"id": i, "status": "new", "qty": 0} for i in range(1, N + 1)])
            s.commit()
        with maker() as s:  # warm-up: a running app has the tail and chunks loaded
            s.get(Order, 2).status = "warm"  # type: ignore[union-attr]
            s.commit()
            if tracked:
                pq.store(s).prefetch("orders", [pq.ref(o).split("/")[1] for o in s.scalars(select(Order))])
        with engine.connect() as conn:
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        with maker() as s, meter(engine) as m:
            path(s)
        mode = f"{journal}/{'NORMAL' if sync == 1 else sync}"
        return m.statements, m.rows_read or 0, m.rows_written or 0, mode, m.faithful
    finally:
        handle.close()
        engine.dispose()
        pq.untrack(Order)


def table() -> list[str]:
    out = [
        "| path | untracked: stmts / read / written | tracked: stmts / read / written "
        "| extra rows read | extra rows written | journal/sync |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, path in PATHS:
        base: Any = run(path, False)
        got: Any = run(path, True)
        note = "" if base[4] and got[4] else " (not faithful)"
        out.append(
            f"| {name} | {base[0]} / {base[1]:,} / {base[2]:,} | {got[0]} / {got[1]:,} / {got[2]:,} "
            f"| {got[1] - base[1]:,} | {got[2] - base[2]:,}{note} | {got[3]} |"
        )
    return out


def main() -> None:
    if os.environ.get("PARQUEDB_METERED") != "1":
        env = {**metered_env(), "PARQUEDB_METERED": "1"}
        raise SystemExit(subprocess.run([sys.executable, "-m", "benchmarks.tracked_paths"], env=env).returncode)
    print("\n".join(table()))


if __name__ == "__main__":
    main()
