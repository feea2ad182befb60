"""archive: the Parquet files and what writes them: files and schemas, the flush (WAL ->
Parquet, exactly once) and compaction, the flush policy, bulk files, DuckDB views. It sees
the engine only through the protocols it declares (`flush.FlushSource`,
`policy.CommitFeed`, `analytics.LiveView`)."""
