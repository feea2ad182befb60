"""An audit log on an ordinary SQLAlchemy model, with `pq.Tracked`.

Run it after `pip install -e .`:

    python examples/audit_log.py [--db audit.db] [--archive audit-archive]

The app below is plain SQLAlchemy: a declarative `Order` and `Customer`, a sessionmaker,
sessions that add, change and delete rows, one bulk UPDATE. The only parquedb lines are
`pq.Tracked` in the bases, `pq.enable(Session, ...)`, the actor, and the history calls
at the end. Every change is an event committed with the row (one WAL row per namespace
per commit, not one audit row per change), archived to Parquet by `handle.flush()`.
"""

from __future__ import annotations

import argparse
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import ForeignKey, Numeric, String, create_engine, func, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

import parquedb_orm as pq
from parquedb_orm.sql.models import EventsWal, RelsWal


class Base(DeclarativeBase):
    pass


class Customer(pq.Tracked, Base):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Order(pq.Tracked, Base):
    __tablename__ = "orders"
    __pq_exclude__ = ("card_token",)  # never leaves the app's own table
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="new")
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    card_token: Mapped[str | None] = mapped_column(String(64))
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"))
    customer: Mapped[Customer | None] = relationship(back_populates="orders")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="audit.db", help="SQLite file (recreated on every run)")
    parser.add_argument("--archive", default="audit-archive", help="archive folder (recreated)")
    args = parser.parse_args()
    Path(args.db).unlink(missing_ok=True)
    shutil.rmtree(args.archive, ignore_errors=True)

    engine = create_engine(f"sqlite:///{args.db}")
    Base.metadata.create_all(engine)
    Session = sessionmaker(engine, expire_on_commit=False)
    handle = pq.enable(Session, archive=args.archive, policy=pq.FlushPolicy(mode="manual"))

    with Session() as s, pq.acting_as(s, "alice", remote_addr="203.0.113.7"):
        ann = Customer(name="Ann")
        order = Order(total=Decimal("19.90"), card_token="tok_secret", customer=ann)
        s.add(order)
        s.commit()
        order.status = "paid"
        s.commit()
        paid_at = datetime.now(UTC)
        s.add_all([Order(total=Decimal(n), customer=ann) for n in ("5.00", "7.50", "12.00")])
        s.commit()

    with Session() as s:
        s.info["actor"] = "billing-job"
        # a bulk statement: recorded too, one event per row it changed
        result = s.execute(update(Order).where(Order.status == "new").values(status="cancelled"))
        s.commit()
        print(f"bulk update changed {result.rowcount} orders")

    with Session() as s:
        s.info["actor"] = "bob"
        order = s.get(Order, 1)
        assert order is not None
        order.total = Decimal("17.90")
        s.commit()
        print(f"\nHistory of order 1 (newest first), {len(pq.history(s, order))} entries:")
        for v in pq.history(s, order):
            where = f" from {v.meta['remote_addr']}" if v.meta else ""
            print(f"  v{v.version} {v.op:<6} by {v.actor}{where}: {v.changes}")
        then = pq.as_of(s, Order, 1, at=paid_at)
        print(f"\nOrder 1 as of when it was paid: status={then.status}, total={then.total}")
        pq.revert(s, order, to=1)
        s.commit()
        print(f"Reverted to version 1: status={order.status}, total={order.total} (a new version, "
              f"v{pq.history(s, order)[0].version}; history is never rewritten)")
        related = pq.store(s).related(pq.ref(ann := s.get(Customer, 1)), "orders", direction="inbound")  # type: ignore[arg-type]
        print(f"{ann.name} has {len(related)} orders, found through the relationship events")  # type: ignore[union-attr]

    with engine.connect() as conn:
        wal_rows = 0
        events = 0
        for table in (EventsWal, RelsWal):
            wal_rows += conn.execute(select(func.count()).select_from(table)).scalar_one()
            events += conn.execute(select(func.coalesce(func.sum(table.event_count), 0))).scalar_one()
    print(f"\n{events} events and links in {wal_rows} WAL rows (an audit table would have written {events} rows)")
    result = handle.flush()
    print(f"flushed {result.events} events and {result.rel_events} links to {args.archive}/; read with DuckDB:")
    query = (
        "SELECT coalesce(data->>'$.id', data->>'$.\"$set\".id') AS order_id, version, op, actor, meta "
        "FROM events WHERE ns = 'orders' ORDER BY seq"
    )
    print(f"  {query}")
    for row in handle.duckdb().execute(query).fetchall():
        print("   ", row)
    handle.close()
    engine.dispose()


if __name__ == "__main__":
    main()
