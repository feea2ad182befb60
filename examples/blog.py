"""A blog: users, posts and comments, queried both ways through their links.

Run it after `pip install -e .`:

    python examples/blog.py [--db blog.db] [--archive blog-archive]

It creates the SQLite file and the archive folder in the current directory (both
recreated on every run). Entities are schemaless documents in namespaces (`users`,
`posts`, `comments`); relationships are links `(from, predicate, to)` with an optional
reverse name, so one link answers both questions:

- outbound, from the entity that holds the link: `db.related(post, "author")`;
- inbound, to it, by the predicate or by the reverse name:
  `db.related(ann, "posts", direction="inbound")`.

Links carry data (a "likes" link has stars), are events themselves (`unlink` is recorded
too), and survive the flush to Parquet: the last step reopens the store, as a new process
would, and asks the same questions of the archive, then counts links with DuckDB.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import parquedb_orm as pq


def sqid(entity: dict[str, Any]) -> str:
    """The id part of an entity's `$id` ("posts/<sqid>")."""
    return str(entity["$id"]).split("/")[1]


def names(entities: list[dict[str, Any]], field: str = "name") -> list[str]:
    return [str(e[field]) for e in entities]


def name_of(db: pq.ParqueDB, ref: str) -> str:
    ns, entity_id = ref.split("/")
    entity = db.get(ns, entity_id, include_deleted=True)
    return "?" if entity is None else str(entity.get("name") or entity.get("body"))


def open_store(db_file: str, archive: str) -> pq.ParqueDB:
    # manual flushing so that the archive step below is where the Parquet files appear
    return pq.ParqueDB(f"sqlite:///{db_file}", archive=archive, policy=pq.FlushPolicy(mode="manual"))


