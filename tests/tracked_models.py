"""The application models the tracked-model tests use (importable by a fresh process)."""

from __future__ import annotations

import enum
import json
import sys
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Column, ForeignKey, Numeric, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import parquedb_orm as pq


class Base(DeclarativeBase):
    pass


class Status(enum.Enum):
    new = "n"
    paid = "p"
    shipped = "s"


order_tags = Table(
    "t_order_tags",
    Base.metadata,
    Column("order_id", ForeignKey("t_orders.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("t_tags.id", ondelete="CASCADE"), primary_key=True),
)


class Customer(pq.Tracked, Base):
    __tablename__ = "t_customers"
    __pq_namespace__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(50))
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Tag(pq.Tracked, Base):
    __tablename__ = "t_tags"
    __pq_namespace__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(20))


class Order(pq.Tracked, Base):
    __tablename__ = "t_orders"
    __pq_namespace__ = "orders"
    __pq_exclude__ = ("secret",)
    __pq_rename__ = {"version": "row_version"}
    id: Mapped[int] = mapped_column(primary_key=True)
    qty: Mapped[int]
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2), default=Decimal("0.00"))
    status: Mapped[Status] = mapped_column(default=Status.new)
    secret: Mapped[str] = mapped_column(String(20), default="s3cret")
    version: Mapped[int] = mapped_column(default=1)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("t_customers.id"))
    customer: Mapped[Customer | None] = relationship(back_populates="orders")
    tags: Mapped[list[Tag]] = relationship(secondary=order_tags)


class Shelf(pq.Tracked, Base):
    """A one-to-many relationship declared only on the parent."""

    __tablename__ = "t_shelves"
    __pq_namespace__ = "shelves"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    books: Mapped[list[Book]] = relationship()


class Book(pq.Tracked, Base):
    __tablename__ = "t_books"
    __pq_namespace__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(50))
    shelf_id: Mapped[int | None] = mapped_column(ForeignKey("t_shelves.id"))


class Line(pq.Tracked, Base):
    """A composite primary key."""

    __tablename__ = "t_lines"
    __pq_namespace__ = "lines"
    order_no: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    line_no: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    sku: Mapped[str] = mapped_column(String(20))


class Account(Base):
    """String and UUID keys, tracked with pq.track() (no mixin)."""

    __tablename__ = "t_accounts"
    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    token: Mapped[uuid.UUID] = mapped_column(default=uuid.uuid4)
    opened: Mapped[datetime | None]


pq.track(Account, namespace="accounts")


class Untracked(Base):
    __tablename__ = "t_untracked"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20))


def plain(value: Any) -> Any:
    """A JSON-able rendering of history values, for comparing across processes."""
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (Decimal, uuid.UUID, datetime)):
        return str(value)
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def history_json(session: Any, model: type, pk: Any) -> list[Any]:
    return [[v.op, v.version, v.actor, plain(v.changes), v.meta] for v in pq.history(session, model, pk)]


def _key(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


if __name__ == "__main__":  # a fresh process: print one row's history as JSON
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    url, archive, model_name, key = sys.argv[1:5]
    engine = create_engine(url)
    maker = sessionmaker(engine)
    handle = pq.enable(maker, archive=archive, policy=pq.FlushPolicy(mode="manual"))
    with maker() as s:
        print(json.dumps(history_json(s, globals()[model_name], _key(json.loads(key)))))
    handle.close()
    engine.dispose()
