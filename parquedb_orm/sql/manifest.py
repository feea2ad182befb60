"""The archive manifest: one SQL row per Parquet file. A file not listed does not exist."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, insert, select, tuple_

from parquedb_orm.sql.models import ArchiveFile

#: kinds of files a flush writes (and compaction merges); also the archive's folders
KINDS = ("events", "rels", "entities")
#: create_many files: stored under entities/ns=<ns>/bulk-*.parquet, keyed by id-number range
BULK = "bulk"
#: a create_many's CREATE events: events/ns=<ns>/bulk-*.parquet, the same range as its bulk file
BULK_EVENTS = "bulk_events"
#: every kind a manifest row can have (a sweep keeps the files of all of them)
ALL_KINDS = (*KINDS, BULK, BULK_EVENTS)
#: the folder each kind's files live in
FOLDER = {"events": "events", "rels": "rels", "entities": "entities", BULK: "entities", BULK_EVENTS: "events"}
#: where the *delta* entities files live (kind "entities", written by flushes and merged by
#: compaction): apart from the base and bulk files, so `entities/` holds one row per
#: entity (as of the namespace's last compaction) for a reader that globs it
DELTA_FOLDER = "entity_deltas"
#: every folder of the archive that holds listed files
FOLDERS = (*dict.fromkeys(FOLDER.values()), DELTA_FOLDER)


@dataclass(frozen=True)
class Entry:
    kind: str  # events | rels | entities | bulk | bulk_events (at most 16 characters)
    ns: str
    first_seq: int  # events/rels/flushed entities: sequence range; bulk, bulk_events: id-number range
    last_seq: int
    path: str
    row_count: int
    bytes: int
    #: the file's checksums (archive/files.Check.text); None: written before them
    checksum: str | None = None

    @property
    def bulk(self) -> bool:
        return self.kind == BULK


_COLUMNS = (
    ArchiveFile.kind,
    ArchiveFile.ns,
    ArchiveFile.first_seq,
    ArchiveFile.last_seq,
    ArchiveFile.path,
    ArchiveFile.row_count,
    ArchiveFile.bytes,
    ArchiveFile.checksum,
)


def load(conn: Connection, kind: str, ns: str) -> list[Entry]:
    """The files of one kind and namespace: a seek on the primary-key prefix."""
    stmt = select(*_COLUMNS).where(ArchiveFile.kind == kind, ArchiveFile.ns == ns).order_by(ArchiveFile.first_seq)
    return [Entry(*row) for row in conn.execute(stmt)]


def covering(conn: Connection, kind: str, ns: str, number: int) -> Entry | None:
    """The file of one kind and namespace whose range starts at or below `number`, the
    nearest: one backward seek on the primary key (1 row read, whatever the file count)."""
    stmt = (
        select(*_COLUMNS)
        .where(ArchiveFile.kind == kind, ArchiveFile.ns == ns, ArchiveFile.first_seq <= number)
        .order_by(ArchiveFile.first_seq.desc())
        .limit(1)
    )
    row = conn.execute(stmt).first()
    return None if row is None else Entry(*row)


def load_kind(conn: Connection, kind: str) -> list[Entry]:
    """Every file of one kind, all namespaces: a seek on the primary key's first column."""
    stmt = select(*_COLUMNS).where(ArchiveFile.kind == kind).order_by(ArchiveFile.ns, ArchiveFile.first_seq)
    return [Entry(*row) for row in conn.execute(stmt)]


def load_all(conn: Connection) -> list[Entry]:
    """Every file (db.compact() and db.duckdb() only: the table has a row per file)."""
    return [Entry(*row) for row in conn.execute(select(*_COLUMNS))]


def add(conn: Connection, entries: list[Entry]) -> None:
    if entries:
        now = datetime.now(UTC)
        conn.execute(
            insert(ArchiveFile),
            [
                {
                    "kind": e.kind,
                    "ns": e.ns,
                    "first_seq": e.first_seq,
                    "last_seq": e.last_seq,
                    "path": e.path,
                    "row_count": e.row_count,
                    "bytes": e.bytes,
                    "created_at": now,
                    "checksum": e.checksum,
                }
                for e in entries
            ],
        )


def remove(conn: Connection, entries: list[Entry]) -> int:
    if not entries:
        return 0
    keys = [(e.kind, e.ns, e.first_seq) for e in entries]
    res = conn.execute(
        delete(ArchiveFile).where(tuple_(ArchiveFile.kind, ArchiveFile.ns, ArchiveFile.first_seq).in_(keys))
    )
    return int(res.rowcount)
