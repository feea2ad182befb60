"""Autogenerate filters: keep our tables out of a host application's `alembic revision --autogenerate`.

Public through `parquedb_orm.migrate` (`from parquedb_orm.migrate import include_name,
include_object`, docs/migrations.md). `include_ours` is the opposite filter, for our own
env.py: compare only the store's tables.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from parquedb_orm.sql.legacy import legacy_metadata
from parquedb_orm.sql.migrations import VERSION_TABLE
from parquedb_orm.sql.models import metadata
from parquedb_orm.sql.revision_kit import PROVENANCE_TABLE

__all__ = ["OWNED_TABLES", "include_name", "include_object", "include_ours"]

#: Every table this library creates, at any revision (autogenerate filters use it).
OWNED_TABLES = frozenset(metadata.tables) | frozenset(legacy_metadata.tables) | {PROVENANCE_TABLE, VERSION_TABLE}


def include_object(object: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """`include_object` for an application's autogenerate: skip every table we own.

    Without it the app's `alembic revision --autogenerate` would propose dropping
    events_wal & co., which are not in the app's MetaData.
    """
    if type_ == "table":
        return name not in OWNED_TABLES
    table = getattr(object, "table", None)
    return not (isinstance(table, sa.Table) and table.name in OWNED_TABLES)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """`include_name` for an application's autogenerate: do not even reflect our tables."""
    return not (type_ == "table" and name in OWNED_TABLES)


def include_ours(name: str | None, type_: str, parent_names: Any) -> bool:
    """Our env.py's filter: compare only the store's tables, whatever else the database holds."""
    return type_ != "table" or name in metadata.tables
