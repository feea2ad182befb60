"""Bulk import of a CSV file with `create_many`, in chunks, with a progress bar.

Run it after `pip install -e .`:

    python examples/bulk_import.py [--csv PATH] [--rows 100000] [--chunk 10000]

Without `--csv` it first writes `customers.csv` (`--rows` rows, 100,000 by default, from a
fixed seed) in the current directory; with `--csv` it imports your file, every column as
text except those named `score` and `balance` (numbers). It imports into `import.db` and
the archive folder `import-archive/` (both recreated on every run), one `create_many` call
(one commit) per chunk, then prints the rows per second, the SQL statements and SQL rows
the import wrote, and a `find` over the imported data.

With an archive, a `create_many` of 5 or more items does not put its events in the SQL
write-ahead log: it writes a Parquet file of the entities and one of their CREATE events,
and commits the two manifest rows that list them (one INSERT statement). So 100,000 rows
in chunks of 10,000 cost 20 SQL rows, not 100,000.

The progress bar (rich, on stderr) is drawn only on a terminal; piped or redirected, the
example prints only its results. The SQL counts come from the row meter of this
source checkout (`tools/meter`, a development tool, not part of the package).
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import parquedb_orm as pq

# the row meter is a development tool of the repository, not part of the package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "meter"))
from parquedb_meter import Meter, meter

COUNTRIES = ["NZ", "DE", "BR", "JP", "KE", "CA", "IN", "FR"]
PLANS = ["free", "pro", "team"]
FIRST = ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon"]
LAST = ["Smith", "Ngata", "Silva", "Sato", "Otieno", "Roy", "Patel", "Martin"]
NUMERIC = {"score": int, "balance": float}


def write_csv(path: Path, rows: int, seed: int = 14) -> None:
    """A customers file: a fixed seed, so every run imports the same data."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "name", "email", "country", "plan", "score", "balance"])
        for i in range(rows):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            w.writerow([
                f"C{i:07d}", f"{first} {last}", f"{first.lower()}.{last.lower()}{i}@example.com",
                rng.choice(COUNTRIES), rng.choice(PLANS), rng.randint(0, 100), round(rng.uniform(0, 500), 2),
            ])  # fmt: skip


def read_chunks(path: Path, size: int) -> Iterator[list[dict[str, Any]]]:
    """The file's rows as documents, `size` at a time (the whole file is never in memory)."""
    with path.open(newline="") as f:
        chunk: list[dict[str, Any]] = []
        for line, row in enumerate(csv.DictReader(f), start=2):
            doc: dict[str, Any] = {"$type": "Customer"}
            for key, value in row.items():
                if key is None or value is None:
                    raise SystemExit(f"{path}:{line}: the row does not have as many fields as the header")
                convert = NUMERIC.get(key)
                try:
                    doc[key] = convert(value) if convert is not None and value != "" else value
                except ValueError:
                    raise SystemExit(f"{path}:{line}: {key}={value!r} is not a number") from None
            chunk.append(doc)
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def count_rows(path: Path) -> int:
    with path.open(newline="") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)


def rows_written(m: Meter) -> int:
    """Rows INSERTed plus rows changed by UPDATE/DELETE: what a per-row-billed database counts as written."""
    inserted = sum(r.inserted_rows for r in m.records)
    return int(inserted) + sum(int(max(r.rows_affected, 0)) for r in m.records if r.kind in ("UPDATE", "DELETE"))


