"""sql: the store's tables and every statement on them: models, dialect capabilities, WAL
rows, snapshots, counters, the archive manifest, migrations (API, autogenerate filters,
the revision toolkit)."""
