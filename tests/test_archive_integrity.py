"""Archive integrity: a damaged archive file gives the right answer or an ArchiveError naming it.

A small store on SQLite is built once: a base with its scan file (compaction), a bulk file
and its CREATE events (create_many), a flush's events, delta and rels files. Then, for
each kind of file, single bits are flipped at fixed offsets spread over the file and its
footer; each damaged copy is opened by a fresh store (no cache) and every public read
(cold get, as_of, find with and without a limit, history, related both ways, db.duckdb()
queries) must either equal the intact store's answer or raise ArchiveError naming the
damaged file. Never a wrong answer, never another exception. Truncated, missing and
replaced files, a damaged JSON cell in a file without page CRCs, and compaction over a
damaged source (fails, changes nothing) are checked too.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as papq
import pytest
from sqlalchemy import text

import parquedb_orm as pq
import parquedb_orm.engine.store as store_module
from parquedb_orm.archive.files import Archive, Check

NS = "users"
MANUAL = pq.FlushPolicy(mode="manual")
KINDS = ("base", "scan", "bulk", "bulk_events", "merged_events", "events", "delta", "rels")
#: bits flipped per file: inside its pages (a quarter, half and three quarters of the way),
#: in its footer and in the footer's length. With PARQUEDB_INTEGRITY_THOROUGH=1 a longer
#: variant (marked slow, ~40 s) also flips 23 spread offsets and 5 in the tail of each file
#: and prints how many reads were right and how many refused
QUICK = (4, (6, 40))
THOROUGH = (24, (1, 5, 9, 40, 150))
THOROUGH_ON = os.environ.get("PARQUEDB_INTEGRITY_THOROUGH") == "1"


def sqid(entity: dict[str, Any]) -> str:
    return str(entity["$id"]).split("/")[1]


@dataclass
class Golden:
    root: Path
    ids: dict[str, str]  # role -> id
    files: dict[str, str]  # file kind -> archive-relative path
    expected: dict[str, Any]


def _open(root: Path) -> pq.ParqueDB:
    return pq.ParqueDB(f"sqlite:///{root / 'store.db'}", archive=root / "archive", policy=MANUAL)


def pushed(how: str, read: Callable[[pq.ParqueDB], Any]) -> Callable[[pq.ParqueDB], Any]:
    """`read` with find in memory (a namespace this small) or forced through DuckDB's scan
    of the files (a large one: base through its scan file, bulk, deltas)."""

    def run(db: pq.ParqueDB) -> Any:
        saved = store_module.PUSHDOWN_ABOVE
        store_module.PUSHDOWN_ABOVE = -1 if how == "duckdb" else 10**9
        try:
            return read(db)
        finally:
            store_module.PUSHDOWN_ABOVE = saved

    return run


def _reads(ids: dict[str, str]) -> dict[str, Callable[[pq.ParqueDB], Any]]:
    """Every public read the test compares, by name."""
    ref = {k: f"{NS}/{v}" for k, v in ids.items()}

    def duck(db: pq.ParqueDB) -> Any:
        con = db.duckdb()
        try:
            return [
                con.execute(sql).fetchall()
                for sql in (
                    "SELECT id, version, state, types FROM entities ORDER BY id",
                    "SELECT seq, op, id, version, data, after FROM events ORDER BY id, seq, op",
                    'SELECT seq, op, from_id, "to" FROM rels ORDER BY seq',
                )
            ]
        finally:
            con.close()

    out: dict[str, Callable[[pq.ParqueDB], Any]] = {}
    for role, eid in ids.items():
        out[f"get {role}"] = lambda db, eid=eid: db.get(NS, eid)
        out[f"history {role}"] = lambda db, r=ref[role]: db.history(r)
    out["as_of updated"] = lambda db: db.get(NS, ids["updated"], as_of=1)
    for how in ("memory", "duckdb"):
        out[f"find all {how}"] = pushed(how, lambda db: db.find(NS, {"age": {"$gte": 0}}))
        out[f"find sorted {how}"] = pushed(
            how, lambda db: db.find(NS, {"age": {"$gte": 10}}, sort={"age": -1}, limit=5)
        )
        out[f"find by name {how}"] = pushed(how, lambda db: db.find(NS, {"name": "u05"}))
    out["related out"] = lambda db: db.related(ref["linker"])
    out["related in"] = lambda db: db.related(ref["linked"], direction="inbound")
    out["duckdb views"] = duck
    return out


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Golden:
    root = tmp_path_factory.mktemp("golden")
    db = _open(root)
    made = [db.create(NS, {"name": f"u{i:02d}", "age": i}) for i in range(20)]
    ids = [sqid(e) for e in made]
    db.link(f"{NS}/{ids[0]}", "knows", f"{NS}/{ids[1]}")
    db.update(NS, ids[2], {"$set": {"age": 100}})
    db.flush()
    folded = db.create_many(NS, [{"name": f"b{i:02d}", "age": 50 + i} for i in range(8)])
    db.compact()  # base + scan file, merged events
    db.update(NS, ids[3], {"$set": {"age": 200}})
    db.link(f"{NS}/{ids[4]}", "knows", f"{NS}/{ids[1]}")
    db.flush()  # events, delta, rels
    bulk = db.create_many(NS, [{"name": f"c{i:02d}", "age": 70 + i} for i in range(6)])  # bulk + bulk events
    with db.engine.connect() as conn:
        listed = [r[0] for r in conn.execute(text("SELECT path FROM archive_manifest"))]
    db.close()

    def one(match: Callable[[str], bool]) -> str:
        found = [p for p in listed if match(p)]
        assert len(found) == 1, (found, listed)
        return found[0]

    base = one(lambda p: p.startswith("entities/") and "/base-" in p)
    files = {
        "base": base,
        "scan": "_scan/" + base.split("/", 1)[1],
        "bulk": one(lambda p: p.startswith("entities/") and "/bulk-" in p),
        "bulk_events": one(lambda p: p.startswith("events/") and "/bulk-" in p),
        "merged_events": one(lambda p: p.startswith("events/") and "/c-" in p),
        "events": one(lambda p: p.startswith("events/") and "/c-" not in p and "/bulk-" not in p),
        "delta": one(lambda p: p.startswith("entity_deltas/")),
        "rels": sorted(p for p in listed if p.startswith("rels/"))[0],  # the first link's
    }
    assert all((root / "archive" / p).is_file() for p in files.values())
    roles = {
        "created": ids[5],  # in the base only
        "folded": sqid(folded[0]),  # bulk-created, folded into the base
        "updated": ids[3],  # base + a newer delta
        "bulk": sqid(bulk[2]),  # in the bulk file
        "linker": ids[0],
        "linked": ids[1],
    }
    fresh = _open(root)
    try:
        expected = {name: read(fresh) for name, read in _reads(roles).items()}
    finally:
        fresh.close()
    assert expected["get updated"]["age"] == 200 and expected["as_of updated"]["age"] == 3
    assert (
        len(expected["find all memory"]) == 34
        and expected["find all duckdb"] == expected["find all memory"]
        and len(expected["related in"]) == 2
    )
    assert expected["history bulk"][0]["op"] == "CREATE"
    return Golden(root, roles, files, expected)


@pytest.fixture
def copy_of(golden: Golden, tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`copy_of(name)`: a private copy of the golden store (its own folder: no process-wide
    cache keyed by the archive's location carries over between cases)."""

    def make(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(golden.root, dst)
        return dst

    yield make


def _check_reads(golden: Golden, root: Path, rel: str, label: str) -> dict[str, int]:
    """Every read on a fresh store over `root`: the intact answer or an ArchiveError naming `rel`."""
    counts = {"right": 0, "refused": 0}
    db = _open(root)
    try:
        for name, read in _reads(golden.ids).items():
            try:
                got = read(db)
            except pq.ArchiveError as exc:
                assert rel in str(exc), f"{label}: {name} raised an ArchiveError naming another file: {exc}"
                counts["refused"] += 1
                continue
            assert got == golden.expected[name], f"{label}: {name} gave a WRONG answer"
            counts["right"] += 1
    finally:
        db.close()
    return counts


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << (offset % 8)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("kind", "plan"),
    [
        *((k, QUICK) for k in KINDS),
        *(pytest.param(k, THOROUGH, marks=pytest.mark.slow) for k in (KINDS if THOROUGH_ON else ())),
    ],
    ids=[*KINDS, *(f"{k}-thorough" for k in (KINDS if THOROUGH_ON else ()))],
)
def test_single_bit_flips_never_give_a_wrong_answer(
    golden: Golden,
    copy_of: Callable[[str], Path],
    kind: str,
    plan: tuple[int, tuple[int, ...]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    rel = golden.files[kind]
    size = (golden.root / "archive" / rel).stat().st_size
    spread, tail = plan
    offsets = sorted({size * i // spread for i in range(1, spread)} | {size - t for t in tail})
    refused = right = 0
    for n, offset in enumerate(offsets):
        root = copy_of(f"{kind}-{n}")
        _flip(root / "archive" / rel, offset)
        counts = _check_reads(golden, root, rel, f"{rel} bit flipped at {offset}/{size}")
        refused += counts["refused"]
        right += counts["right"]
    if plan is THOROUGH:
        with capsys.disabled():
            print(f"\n[integrity] {kind}: {len(offsets)} flips in {size} bytes, reads right {right}, refused {refused}")
    # the flips are caught, not only survived: some read of this file refused each time
    assert refused >= len(offsets), (kind, refused, len(offsets))


@pytest.mark.parametrize("damage", ["truncated", "missing", "replaced", "same size"])
def test_truncated_missing_or_replaced_files_are_refused(
    golden: Golden, copy_of: Callable[[str], Path], damage: str
) -> None:
    for kind in ("base", "delta", "events", "rels", "bulk"):
        rel = golden.files[kind]
        root = copy_of(f"{damage}-{kind}")
        path = root / "archive" / rel
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif damage == "missing":
            path.unlink()
        elif damage == "replaced":  # another valid file of the same kind
            other = {"base": "bulk", "bulk": "base", "delta": "bulk", "events": "bulk_events", "rels": "rels"}[kind]
            if other == kind:  # the only rels file: the same events rewritten in one row group
                table = papq.read_table(path, partitioning=None)
                papq.write_table(table, path, write_page_checksum=True)
            else:
                shutil.copyfile(root / "archive" / golden.files[other], path)
        else:  # the same bytes but one value swapped for another of the same length
            _same_size_rewrite(path)
        counts = _check_reads(golden, root, rel, f"{rel} {damage}")
        assert counts["refused"] >= 1, (damage, kind, counts)


def _same_size_rewrite(path: Path) -> None:
    """Rewrite the file with one string value changed, keeping the same size if the
    encoder allows (a valid Parquet file with valid page CRCs, but not the listed one)."""
    data = bytearray(path.read_bytes())
    raw = papq.read_table(path, partitioning=None)
    column = "id" if "id" in raw.column_names else "from_id"
    first = raw.column(column)[0].as_py()
    at = data.find(first.encode())
    if at >= 0:  # uncompressed dictionary text: change one letter in place (the CRC of its page fails)
        data[at] = ord("Z") if data[at] != ord("Z") else ord("Y")
        path.write_bytes(bytes(data))
        return
    table = raw.set_column(
        raw.column_names.index(column), column, pa.array([first[::-1], *raw.column(column).to_pylist()[1:]])
    )
    papq.write_table(table, path, compression="zstd", write_page_checksum=True)


def test_a_damaged_json_cell_in_a_file_without_page_crcs_is_an_archive_error(
    golden: Golden, copy_of: Callable[[str], Path]
) -> None:
    """Files written before checksums: a JSON text that does not decode is an ArchiveError
    naming the file, never a JSONDecodeError."""
    root = copy_of("json")
    rel = golden.files["delta"]
    path = root / "archive" / rel
    table = papq.read_table(path, partitioning=None)
    states = table.column("state").cast(pa.string()).to_pylist()
    broken = [s[: len(s) // 2] for s in states]  # cut mid-document
    table = table.set_column(
        table.column_names.index("state"), "state", pa.array(broken, table.schema.field("state").type)
    )
    papq.write_table(table, path, compression="zstd", store_schema=False)  # no page CRCs
    db = _open(root)
    with db.engine.begin() as conn:  # its row as an older version left it: no checksum
        conn.execute(
            text("UPDATE archive_manifest SET checksum = NULL, bytes = :b WHERE path = :p"),
            {"b": path.stat().st_size, "p": rel},
        )
    db.close()
    db = _open(root)
    try:
        with pytest.raises(pq.ArchiveError, match=re.escape(rel)):
            db.get(NS, golden.ids["updated"])
    finally:
        db.close()


def test_compaction_over_a_damaged_source_fails_and_changes_nothing(
    golden: Golden, copy_of: Callable[[str], Path]
) -> None:
    """The merge that reads the damaged file fails with an ArchiveError naming it, and the
    files of its kind stay as they were (listed, present, nothing half-written left)."""
    for kind, folders in (
        ("delta", ("entities/", "entity_deltas/")),
        ("bulk", ("entities/",)),
        ("events", ("events/",)),
    ):
        root = copy_of(f"compact-{kind}")
        rel = golden.files[kind]
        path = root / "archive" / rel
        _flip(path, path.stat().st_size // 2)  # inside a page: the footer still matches

        def mine(rows: list[tuple[Any, ...]], folders: tuple[str, ...] = folders) -> list[tuple[Any, ...]]:
            return sorted(r for r in rows if str(r[4]).startswith(folders))

        db = _open(root)
        try:
            with db.engine.connect() as conn:
                before = mine([tuple(r) for r in conn.execute(text("SELECT * FROM archive_manifest"))])
            with pytest.raises(pq.ArchiveError, match=re.escape(rel)):
                db.compact()
            with db.engine.connect() as conn:
                after = mine([tuple(r) for r in conn.execute(text("SELECT * FROM archive_manifest"))])
            assert after == before and any(r[4] == rel for r in after)
            assert all((root / "archive" / str(r[4])).is_file() for r in after)
            assert not [p for p in (root / "archive").rglob(".*") if p.is_file()]  # no pending or temp file
        finally:
            db.close()


def test_manifest_rows_carry_the_files_checks(golden: Golden) -> None:
    """Every row written now has a checksum that matches its file; a base's names its scan file."""
    db = _open(golden.root)
    try:
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT path, bytes, checksum FROM archive_manifest")).all()
    finally:
        db.close()
    assert rows and all(r[2] is not None for r in rows)
    archive = golden.root / "archive"
    for path, size, checksum in rows:
        check = Check.parse(size, checksum, path)
        assert check is not None and check.size == (archive / path).stat().st_size
        assert (check.scan is not None) == (path == golden.files["base"])
    base = next(r for r in rows if r[0] == golden.files["base"])
    scan = Check.parse(base[1], base[2])
    assert scan is not None and scan.scan is not None
    assert scan.scan[0] == (archive / golden.files["scan"]).stat().st_size
    # every page carries a CRC: pyarrow's verification passes on the intact files
    for path, _size, _c in rows:
        papq.read_table(archive / path, partitioning=None, page_checksum_verification=True)


class _BrokenUpload:
    """A writable object whose upload fails half way (a dropped connection)."""

    def __init__(self, path: str) -> None:
        self.fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.closed = False

    def write(self, data: bytes) -> int:
        self.fh.write(bytes(data)[: len(data) // 2])
        raise OSError("connection reset by peer")

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()
        self.closed = True


class _FlakyStore(pafs.FileSystemHandler):
    """A local folder seen as an object store whose uploads fail (pyarrow's PyFileSystem)."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FlakyStore)

    def __ne__(self, other: object) -> bool:
        return not isinstance(other, _FlakyStore)

    def get_type_name(self) -> str:
        return "flaky"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)  # type: ignore[no-any-return]

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)  # type: ignore[no-any-return]

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refused")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return pa.PythonFile(_BrokenUpload(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        raise OSError("refused")


def test_a_failed_upload_leaves_no_partial_object(tmp_path: Path) -> None:
    """An object store write that fails half way (write_table's PUT, a compaction's
    upload of its staged file) deletes what it left: no partial pending object remains."""
    root = tmp_path / "bucket"
    root.mkdir()
    archive = Archive(pafs.PyFileSystem(_FlakyStore()), root.as_posix(), "flaky://bucket", False)
    rel = "events/ns=posts/000000000001-000000000002.parquet"
    with pytest.raises(pq.ArchiveError, match="connection reset"):
        archive.write_table(rel, pa.table({"x": list(range(1000))}))
    staged = tmp_path / "staged.parquet"
    papq.write_table(pa.table({"x": list(range(1000))}), staged)
    with pytest.raises(pq.ArchiveError, match="connection reset"):
        archive.publish(str(staged), rel)
    assert [p for p in root.rglob("*") if p.is_file()] == []
