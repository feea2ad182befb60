"""Preparing a database for the store: tables and the process runtime."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from .models import metadata
from .runtime import Runtime


def prepare(engine: Engine, *, archive: str | None = None, policy: Any = None, shared: bool = False,
            create_tables: bool = True) -> Runtime:
    from .session import runtime_for

    if create_tables:
        metadata.create_all(engine, checkfirst=True)
    rt = runtime_for(engine, shared=shared)
    rt.shared = rt.shared or shared
    return rt
