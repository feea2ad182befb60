"""The examples run as they are, as a new user runs them, and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(script: str, cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_audit_log(tmp_path: Path) -> None:
    out = run("audit_log.py", tmp_path)
    assert "bulk update changed 3 orders" in out
    assert "History of order 1 (newest first), 4 entries:" in out
    assert "  v3 UPDATE by bob: {'total': (Decimal('19.90'), Decimal('17.90'))}" in out
    assert "  v2 UPDATE by alice from 203.0.113.7: {'status': ('new', 'paid')}" in out
    assert "Order 1 as of when it was paid: status=paid, total=19.90" in out
    assert "Reverted to version 1: status=new, total=19.90 (a new version, v4;" in out
    assert "Ann has 4 orders, found through the relationship events" in out
    assert "15 events and links in 9 WAL rows (an audit table would have written 15 rows)" in out
    assert "flushed 11 events and 4 links to audit-archive/" in out
    assert "    ('2', 2, 'UPDATE', 'billing-job', None)" in out
    assert (tmp_path / "audit.db").exists() and any((tmp_path / "audit-archive").rglob("*.parquet"))
    assert "card_token" not in out and "tok_secret" not in out  # the excluded column stays out
    # runs again from scratch in the same folder
    assert run("audit_log.py", tmp_path).count("History of order 1") == 1


def test_blog(tmp_path: Path) -> None:
    out = run("blog.py", tmp_path)
    assert "  author of 'Events all the way down' (outbound 'author'): ['Ann']" in out
    by_ann = "['Hello, world', 'Events all the way down']"
    assert f"  posts by Ann (inbound, reverse name 'posts'): {by_ann}" in out
    assert f"  posts by Ann (inbound, predicate 'author'): {by_ann}" in out
    assert (
        "  comments on 'Events all the way down': ['Great read', 'What about snapshots?', "
        "'Snapshots are the entities files']" in out
    )
    assert "  who commented on it: ['Ann', 'Bob', 'Cid']" in out
    assert "  likes of 'Events all the way down': [('Bob', 5), ('Cid', 4)]" in out
    assert "  comments on the events post: 2 shown, 3 with the deleted one" in out
    assert "  posts Bob likes: ['Events all the way down']" in out
    assert "    'Bob' -likes-> (reverse 'liked_by') data={'stars': 5}" in out
    assert "[7] flushed 12 events and 18 link events to blog-archive/" in out
    # the reopened store answers from the archive: the deleted comment stays hidden, the unlike holds
    after = out.split("[8]", 1)[1]
    assert "  comments on 'Events all the way down': ['Great read', 'Snapshots are the entities files']" in after
    assert "  who commented on it: ['Ann', 'Bob']" in after
    assert "  posts Bob likes (outbound 'likes'): ['Events all the way down']" in after
    for line in ("author  LINK    3", "by      LINK    5", "likes   LINK    4", "likes   UNLINK  1", "on      LINK    5"):
        assert f"    {line}\n" in after
    assert any((tmp_path / "blog-archive" / "rels").rglob("*.parquet"))
