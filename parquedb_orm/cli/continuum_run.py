"""The demo's workload on SQLAlchemy-Continuum, in a process of its own.

    python -m parquedb_orm.cli.continuum_run DATABASE_FILE SCALE   # prints the meter as JSON

`make_versioned()` instruments every Session of the process, so the demo runs this module
as a subprocess. Ordinary ORM models (User, Post, Comment, Link, Order), each with
Continuum's version table, its `transaction` table, the default validity strategy.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy_continuum import make_versioned  # type: ignore[import-not-found, import-untyped, unused-ignore]

from parquedb_orm.cli.workload import METER, build, counted_engine

make_versioned(user_cls=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(200))
    bio: Mapped[str] = mapped_column(Text)
    karma: Mapped[int] = mapped_column(Integer)


class Post(Base):
    __tablename__ = "posts"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text)
    views: Mapped[int] = mapped_column(Integer)


class Comment(Base):
    __tablename__ = "comments"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    score: Mapped[int] = mapped_column(Integer)


class Link(Base):
    __tablename__ = "links"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    from_ns: Mapped[str] = mapped_column(String(64))
    from_id: Mapped[int] = mapped_column(Integer)
    predicate: Mapped[str] = mapped_column(String(64))
    to_ns: Mapped[str] = mapped_column(String(64))
    to_id: Mapped[int] = mapped_column(Integer)


class Order(Base):
    __tablename__ = "orders"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    total_cents: Mapped[int] = mapped_column(Integer)


sa.orm.configure_mappers()  # builds the version classes and tables
MODELS: dict[str, type[Base]] = {"users": User, "posts": Post, "comments": Comment, "orders": Order}


def run(path: str, scale: int) -> dict[str, Any]:
    engine = counted_engine(path)
    Base.metadata.create_all(engine)
    session = sessionmaker(engine, expire_on_commit=False)
    ids: dict[str, int] = {}
    METER.install()
    before = METER.snapshot()
    for kind, ns, key, payload in build(scale).ops:
        with session() as s:
            if kind in ("create", "order_create"):
                obj = MODELS[ns](**payload)
                s.add(obj)
                s.commit()
                ids[key] = obj.id  # type: ignore[attr-defined]
            elif kind in ("update", "order_update"):
                found = s.get(MODELS[ns], ids[key])
                changes = payload if kind == "update" else {"$set": payload}
                for op, fields in changes.items():
                    for name, value in fields.items():
                        setattr(found, name, getattr(found, name) + value if op == "$inc" else value)
                s.commit()
            else:
                predicate, to_ns, to_key = payload
                s.add(Link(from_ns=ns, from_id=ids[key], predicate=predicate, to_ns=to_ns, to_id=ids[to_key]))
                s.commit()
    after = METER.snapshot()
    METER.uninstall()
    engine.dispose()
    return {"before": before, "after": after}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]))))
