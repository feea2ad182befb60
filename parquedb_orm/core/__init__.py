"""core: pure code, no I/O: events and how they fold into state, update operators, find
filters and their DuckDB pushdown, ids (sqids), the value codec, the unit of work."""
