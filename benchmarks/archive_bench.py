"""Archive figures for issue 3 (run on demand): `python -m benchmarks.archive_bench [N]`.

- SQL rows written by `create_many` of 10,000 entities;
- a namespace of N (default 100,000) entities created through the WAL in batches of 1,000
  and flushed: flush throughput (events/s) and Parquet bytes per event;
- after a cold restart: SQL statements (and rows, faithful when the counting SQLite
  library is loaded) for `get`, `find` and `related` on that flushed namespace.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from parquedb_meter import meter

import parquedb_orm as pq


def main(n: int = 100_000) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="pq-archive-bench-"))
    url, archive = f"sqlite:///{tmp / 'bench.db'}", str(tmp / "archive")
    policy = pq.FlushPolicy(mode="manual")
    db = pq.ParqueDB(url, archive=archive, policy=policy)
    db.create("warm", {"name": "w"})

    items = [{"name": f"b{i}", "views": i % 1000} for i in range(10_000)]
    with meter(db.engine) as m:
        t0 = time.perf_counter()
        db.create_many("bulk", items)
        dt = time.perf_counter() - t0
    written = m.rows_written if m.rows_written is not None else m.rows_affected
    print(f"create_many 10,000: {m.statements} statements, {written} SQL rows written "
          f"({'faithful' if m.faithful else 'rows affected'}), {dt:.3f} s, {10_000 / dt:,.0f} entities/s")

    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        with db.transaction() as tx:
            for i in range(start, min(n, start + 1000)):
                tx.create("posts", {"name": f"p{i}", "views": i % 1000, "tags": ["x", str(i % 7)]})
    users = [db.create("users", {"name": f"u{i}"}) for i in range(10)]
    posts = db.find("posts", limit=200)
    for i, p in enumerate(posts):
        db.link(p["$id"], "author", users[i % 10]["$id"])
    print(f"wrote {n:,} creates in {n // 1000} commits: {time.perf_counter() - t0:.1f} s")
    res = db.flush()
    events = res.events + res.rel_events
    print(f"flush: {events:,} events, {res.files} files, {res.bytes:,} bytes, {res.seconds:.2f} s -> "
          f"{events / res.seconds:,.0f} events/s, {res.bytes / max(events, 1):.1f} bytes/event")
    target = posts[123]["$id"].split("/")[1]
    db.close()

    cold = pq.ParqueDB(url, archive=archive, policy=policy)
    for name, call in (
        ("get (cold)", lambda: cold.get("posts", target)),
        ("get (warm)", lambda: cold.get("posts", target)),
        ("find views>990 sort limit 20 (cold)", lambda: cold.find("posts", {"views": {"$gt": 990}},
                                                                  sort={"views": -1}, limit=20)),
        ("find (warm)", lambda: cold.find("posts", {"views": {"$gt": 990}}, sort={"views": -1}, limit=20)),
        ("related outbound (cold)", lambda: cold.related(posts[5]["$id"], "author")),
        ("related inbound (warm)", lambda: cold.related(users[3]["$id"], direction="inbound")),
    ):
        with meter(cold.engine) as m:
            t0 = time.perf_counter()
            out = call()
            dt = time.perf_counter() - t0
        size = len(out) if isinstance(out, list) else int(out is not None)
        rows = f", rows read {m.rows_read}, written {m.rows_written}" if m.faithful else ""
        print(f"{name}: {m.statements} statements{rows}, {dt * 1000:.1f} ms, {size} result(s)")
    cold.close()
    print(f"(data in {tmp})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
