"""On-demand benchmark suite of parquedb-orm (never part of `pytest`).

Run the blog workload against parquedb-orm and three alternatives with the faithful
SQLite row meter::

    python -m benchmarks.blog --scale 0.1

See docs/benchmarks.md.
"""
