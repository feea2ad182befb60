"""A Flask-SQLAlchemy app with the session extension, as apps use it: `db.session` (a
scoped_session) enabled once at start-up, 16 threads serving 200 requests, some of which
raise. The store must end up with exactly the committed app rows, no more, no less.

Runs on a SQLite file, PostgreSQL and MariaDB. Not on in-memory SQLite: that database is one
connection, which 16 threads cannot share transaction by transaction (docs/concepts.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import reset_schema, server_url
from sqlalchemy import String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import parquedb_orm as pq
from parquedb_orm.sql.models import EventsWal

flask = pytest.importorskip("flask")
flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")

THREADS = 16
REQUESTS = 200


@pytest.fixture(params=["sqlite-file", "postgresql", "mysql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite-file":
        yield f"sqlite:///{tmp_path / 'app.db'}"
        return
    url = server_url(request.param)
    engine = create_engine(url)
    reset_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS flask_orders")
    engine.dispose()
    yield url
    engine = create_engine(url)
    reset_schema(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS flask_orders")
    engine.dispose()


def test_flask_sqlalchemy_threads_store_equals_committed_rows(url: str) -> None:
    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    if url.startswith("sqlite"):
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"timeout": 60}}
    class Base(DeclarativeBase):  # one per run: each run declares its own model
        pass

    db = flask_sqlalchemy.SQLAlchemy(app, model_class=Base)

    class FlaskOrder(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "flask_orders"
        id: Mapped[int] = mapped_column(primary_key=True)
        item: Mapped[str] = mapped_column(String(50))

    @app.post("/orders/<int:n>")
    def order(n: int) -> Any:
        row = FlaskOrder(item=f"item{n}")
        db.session.add(row)
        db.session.flush()
        store = pq.store(db.session)
        made = store.create("orders", {"order_id": row.id, "n": n})
        if n % 3 == 0:
            with db.session.begin_nested():  # a released savepoint
                store.update("orders", made["$id"].split("/")[1], {"$set": {"checked": True}})
        if n % 7 == 0:
            raise RuntimeError(f"request {n} fails after writing")  # teardown rolls it back
        if n % 11 == 0:
            sp = db.session.begin_nested()
            store.create("orders", {"order_id": -1, "n": n})  # rolled back with its savepoint
            sp.rollback()
        db.session.commit()
        return {"id": made["$id"]}

    with app.app_context():
        db.create_all()
        handle = pq.enable(db.session)
    statuses: list[int] = []
    lock = threading.Lock()
    todo = list(range(1, REQUESTS + 1))

    def worker() -> None:
        client = app.test_client()
        while True:
            with lock:
                if not todo:
                    return
                n = todo.pop()
            status = client.post(f"/orders/{n}").status_code
            with lock:
                statuses.append(status)

    try:
        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failing = {n for n in range(1, REQUESTS + 1) if n % 7 == 0}
        assert sorted(statuses) == sorted([200] * (REQUESTS - len(failing)) + [500] * len(failing))
        with app.app_context():
            committed = {(r.id, int(r.item[4:])) for r in db.session.scalars(select(FlaskOrder))}
            wal_rows = db.session.scalar(select(func.count()).select_from(EventsWal))
            db.session.remove()
        assert {n for _id, n in committed} == set(range(1, REQUESTS + 1)) - failing
        # one WAL row per committed request (its create, and its update when it had one)
        assert wal_rows == len(committed)
        found = {(d["order_id"], d["n"]) for d in handle.find("orders")}
        assert found == committed
        assert all(d.get("checked") is True for d in handle.find("orders") if d["n"] % 3 == 0)
    finally:
        handle.close()
    with app.app_context():
        cold = pq.ParqueDB(db.engine.execution_options())  # another process's view: cold caches
        try:
            assert {(d["order_id"], d["n"]) for d in cold.find("orders")} == committed
        finally:
            cold.close()
            db.session.remove()
        db.engine.dispose()