def query_customers(db: pq.ParqueDB) -> None:
    """A find over the generated customers, and an aggregate with DuckDB over the archive."""
    query = {"country": "NZ", "plan": "team", "score": {"$gte": 99}}
    started = time.perf_counter()
    found = db.find("customers", query, sort={"balance": -1}, limit=5)
    count = len(db.find("customers", query))
    print(f"find {query}: {count} customers, top 5 by balance ({time.perf_counter() - started:.2f} s):")
    for c in found:
        print(f"  {c['ref']}  {c['name']:<14} score={c['score']:<3} balance={c['balance']:>7.2f}  {c['$id']}")
    con = db.duckdb()
    rows = con.execute(
        "SELECT state->>'plan' AS plan, count(*), round(avg(CAST(state->>'score' AS INTEGER)), 2) FROM entities"
        " WHERE ns = 'customers' GROUP BY plan ORDER BY plan"
    ).fetchall()
    con.close()
    print("DuckDB over the archive, customers per plan (count, average score):")
    for plan, n, avg in rows:
        print(f"  {plan:<5} {n:>7,} {avg:>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, help="the file to import (default: generate customers.csv)")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the generated file (default 100,000)")
    parser.add_argument("--chunk", type=int, default=10_000, help="rows per create_many call (one commit each)")
    parser.add_argument("--db", default="import.db", help="SQLite file (recreated on every run)")
    parser.add_argument("--archive", default="import-archive", help="archive folder (recreated)")
    args = parser.parse_args()
    if args.rows < 1 or args.chunk < 1:
        parser.error("--rows and --chunk must be at least 1")

    if args.csv is None:
        path = Path("customers.csv")
        started = time.perf_counter()
        write_csv(path, args.rows)
        print(f"wrote {path} ({args.rows:,} rows) in {time.perf_counter() - started:.1f} s")
    else:
        path = args.csv
        if not path.is_file():
            parser.error(f"--csv {path}: no such file")
    total = count_rows(path)

    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(args.archive, ignore_errors=True)
    # flushed by hand below: the default policy's flush at open runs on a timer thread,
    # and would land inside the metered import or not, by chance
    db = pq.ParqueDB(f"sqlite:///{args.db}", archive=args.archive, policy=pq.FlushPolicy(mode="manual"))

    console = Console(stderr=True)  # the bar on stderr, the results on stdout
    imported = 0
    started = time.perf_counter()
    with (
        meter(db.engine) as m,
        Progress(
            TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, disable=not console.is_terminal,
        ) as bar,
    ):  # fmt: skip
        task = bar.add_task("import", total=total)
        for chunk in read_chunks(path, args.chunk):
            try:
                db.create_many("customers", chunk, actor="import")
            except pq.ValidationError as exc:  # e.g. a column named like a field the store keeps ("version")
                db.close()
                rows = f"rows {imported + 1:,}-{imported + len(chunk):,}"
                raise SystemExit(f"{path}: {rows} not imported ({imported:,} before them are): {exc}") from None
            imported += len(chunk)
            bar.advance(task, len(chunk))
    seconds = time.perf_counter() - started
    print(f"imported {imported:,} rows in {seconds:.2f} s: {imported / seconds:,.0f} rows/s")
    print(f"SQL: {m.statements} statements, {rows_written(m)} rows written for {imported:,} entities")
    db.flush()  # a last chunk below create_many's bulk threshold went through the WAL
    folders = [p.relative_to(args.archive).parts[0] for p in Path(args.archive).rglob("*.parquet")]
    print(f"archive: {len(folders)} Parquet files ({folders.count('entities')} in entities/, "
          f"{folders.count('events')} of their CREATE events in events/)")  # fmt: skip

    if args.csv is None:
        query_customers(db)
    else:  # a file of the user's own: its columns are unknown here, show what was imported
        with path.open(newline="") as f:
            header = next(csv.reader(f))
        first = db.find("customers", limit=3)
        print(f"find: the first {len(first)} imported (their CSV columns):")
        for doc in first:
            print("  " + ", ".join(f"{k}={doc.get(k)!r}" for k in header))
        con = db.duckdb()
        (n,) = con.execute("SELECT count(*) FROM entities WHERE ns = 'customers'").fetchall()[0]
        con.close()
        print(f"DuckDB over the archive: {n:,} entities")
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
