"""Preparing a database for the store: tables, the process runtime, archive and flushing."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine

from .archive import Archive
from .errors import ConfigurationError
from .models import metadata
from .policy import FlushPolicy, Scheduler
from .runtime import Runtime


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
        metadata.create_all(engine, checkfirst=True)
    rt = runtime_for(engine, shared=shared)
    rt.shared = rt.shared or shared
    if archive is not None and rt.archive is None:
        rt.archive = archive if isinstance(archive, Archive) else Archive.open(archive, **(archive_options or {}))
        from .flush import Flusher

        rt.flusher = Flusher(rt, rt.archive)
        rt.scheduler = Scheduler(rt, rt.flusher, policy or FlushPolicy())
        rt.scheduler.start()
    return rt
