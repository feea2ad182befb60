"""Group commit figures for issue 5 (run on demand): `python -m benchmarks.group_commit`.

N threads each create entities one per call through the ParqueDB facade on a SQLite file:
once with group commit (default) and once with it off (one transaction and one WAL row
per call). Prints operations/s, WAL rows and events per WAL row for both.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from parquedb_meter import meter

import parquedb_orm as pq


def run(threads: int, per_thread: int, group_commit: bool) -> tuple[float, int]:
    tmp = Path(tempfile.mkdtemp(prefix="pq-gc-"))
    db = pq.ParqueDB(f"sqlite:///{tmp / 'g.db'}", group_commit=group_commit)
    db.create("posts", {"name": "warm"})
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for i in range(per_thread):
            db.create("posts", {"name": f"p{i}"})

    pool = [threading.Thread(target=work) for _ in range(threads)]
    with meter(db.engine) as m:
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        seconds = time.perf_counter() - t0
    db.close()
    return threads * per_thread / seconds, m.inserted_rows("events_wal")


def main(threads: int = 16, per_thread: int = 250) -> None:
    ops = threads * per_thread
    print(f"{threads} threads x {per_thread} single-create calls, SQLite file\n")
    print("| mode | ops/s | WAL rows | events per WAL row |\n|---|---:|---:|---:|")
    results = {}
    for gc in (False, True):
        rate, rows = run(threads, per_thread, gc)
        results[gc] = rate
        print(f"| {'group commit' if gc else 'one row per commit'} | {rate:,.0f} | {rows:,} | {ops / rows:.1f} |")
    rate1, _ = run(1, ops // 4, True)
    print(f"| 1 thread (reference) | {rate1:,.0f} | | |")
    print(f"\ngroup commit speed-up vs one row per commit: {results[True] / results[False]:.1f}x")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