def ask(db: pq.ParqueDB, users: dict[str, dict[str, Any]], posts: dict[str, dict[str, Any]]) -> None:
    """The questions the blog's pages ask, answered through the links in both directions."""
    ann, bob = users["ann"], users["bob"]
    events = posts["events"]
    # outbound: the post holds the "author" link
    print(f"  author of {events['title']!r} (outbound 'author'): {names(db.related(events['$id'], 'author'))}")
    # inbound by the reverse name: the same links, seen from the user
    anns = db.related(ann["$id"], "posts", direction="inbound")
    print(f"  posts by Ann (inbound, reverse name 'posts'): {names(anns, 'title')}")
    # inbound by the predicate itself gives the same posts
    same = db.related(ann["$id"], "author", direction="inbound")
    print(f"  posts by Ann (inbound, predicate 'author'): {names(same, 'title')}")
    comments = db.related(events["$id"], "comments", direction="inbound")
    print(f"  comments on {events['title']!r}: {names(comments, 'body')}")
    # two hops: comment -> its author
    commenters = sorted({u["name"] for c in comments for u in db.related(c["$id"], "by")})
    print(f"  who commented on it: {commenters}")
    # the link data: stars of each like of Ann's posts
    for post in anns:
        likes = db.links(post["$id"], "likes", direction="inbound")
        stars = sorted((name_of(db, lk["from"]), lk["data"]["stars"]) for lk in likes)
        print(f"  likes of {post['title']!r}: {stars}")
    print(f"  posts Bob likes (outbound 'likes'): {names(db.related(bob['$id'], 'likes'), 'title')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="blog.db", help="SQLite file (recreated on every run)")
    parser.add_argument("--archive", default="blog-archive", help="archive folder (recreated)")
    args = parser.parse_args()
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{args.db}{suffix}").unlink(missing_ok=True)
    shutil.rmtree(args.archive, ignore_errors=True)

    db = open_store(args.db, args.archive)
    print("[1] users")
    users = {
        key: db.create("users", {"$type": "User", "name": name, "email": f"{key}@example.com"})
        for key, name in (("ann", "Ann"), ("bob", "Bob"), ("cid", "Cid"))
    }
    print("  " + ", ".join(f"{u['name']} = {u['$id']}" for u in users.values()))

    print("[2] posts, each created with its author link in one transaction (one commit)")
    posts: dict[str, dict[str, Any]] = {}
    for key, title, author, tags in (
        ("hello", "Hello, world", "ann", ["intro"]),
        ("events", "Events all the way down", "ann", ["design", "sql"]),
        ("parquet", "Parquet for history", "bob", ["parquet", "sql"]),
    ):
        with db.transaction() as tx:
            post = tx.create("posts", {"$type": "Post", "title": title, "tags": tags}, actor=users[author]["$id"])
            tx.link(post["$id"], "author", users[author]["$id"], reverse="posts", actor=users[author]["$id"])
        posts[key] = post
    print("  " + ", ".join(f"{p['title']!r}" for p in posts.values()))

    print("[3] comments: each links to its post ('on', reverse 'comments') and its author ('by')")
    comments = []
    for post_key, author, body in (
        ("events", "bob", "Great read"),
        ("events", "cid", "What about snapshots?"),
        ("events", "ann", "Snapshots are the entities files"),
        ("hello", "cid", "Welcome!"),
        ("parquet", "ann", "Which compression?"),
    ):
        with db.transaction() as tx:
            comment = tx.create("comments", {"$type": "Comment", "body": body}, actor=users[author]["$id"])
            tx.link(comment["$id"], "on", posts[post_key]["$id"], reverse="comments", actor=users[author]["$id"])
            tx.link(comment["$id"], "by", users[author]["$id"], reverse="comments", actor=users[author]["$id"])
        comments.append(comment)
    print(f"  {len(comments)} comments")

    print("[4] likes: links with data")
    for user_key, post_key, stars in (("bob", "events", 5), ("cid", "events", 4), ("cid", "hello", 3),
                                      ("bob", "parquet", 2)):  # fmt: skip
        db.link(users[user_key]["$id"], "likes", posts[post_key]["$id"], reverse="liked_by", data={"stars": stars})
    print("  4 likes")

    print("[5] queries through the links")
    ask(db, users, posts)

    print("[6] Bob takes back his like of his own post; a comment is deleted (soft)")
    db.unlink(users["bob"]["$id"], "likes", posts["parquet"]["$id"], actor=users["bob"]["$id"])
    db.delete("comments", sqid(comments[1]), actor=users["cid"]["$id"])
    on_events = db.related(posts["events"]["$id"], "comments", direction="inbound")
    with_deleted = db.related(posts["events"]["$id"], "comments", direction="inbound", include_deleted=True)
    print(f"  comments on the events post: {len(on_events)} shown, {len(with_deleted)} with the deleted one")
    print(f"  posts Bob likes: {names(db.related(users['bob']['$id'], 'likes'), 'title')}")
    # the links themselves stay: a soft-deleted entity is hidden by related(), and a restore brings it back
    print("  links to the events post (db.links, inbound):")
    for lk in db.links(posts["events"]["$id"], direction="inbound"):
        print(f"    {name_of(db, lk['from'])!r} -{lk['predicate']}-> (reverse {lk['reverse']!r}) data={lk['data']}")

    result = db.flush()
    db.close()
    print(f"[7] flushed {result.events} events and {result.rel_events} link events to {args.archive}/")

    db = open_store(args.db, args.archive)
    print("[8] a fresh store (as in a new process) asks the same questions of the archive")
    ask(db, users, posts)
    con = db.duckdb()
    rows = con.sql(
        "SELECT predicate, op, count(*) FROM rels GROUP BY predicate, op ORDER BY predicate, op"
    ).fetchall()
    print("  link events by predicate, with DuckDB over the archive:")
    for predicate, op, n in rows:
        print(f"    {predicate:<7} {op:<7} {n}")
    con.close()
    db.close()


if __name__ == "__main__":
    main()
