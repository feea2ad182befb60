"""Analytics over the archive with DuckDB, and a chart of events over time per namespace.

Run it after `pip install -e ".[examples]"` (it needs matplotlib):

    python examples/analytics.py [--rounds 4] [--pause 1.0] [--bucket second|minute|day]

It runs a small blog workload on `analytics.db` (users, posts, comments, likes; recreated
on every run), flushes it to the archive folder `analytics-archive/`, and asks DuckDB
(`db.duckdb()`, views `events`, `rels` and `entities`) the questions an analyst would:
events per namespace and operation, the most active actors, the most edited posts, which
fields the updates changed (the `changes` column the flush computes), likes per post from
the link events, and the current state from `entities`. It then draws events per time
bucket per namespace (a stacked bar chart) to `events_per_<bucket>.png`.

About the time axis: an event's time (`ts`) is when it was committed; the API has no way
to set it, and this example does not write fake times into the archive. So the workload
runs in `--rounds` rounds `--pause` seconds apart, and the chart counts events per second
by default. `--bucket day` gives the chart the issue asked for, events per day per
namespace: on a fresh store that is one bar, today's.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path
from typing import Any

try:
    import matplotlib
except ImportError:
    raise SystemExit('analytics.py draws its chart with matplotlib: pip install -e ".[examples]"') from None

matplotlib.use("Agg")  # no display needed: the chart goes to a PNG file
import matplotlib.pyplot as plt

import parquedb_orm as pq

TOPICS = ["sql", "parquet", "duckdb", "events", "sqlite", "iceberg"]


def sqid(entity: dict[str, Any]) -> str:
    return str(entity["$id"]).split("/")[1]


def workload(db: pq.ParqueDB, rounds: int, pause: float) -> None:
    """Users write posts, comment and like; each round a little later than the one before.
    A fixed seed: every run makes the same events (only their times differ)."""
    rng = random.Random(7)
    users = [db.create("users", {"$type": "User", "name": name}) for name in ("Ann", "Bob", "Cid", "Dee")]
    posts: list[dict[str, Any]] = []
    for r in range(rounds):
        if r:
            time.sleep(pause)
        for _ in range(3):
            author = rng.choice(users)
            with db.transaction() as tx:
                post = tx.create(
                    "posts",
                    {"$type": "Post", "title": f"On {rng.choice(TOPICS)} #{len(posts) + 1}", "views": 0, "draft": True},
                    actor=author["$id"],
                )
                tx.link(post["$id"], "author", author["$id"], reverse="posts", actor=author["$id"])
            posts.append(post)
        for _ in range(6):
            post, user = rng.choice(posts), rng.choice(users)
            with db.transaction() as tx:
                comment = tx.create("comments", {"$type": "Comment", "body": "Nice"}, actor=user["$id"])
                tx.link(comment["$id"], "on", post["$id"], reverse="comments", actor=user["$id"])
        for post in rng.sample(posts, 2):
            db.update("posts", sqid(post), {"$inc": {"views": rng.randint(1, 50)}}, actor="counter")
        post = rng.choice(posts)
        db.update("posts", sqid(post), {"$set": {"draft": False}}, actor=post["createdBy"])
        for user in rng.sample(users, 2):
            liked = rng.choice(posts)
            if not db.links(user["$id"], "likes") or rng.random() < 0.7:
                db.link(user["$id"], "likes", liked["$id"], reverse="liked_by", actor=user["$id"])


def table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    print(f"\n{title}")
    cells = [tuple(str(c) for c in header), *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the workload (default 4)")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between rounds (default 1.0)")
    parser.add_argument("--bucket", choices=("second", "minute", "day"), default="second", help="the chart's bars")
    parser.add_argument("--db", default="analytics.db", help="SQLite file (recreated on every run)")
    parser.add_argument("--archive", default="analytics-archive", help="archive folder (recreated)")
    args = parser.parse_args()
    if args.rounds < 1 or args.pause < 0:
        parser.error("--rounds must be at least 1 and --pause at least 0")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(args.archive, ignore_errors=True)

    db = pq.ParqueDB(f"sqlite:///{args.db}", archive=args.archive, policy=pq.FlushPolicy(mode="manual"))
    started = time.perf_counter()
    workload(db, args.rounds, args.pause)
    result = db.flush()
    print(f"workload: {args.rounds} rounds in {time.perf_counter() - started:.1f} s; flushed {result.events} events "
          f"and {result.rel_events} link events to {args.archive}/ ({result.files} Parquet files)")  # fmt: skip

    con = db.duckdb()
    q = con.execute
    table("events per namespace and operation", ("ns", "op", "events"),
          q("SELECT ns, op, count(*) FROM events GROUP BY ns, op ORDER BY ns, op").fetchall())  # fmt: skip
    table("most active actors (entity and link events)", ("actor", "events"), q(
        """SELECT coalesce(u.state->>'name', a.actor) AS who, count(*) AS n FROM (
             SELECT actor FROM events UNION ALL SELECT actor FROM rels) a
           LEFT JOIN entities u ON u.ns = 'users' AND 'users/' || u.id = a.actor
           GROUP BY who ORDER BY n DESC, who LIMIT 5""").fetchall())  # fmt: skip
    table("fields changed by updates (the flush's `changes` column)", ("field", "updates"), q(
        """SELECT f, count(*) FROM (SELECT unnest(json_keys(changes)) AS f FROM events WHERE op = 'UPDATE')
           GROUP BY f ORDER BY f""").fetchall())  # fmt: skip
    table("most viewed posts (entities: the current state)", ("title", "views", "draft"), q(
        """SELECT state->>'title', CAST(state->>'views' AS INTEGER) AS v, state->>'draft' FROM entities
           WHERE ns = 'posts' ORDER BY v DESC, state->>'title' LIMIT 3""").fetchall())  # fmt: skip
    table("comments and likes per post (link events)", ("title", "comments", "likes"), q(
        """SELECT p.state->>'title' AS title,
                  count(*) FILTER (WHERE r.predicate = 'on') AS comments,
                  count(*) FILTER (WHERE r.predicate = 'likes') AS likes
           FROM rels r JOIN entities p ON p.ns = 'posts' AND 'posts/' || p.id = r."to"
           WHERE r.op = 'LINK' GROUP BY title ORDER BY comments + likes DESC, title LIMIT 3""").fetchall())  # fmt: skip

    # the chart: events per time bucket per namespace, from the commit times
    rows = q(
        f"SELECT date_trunc('{args.bucket}', ts) AS t, ns, count(*) FROM events GROUP BY t, ns ORDER BY t, ns"
    ).fetchall()
    con.close()
    db.close()
    buckets = sorted({t for t, _ns, _n in rows})
    namespaces = sorted({ns for _t, ns, _n in rows})
    counts = {(t, ns): n for t, ns, n in rows}
    fmt = {"second": "%H:%M:%S", "minute": "%H:%M", "day": "%Y-%m-%d"}[args.bucket]
    labels = [t.strftime(fmt) for t in buckets]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bottom = [0] * len(buckets)
    for ns in namespaces:
        heights = [counts.get((t, ns), 0) for t in buckets]
        ax.bar(labels, heights, bottom=bottom, label=ns)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_title(f"events per {args.bucket} per namespace (commit time, UTC)")
    ax.set_xlabel(args.bucket)
    ax.set_ylabel("events")
    ax.legend()
    fig.tight_layout()
    png = Path(f"events_per_{args.bucket}.png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    bars = f"{len(buckets)} bar{'' if len(buckets) == 1 else 's'} of {args.bucket}s"
    print(f"\nchart: {png} ({png.stat().st_size:,} bytes): {bars}, "
          f"{sum(counts.values())} events in {len(namespaces)} namespaces")  # fmt: skip
    for t, label in zip(buckets, labels, strict=True):
        print(f"  {label}  " + "  ".join(f"{ns}={counts.get((t, ns), 0)}" for ns in namespaces))


if __name__ == "__main__":
    main()
