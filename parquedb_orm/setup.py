"""Preparing a database for the store: tables, the process runtime, archive and flushing."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, inspect

from .archive import Archive
from .errors import ConfigurationError
from .models import metadata
from .policy import FlushPolicy, Scheduler
from .runtime import Runtime


def ensure_schema(engine: Engine) -> None:
    """Bring the database to our newest revision with the packaged migrations.

    A fresh database is created by running them (so it is recorded in
    `parquedb_alembic_version` like any upgraded one); one at an older revision is
    upgraded. A legacy database that never ran them is refused with the command to run:
    its data must be moved on purpose (see docs/migrations.md)."""
    from . import migrate

    tables = set(inspect(engine).get_table_names())
    if migrate.VERSION_TABLE in tables:
        if set(migrate.current(engine)) != set(migrate.heads()):
            migrate.upgrade(engine)
        return
    legacy = tables & {"event_batches", "relationships"}
    ours = tables & set(metadata.tables)
    if legacy:
        raise ConfigurationError(
            f"this database has the legacy parquedb layout ({', '.join(sorted(legacy))}) but no "
            "migration record: run `alembic -x url=<url> stamp pq0001` then `parquedb upgrade <url>` "
            "(docs/migrations.md)"
        )
    if ours and ours != set(metadata.tables):
        raise ConfigurationError(
            f"this database has some of parquedb's tables ({', '.join(sorted(ours))}) but no migration "
            "record: stamp the revision it is at, then run `parquedb upgrade <url>`"
        )
    if ours:  # made by metadata.create_all: the newest layout, record it as such
        migrate.stamp(engine, "heads")
        return
    migrate.upgrade(engine)


def _ensure_schema_retrying(engine: Engine, attempts: int = 8) -> None:
    """Several processes opening a fresh database at once race to create the schema; the
    losers fail on "already exists" or a lock. Retry: they then find it done."""
    import random
    import time

    for attempt in range(attempts):
        try:
            ensure_schema(engine)
            return
        except ConfigurationError:
            raise
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (2**attempt) * (1 + random.random()))


def prepare(
    engine: Engine,
    *,
    archive: str | os.PathLike[str] | Archive | None = None,
    policy: FlushPolicy | None = None,
    shared: bool = False,
    create_tables: bool = True,
    archive_options: dict[str, Any] | None = None,
) -> Runtime:
    """The runtime of `engine` in this process, with its archive and flush policy set up."""
    from .session import runtime_for

    if policy is not None and not isinstance(policy, FlushPolicy):
        raise ConfigurationError(f"policy must be a parquedb_orm.FlushPolicy, got {type(policy).__name__}")
    if create_tables:
        _ensure_schema_retrying(engine)
    rt = runtime_for(engine, shared=shared)
    rt.shared = rt.shared or shared
    if archive is not None and rt.archive is None:
        rt.archive = archive if isinstance(archive, Archive) else Archive.open(archive, **(archive_options or {}))
        from .flush import Flusher

        rt.flusher = Flusher(rt, rt.archive)
        rt.scheduler = Scheduler(rt, rt.flusher, policy or FlushPolicy())
        rt.scheduler.start()
    return rt
