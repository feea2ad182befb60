"""The fixed-seed "blog" workload, identical for every system.

Entities are addressed by (namespace, index): index i of namespace "posts" is the i-th
post created. Each system maps indexes to its own ids (sqids, UUIDs, integers...).

Scale 1.0:
1. bulk create: 1,000 users and 10,000 posts (one bulk call / transaction per namespace)
2. 5,000 comments, one per commit
3. 20,000 updates, one per commit: Zipf-skewed posts (`$inc` views / `$set` title) and
   users (`$set` bio)
4. 10,000 links, one per commit: comment -> post "post" and post -> user "author"
5. 50,000 `get` (Zipf-skewed)
6. 500 `related` (half outbound, half inbound)
7. 100 `find` (posts with views > N, sorted by views desc, limit 20)
8. flush
9. cold restart, then 10,000 `get`
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import Any

USERS, POSTS, COMMENTS = "users", "posts", "comments"
NAMESPACES = (USERS, POSTS, COMMENTS)
#: The data fields of each namespace (the only fields compared across systems).
FIELDS: dict[str, tuple[str, ...]] = {
    USERS: ("name", "email", "bio"),
    POSTS: ("title", "body", "views"),
    COMMENTS: ("body",),
}
TYPES = {USERS: "User", POSTS: "Post", COMMENTS: "Comment"}

BASE_COUNTS = {
    "users": 1_000,
    "posts": 10_000,
    "comments": 5_000,
    "updates": 20_000,
    "links": 10_000,
    "gets": 50_000,
    "related": 500,
    "finds": 100,
    "cold_gets": 10_000,
}
ZIPF_S = 1.0  # exponent of the Zipf popularity law
GET_MIX = ((POSTS, 0.60), (USERS, 0.25), (COMMENTS, 0.15))
FIND_LIMIT = 20
MAX_INITIAL_VIEWS = 1_000

_WORDS = (
    "sql", "rows", "events", "parquet", "archive", "snapshot", "billing", "durable", "object", "cloud", "edge",
    "worker", "query", "index", "cursor", "page", "cache", "batch", "commit", "flush", "stream", "replay",
    "history", "version", "python", "sqlalchemy", "duckdb", "polars", "spark", "trino", "schema", "table",
    "column",
)

Ref = tuple[str, int]  # (namespace, index)


@dataclass(frozen=True)
class Counts:
    users: int
    posts: int
    comments: int
    updates: int
    links: int
    gets: int
    related: int
    finds: int
    cold_gets: int

    @classmethod
    def at(cls, scale: float) -> Counts:
        if scale <= 0:
            raise ValueError("scale must be > 0")
        return cls(**{k: max(2, round(v * scale)) for k, v in BASE_COUNTS.items()})


@dataclass
class Workload:
    scale: float
    seed: int
    counts: Counts
    users: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    #: (namespace, index, update document in Mongo-style operators)
    updates: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    #: (from namespace, from index, predicate, to namespace, to index)
    links: list[tuple[str, int, str, str, int]] = field(default_factory=list)
    gets: list[Ref] = field(default_factory=list)
    #: (namespace, index, predicate, direction: "outbound" | "inbound")
    related: list[tuple[str, int, str, str]] = field(default_factory=list)
    #: (namespace, field, greater-than value, limit): sorted by field descending
    finds: list[tuple[str, str, int, int]] = field(default_factory=list)
    cold_gets: list[Ref] = field(default_factory=list)

    @property
    def single_op_commits(self) -> int:
        """Commits of one operation each (phases 2-4): the floor's written rows."""
        return len(self.comments) + len(self.updates) + len(self.links)

    @property
    def bulk_calls(self) -> int:
        """Bulk-create calls (one per namespace): one archive file + manifest row each."""
        return 2


class Zipf:
    """Zipf-distributed choice of an index in [0, n): rank r has weight 1 / (r + 1) ** s.

    Ranks are mapped to indexes through a fixed random permutation, so the popular items
    are not simply the first ones created.
    """

    def __init__(self, n: int, rng: random.Random, s: float = ZIPF_S) -> None:
        self.n = n
        self.rng = rng
        self.perm = list(range(n))
        rng.shuffle(self.perm)
        total = 0.0
        self.cum: list[float] = []
        for r in range(n):
            total += 1.0 / (r + 1) ** s
            self.cum.append(total)
        self.total = total

    def __call__(self) -> int:
        rank = bisect.bisect_left(self.cum, self.rng.random() * self.total)
        return self.perm[min(rank, self.n - 1)]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _pick_ns(rng: random.Random, mix: tuple[tuple[str, float], ...]) -> str:
    x = rng.random()
    acc = 0.0
    for ns, p in mix:
        acc += p
        if x < acc:
            return ns
    return mix[-1][0]


