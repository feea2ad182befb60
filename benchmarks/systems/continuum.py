"""SQLAlchemy-Continuum on ordinary ORM models: User, Post, Comment and a Link association,
each with its version table (`*_version`) plus Continuum's `transaction` table.

Continuum's defaults: the `validity` strategy (each new version row closes the previous
one by setting its `end_transaction_id`), indexes on the version tables as it builds
them. Sensible indexes on the live tables: `posts.views` (find), the Link association's
unique (from_ns, from_id, predicate, to_ns, to_id) for outbound and (to_ns, to_id,
predicate) for inbound queries. Every operation is one session / commit; no cache across
sessions (the ORM's identity map lives one session).

Continuum instruments every Session class of the process (`make_versioned`), so this
module is only imported in the worker process that runs this system.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Index, Integer, String, Text, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy_continuum import make_versioned

from benchmarks.systems import BenchSystem, Doc, Handle

make_versioned(user_cls=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(200))
    bio: Mapped[str] = mapped_column(Text)


class Post(Base):
    __tablename__ = "posts"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str | None] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text)
    views: Mapped[int] = mapped_column(Integer, index=True)


class Comment(Base):
    __tablename__ = "comments"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str | None] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)


class Link(Base):
    """The link association: (from entity, predicate, to entity)."""

    __tablename__ = "links"
    __versioned__: dict[str, Any] = {}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    from_ns: Mapped[str] = mapped_column(String(64))
    from_id: Mapped[int] = mapped_column(Integer)
    predicate: Mapped[str] = mapped_column(String(128))
    to_ns: Mapped[str] = mapped_column(String(64))
    to_id: Mapped[int] = mapped_column(Integer)
    __table_args__ = (
        Index("ux_links_out", "from_ns", "from_id", "predicate", "to_ns", "to_id", unique=True),
        Index("ix_links_in", "to_ns", "to_id", "predicate"),
    )


sa.orm.configure_mappers()  # builds the version classes and tables

MODELS: dict[str, type[Base]] = {"users": User, "posts": Post, "comments": Comment}
FIELDS: dict[str, tuple[str, ...]] = {
    "users": ("name", "email", "bio"),
    "posts": ("title", "body", "views"),
    "comments": ("body",),
}


class System(BenchSystem):
    name = "continuum"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.url = f"sqlite:///{workdir / 'continuum.db'}"
        self.engine: Engine | None = None
        self.Session: sessionmaker[Any] | None = None

    def _connect(self) -> None:
        from benchmarks.systems import sqlite_pragmas  # the same settings as every other system

        self.engine = create_engine(self.url)
        sqlite_pragmas(self.engine)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    def open(self) -> None:
        self._connect()
        assert self.engine is not None
        Base.metadata.create_all(self.engine)
        self.notes.append("validity strategy (default); index on posts.views; Link association indexed "
                          "both ways")

    def restart(self) -> None:
        assert self.engine is not None
        self.engine.dispose()
        self._connect()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    # -- writes ----------------------------------------------------------------
    @staticmethod
    def _obj(ns: str, data: Doc) -> Base:
        model = MODELS[ns]
        kwargs = {k: v for k, v in data.items() if k != "$type"}
        return model(type=data.get("$type"), **kwargs)

    def bulk_create(self, ns: str, items: list[Doc]) -> list[Handle]:
        assert self.Session is not None
        objs = [self._obj(ns, d) for d in items]
        with self.Session() as s:
            s.add_all(objs)
            s.commit()
        return [o.id for o in objs]  # type: ignore[attr-defined]

    def create(self, ns: str, data: Doc) -> Handle:
        return self.bulk_create(ns, [data])[0]

    def update(self, ns: str, handle: Handle, update: Doc) -> None:
        assert self.Session is not None
        with self.Session() as s:
            obj = s.get(MODELS[ns], handle)
            assert obj is not None
            for op, fields in update.items():
                for k, v in fields.items():
                    setattr(obj, k, getattr(obj, k) + v if op == "$inc" else v)
            s.commit()

    def link(self, from_ns: str, from_handle: Handle, predicate: str, to_ns: str, to_handle: Handle) -> None:
        assert self.Session is not None
        with self.Session() as s:
            s.add(Link(from_ns=from_ns, from_id=from_handle, predicate=predicate, to_ns=to_ns, to_id=to_handle))
            s.commit()

    # -- reads -----------------------------------------------------------------
    @staticmethod
    def _doc(ns: str, obj: Any) -> Doc:
        return {f: getattr(obj, f) for f in FIELDS[ns]}

    def get(self, ns: str, handle: Handle) -> Doc | None:
        assert self.Session is not None
        with self.Session() as s:
            obj = s.get(MODELS[ns], handle)
            return None if obj is None else self._doc(ns, obj)

    def related(self, ns: str, handle: Handle, predicate: str, direction: str) -> list[Doc]:
        assert self.Session is not None
        with self.Session() as s:
            if direction == "outbound":
                pairs = s.execute(
                    select(Link.to_ns, Link.to_id).where(
                        Link.from_ns == ns, Link.from_id == handle, Link.predicate == predicate
                    )
                ).all()
            else:
                pairs = s.execute(
                    select(Link.from_ns, Link.from_id).where(
                        Link.to_ns == ns, Link.to_id == handle, Link.predicate == predicate
                    )
                ).all()
            by_ns: dict[str, list[int]] = {}
            for other_ns, other_id in pairs:
                by_ns.setdefault(other_ns, []).append(other_id)
            out: list[Doc] = []
            for other_ns, ids in by_ns.items():
                model = MODELS[other_ns]
                out += [self._doc(other_ns, o) for o in s.scalars(select(model).where(model.id.in_(ids)))]  # type: ignore[attr-defined]
            return out

    def find(self, ns: str, field: str, gt: int, limit: int) -> list[Doc]:
        assert self.Session is not None
        model = MODELS[ns]
        col = getattr(model, field)
        with self.Session() as s:
            rows = s.scalars(select(model).where(col > gt).order_by(col.desc()).limit(limit))
            return [self._doc(ns, o) for o in rows]
