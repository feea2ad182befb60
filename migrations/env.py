"""Alembic environment of parquedb_orm.

Used by `parquedb upgrade ...`, `parquedb_orm.migrate.upgrade(...)` and `alembic upgrade head`
run from the repository root. The database URL, first match wins:
an Engine/Connection handed over by parquedb_orm.sql.migrations, `-x url=...`, $PARQUEDB_URL,
`sqlalchemy.url` of alembic.ini, `sqlite:///parquedb.db`.

Each revision runs in its own transaction (transaction_per_migration), so an interrupted
upgrade leaves the database at the last completed revision. PostgreSQL has transactional
DDL; on SQLite we make it real (see _sqlite_transactional_ddl); on MySQL/MariaDB every DDL
statement commits implicitly (docs/migrations.md says what that means).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from sqlalchemy import event
from sqlalchemy.engine import Connection

from parquedb_orm.sql.autogen import include_ours
from parquedb_orm.sql.migrations import VERSION_TABLE
from parquedb_orm.sql.models import metadata as target_metadata

config = context.config

if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    x = context.get_x_argument(as_dictionary=True)
    return (
        x.get("url")
        or os.environ.get("PARQUEDB_URL")
        or config.get_main_option("sqlalchemy.url")
        or "sqlite:///parquedb.db"
    )


def _options(dialect_name: str) -> dict[str, object]:
    return {
        "target_metadata": target_metadata,
        "version_table": VERSION_TABLE,
        "transaction_per_migration": True,
        "include_name": include_ours,  # the database may hold the app's tables too
        "render_as_batch": dialect_name == "sqlite",  # for future ALTERs on SQLite
        "compare_type": True,
    }


@contextmanager
def _sqlite_transactional_ddl(conn: Connection) -> Iterator[bool]:
    """Make pysqlite run DDL inside our transactions; yields whether it does.

    pysqlite only opens a transaction before INSERT/UPDATE/DELETE, so a CREATE or DROP
    would commit on its own and a failed revision could not be rolled back. The known
    workaround: switch its implicit BEGIN off and emit BEGIN ourselves whenever
    SQLAlchemy begins a transaction.

    Some engines already do exactly that (SQLAlchemy's pysqlite savepoint recipe: a
    `connect` listener setting `isolation_level = None` and a `begin` listener emitting
    BEGIN), and a second BEGIN would fail ("cannot start a transaction within a
    transaction"). Our listener would run before the engine's (connection listeners come
    first), so we ask first: begin once, see whether the driver is then in a transaction,
    roll back. If it is, the engine's BEGIN makes DDL transactional and we add nothing.
    Otherwise (the default engine, `isolation_level="AUTOCOMMIT"`) we emit BEGIN. Scoped to
    this connection and undone afterwards, so a caller's Engine is left as it was.
    """
    if conn.dialect.name != "sqlite" or conn.dialect.driver != "pysqlite" or conn.in_transaction():
        yield False
        return
    dbapi_conn = conn.connection.driver_connection
    conn.begin()
    engine_begins = bool(getattr(dbapi_conn, "in_transaction", False))
    conn.rollback()
    if engine_begins:
        try:
            yield True
        finally:
            if conn.in_transaction():
                conn.rollback()
        return

    saved = dbapi_conn.isolation_level  # type: ignore[union-attr]
    dbapi_conn.isolation_level = None  # type: ignore[union-attr]

    def begin(c: Connection) -> None:
        c.exec_driver_sql("BEGIN")

    event.listen(conn, "begin", begin)
    try:
        yield True
    finally:
        event.remove(conn, "begin", begin)
        if conn.in_transaction():
            conn.rollback()
        dbapi_conn.isolation_level = saved  # type: ignore[union-attr]


def _run(conn: Connection) -> None:
    with _sqlite_transactional_ddl(conn) as ddl_in_transaction:
        context.configure(
            connection=conn,
            transactional_ddl=True if ddl_in_transaction else None,  # None: the dialect's own answer
            **_options(conn.dialect.name),  # type: ignore[arg-type]
        )
        with context.begin_transaction():
            context.run_migrations()


def run_migrations_offline() -> None:
    url = _url()
    context.configure(url=url, literal_binds=True, **_options(sa.make_url(url).get_backend_name()))  # type: ignore[arg-type]
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    engine = sa.create_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