def generate(scale: float = 1.0, seed: int = 20240505) -> Workload:
    """The whole workload, deterministic for (scale, seed)."""
    c = Counts.at(scale)
    rng = random.Random(seed)
    wl = Workload(scale=scale, seed=seed, counts=c)

    wl.users = [
        {"$type": "User", "name": f"user{i}", "email": f"user{i}@example.com", "bio": _text(rng, 8)}
        for i in range(c.users)
    ]
    wl.posts = [
        {"$type": "Post", "title": f"post {i}: {_text(rng, 5)}", "body": _text(rng, 40),
         "views": rng.randint(0, MAX_INITIAL_VIEWS)}
        for i in range(c.posts)
    ]
    wl.comments = [{"$type": "Comment", "body": f"comment {i}: {_text(rng, 15)}"} for i in range(c.comments)]

    post_z = Zipf(c.posts, rng)
    user_z = Zipf(c.users, rng)
    comment_z = Zipf(c.comments, rng)
    zipf = {POSTS: post_z, USERS: user_z, COMMENTS: comment_z}

    # 3. updates: 80 % posts (70 % $inc views, 30 % $set title), 20 % users ($set bio)
    for k in range(c.updates):
        if rng.random() < 0.8:
            i = post_z()
            if rng.random() < 0.7:
                wl.updates.append((POSTS, i, {"$inc": {"views": 1}}))
            else:
                wl.updates.append((POSTS, i, {"$set": {"title": f"post {i} (edit {k}): {_text(rng, 4)}"}}))
        else:
            i = user_z()
            wl.updates.append((USERS, i, {"$set": {"bio": _text(rng, 8)}}))

    # 4. links: half comment -> post "post" (one per comment, Zipf-chosen post), half
    #    post -> user "author" (distinct posts, Zipf-chosen user); interleaved
    n_comment_links = min(c.links // 2, c.comments)
    n_author_links = min(c.links - n_comment_links, c.posts)
    comment_links = [(COMMENTS, i, "post", POSTS, post_z()) for i in range(n_comment_links)]
    authored = rng.sample(range(c.posts), n_author_links)
    author_links = [(POSTS, p, "author", USERS, user_z()) for p in authored]
    wl.links = comment_links + author_links
    rng.shuffle(wl.links)

    def get_ref() -> Ref:
        ns = _pick_ns(rng, GET_MIX)
        return ns, zipf[ns]()

    # 5. gets (warm)
    wl.gets = [get_ref() for _ in range(c.gets)]

    # 6. related: half outbound (comment -> its post, post -> its author), half inbound
    #    (post <- its comments, user <- the posts they wrote)
    linked_comments = [i for (_f, i, _p, _t, _j) in comment_links]
    for k in range(c.related):
        if k % 2 == 0:
            if rng.random() < 0.5 and linked_comments:
                wl.related.append((COMMENTS, rng.choice(linked_comments), "post", "outbound"))
            else:
                wl.related.append((POSTS, rng.choice(authored) if authored else post_z(), "author", "outbound"))
        elif rng.random() < 0.5:
            wl.related.append((POSTS, post_z(), "post", "inbound"))
        else:
            wl.related.append((USERS, user_z(), "author", "inbound"))

    # 7. finds: top posts above a threshold
    wl.finds = [(POSTS, "views", rng.randint(0, MAX_INITIAL_VIEWS + 200), FIND_LIMIT) for _ in range(c.finds)]

    # 9. gets after the cold restart
    wl.cold_gets = [get_ref() for _ in range(c.cold_gets)]
    return wl


def expected_events(wl: Workload) -> dict[str, int]:
    """Logical changes per phase (what 'events' means in throughput figures)."""
    return {
        "bulk": len(wl.users) + len(wl.posts),
        "single": wl.single_op_commits,
    }
