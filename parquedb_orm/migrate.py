"""Schema migrations: the public module.

    from parquedb_orm import migrate
    migrate.upgrade("postgresql+psycopg://.../app")          # to the newest revision
    migrate.current(engine)                                  # ("pq0004",)
    migrate.downgrade(engine, "pq0001")

Our revisions carry the branch label `parquedb` and are tracked in their own version
table, `parquedb_alembic_version`; an application with its own Alembic may run them
instead (`version_locations()`, docs/migrations.md). This module only re-exports; the
code lives in:

- `parquedb_orm.sql.migrations`: locating the revisions (`migrations_dir`,
  `version_locations`), the commands (`upgrade`, `downgrade`, `stamp`, `current`,
  `heads`) and the read-only `schema_status` / `SchemaStatus`;
- `parquedb_orm.sql.autogen`: the autogenerate filters for an application's Alembic
  (`include_object`, `include_name`, `OWNED_TABLES`);
- `parquedb_orm.sql.revision_kit`: the internal toolkit of `migrations/versions/*.py`; only
  the names tests and operators use are re-exported (`FAIL_AT_ENV`, `ALLOW_LOSS_ENV`,
  `InjectedFailure`, `PROVENANCE_TABLE`).
"""

from __future__ import annotations

from parquedb_orm.sql.autogen import OWNED_TABLES, include_name, include_object
from parquedb_orm.sql.migrations import (
    BRANCH,
    VERSION_TABLE,
    SchemaStatus,
    current,
    downgrade,
    heads,
    migrations_dir,
    schema_status,
    stamp,
    upgrade,
    version_locations,
)
from parquedb_orm.sql.revision_kit import ALLOW_LOSS_ENV, FAIL_AT_ENV, PROVENANCE_TABLE, InjectedFailure

__all__ = [
    "ALLOW_LOSS_ENV",
    "BRANCH",
    "FAIL_AT_ENV",
    "OWNED_TABLES",
    "PROVENANCE_TABLE",
    "VERSION_TABLE",
    "InjectedFailure",
    "SchemaStatus",
    "current",
    "downgrade",
    "heads",
    "include_name",
    "include_object",
    "migrations_dir",
    "schema_status",
    "stamp",
    "upgrade",
    "version_locations",
]
