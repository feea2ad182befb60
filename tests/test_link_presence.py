"""A link checks that both endpoints exist and are not deleted. For an entity that is only
in the archive, that check reads the pieces' small columns (id, number, version, seq,
created_at, deleted_at), never the JSON states (`ArchivedReads.presence`), and answers as
a full read would: live, deleted, hard-deleted or never created."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import parquedb_orm as pq
from parquedb_orm.engine.archived import ArchivedReads
from parquedb_orm.errors import EntityNotFoundError


def _open(path: Path) -> pq.ParqueDB:
    return pq.ParqueDB(f"sqlite:///{path / 's.db'}", archive=path / "archive", policy=pq.FlushPolicy(mode="manual"))


def _no_state_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: ArchivedReads, *args: Any) -> Any:
        raise AssertionError("a link's endpoint check read the entities' JSON states")

    monkeypatch.setattr(ArchivedReads, "_point_pieces", refuse)


@pytest.mark.parametrize("compact", [False, True], ids=["bulk-and-delta-files", "compacted"])
def test_a_cold_link_reads_no_state_and_tells_every_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compact: bool
) -> None:
    db = _open(tmp_path)
    try:
        bulk = [d["$id"] for d in db.create_many("posts", [{"n": i} for i in range(50)])]
        single = [db.create("posts", {"n": 100 + i})["$id"] for i in range(3)]
        db.delete("posts", bulk[1].split("/")[1])  # soft
        db.delete("posts", bulk[2].split("/")[1], hard=True)
        db.update("posts", bulk[3].split("/")[1], {"$set": {"n": -3}})
        db.flush()
        if compact:
            db.compact()
        db.delete("posts", bulk[4].split("/")[1])  # deleted, not flushed
    finally:
        db.close()

    with _open(tmp_path) as cold:
        _no_state_reads(monkeypatch)
        cold.link(bulk[0], "refs", bulk[3])  # bulk file / delta (or the base)
        cold.link(single[0], "refs", single[1])  # a flush's delta (or the base)
        with pytest.raises(EntityNotFoundError, match=r"\(deleted\)"):
            cold.link(bulk[0], "refs", bulk[1])
        with pytest.raises(EntityNotFoundError, match=r"does not exist$"):
            cold.link(bulk[0], "refs", bulk[2])
        with pytest.raises(EntityNotFoundError, match=r"does not exist$"):
            cold.link(bulk[0], "refs", "posts/" + "zzzzzz")
        monkeypatch.undo()
        with pytest.raises(EntityNotFoundError, match=r"\(deleted\)"):  # its DELETE is in the WAL tail
            cold.link(bulk[0], "refs", bulk[4])
        assert sorted(d["$id"] for d in cold.related(bulk[0], "refs")) == [bulk[3]]
        assert [d["$id"] for d in cold.related(single[0], "refs")] == [single[1]]
