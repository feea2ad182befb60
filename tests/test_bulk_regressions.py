"""Regressions around create_many's bulk files."""

from __future__ import annotations

from pathlib import Path

import parquedb_orm as pq


def test_flush_after_bulk_create_in_same_namespace(tmp_path: Path) -> None:
    """A bulk file's manifest range is of id numbers; a flush's of sequences: both start at 1."""
    url, archive = f"sqlite:///{tmp_path / 'a.db'}", str(tmp_path / "arch")
    db = pq.ParqueDB(url, archive=archive, policy=pq.FlushPolicy(mode="manual"))
    posts = db.create_many("posts", [{"title": f"p{i}", "views": i} for i in range(20)])
    first = posts[0]["$id"].split("/")[1]
    db.update("posts", first, {"$inc": {"views": 1}})
    result = db.flush()
    assert result.events == 1 and not result.skipped
    db.close()
    cold = pq.ParqueDB(url, archive=archive, policy=pq.FlushPolicy(mode="manual"))
    assert cold.get("posts", first)["views"] == 1  # type: ignore[index]
    assert cold.get("posts", posts[3]["$id"].split("/")[1])["views"] == 3  # type: ignore[index]
    assert len(cold.find("posts")) == 20
    assert [h["op"] for h in cold.history(posts[0]["$id"])] == ["CREATE", "UPDATE"]
    counts = dict(cold.duckdb().sql("SELECT op, count(*) FROM events GROUP BY op").fetchall())
    assert counts == {"CREATE": 20, "UPDATE": 1}
    cold.close()
