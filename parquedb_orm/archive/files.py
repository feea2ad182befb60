"""Where Parquet files live: a local folder (default) or any pyarrow filesystem URI.

Writes are atomic for readers, and a file is visible only once it is committed: every
writer (flush, compaction, create_many) writes its file under a hidden *pending* name
(`<folder>/.<name>.pending`: a leading dot, which pyarrow.dataset skips, and a suffix no
`*.parquet` glob matches), commits the manifest row that lists `<folder>/<name>`, and only
then publishes it (`publish_pending`: a durable rename locally, a copy + delete on an
object store). A crash between the commit and the publish leaves a listed pending file:
the next open or flush publishes it (compact.sweep_orphans), and a reader that finds the
listed name missing publishes it itself (`_recover`). A local file is first written to a
temporary name, fsynced and renamed (then the directory is fsynced); an object store gets
one PUT of the whole object. Paths are built only from validated namespaces and numbers,
and are checked again here so nothing can land outside the archive root.

Integrity (docs/archive.md, "Integrity"): every file is written with Parquet page CRCs,
and its manifest row keeps its size and CRC-32s of its footer and of the whole file
(`Check`). Every read of a listed file goes through this module's checked reader
(`footer`, `read_row_groups`, `read_table`, `verify`, `dataset`): the size and footer are
compared with the manifest, pages are verified as pyarrow decodes them, and any failure
is an ArchiveError naming the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import shutil
import tempfile
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from parquedb_orm.core.ids import check_namespace
from parquedb_orm.errors import (
    ArchiveError,
    ArchiveFileMissingError,
    ConfigurationError,
    InvalidNamespaceError,
    ParqueDBError,
)

if TYPE_CHECKING:
    import pyarrow.dataset as ds

    from parquedb_orm.sql.manifest import Entry

#: zstd everywhere; ~64k-row row groups keep scans streaming and stats useful (the
#: archive's own files pass `parquet.PIECE_ROWS`: a point read decodes one small piece)
ROW_GROUP_ROWS = 65_536
#: JSON text columns: nearly every value distinct, so no dictionary (it only slows reads),
#: and no min/max (they prune nothing and would bloat every footer)
_JSON_TEXT = frozenset({"state", "data", "before", "after", "changes", "meta", "types"})
#: suffix of a written file not yet published (see the module doc)
PENDING_SUFFIX = ".pending"


#: a footer is read with one ranged read of this many bytes at the end of the file (more
#: only when the footer is longer), as pyarrow itself does
_TAIL_READ = 64 << 10
#: whole-file checksums stream the file in pieces of this size
_CHUNK = 1 << 20
_MAGIC = b"PAR1"
#: decoding a stored cell can fail these ways when its bytes are not what was written
DECODE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError)


@dataclass(frozen=True)
class Check:
    """What the manifest row of a file says it is (its `bytes` and `checksum` columns):
    the size, the CRC-32 of its footer (the Thrift FileMetaData and the 8 bytes after it:
    every point read checks it when it reads the footer) and of the whole file (checked
    once per process before DuckDB scans the file itself, which verifies no page CRC).
    `scan`: for a base, its scan file's (size, whole-file CRC-32); the scan file has no
    manifest row of its own. `footer` is None for a scan file."""

    size: int
    footer: int | None
    whole: int
    scan: tuple[int, int] | None = None

    def text(self) -> str:
        """The manifest's `checksum` text: `crc32 <footer> <whole>[ scan <size> <whole>]`."""
        out = f"crc32 {self.footer or 0:08x} {self.whole:08x}"
        return out if self.scan is None else f"{out} scan {self.scan[0]} {self.scan[1]:08x}"

    def with_scan(self, scan: Check) -> Check:
        return Check(self.size, self.footer, self.whole, (scan.size, scan.whole))

    def scan_check(self) -> Check | None:
        return None if self.scan is None else Check(self.scan[0], None, self.scan[1])

    @classmethod
    def parse(cls, size: int, text: str | None, path: str = "?") -> Check | None:
        """A manifest row's check; None for rows written before checksums (not verified)."""
        if text is None:
            return None
        parts = text.split()
        try:
            if parts[0] != "crc32" or len(parts) not in (3, 6) or (len(parts) == 6 and parts[3] != "scan"):
                raise ValueError(text)
            scan = (int(parts[4]), int(parts[5], 16)) if len(parts) == 6 else None
            return cls(int(size), int(parts[1], 16), int(parts[2], 16), scan)
        except (ValueError, IndexError):
            raise ArchiveError(
                f"the manifest row of {path} has a malformed checksum {text[:80]!r}: expected "
                "'crc32 <footer hex> <file hex>[ scan <size> <hex>]'"
            ) from None

    @classmethod
    def of(cls, entry: Entry) -> Check | None:
        return cls.parse(entry.bytes, entry.checksum, entry.path)


def _footer_length(tail: bytes, size: int, target: str) -> int:
    """The footer length a file's last 8 bytes give, checked against the file's size."""
    if size < 12 or tail[-4:] != _MAGIC:
        raise ArchiveError(
            f"archive file {target} is not a complete Parquet file (its last bytes are not the "
            f"Parquet magic, {size} bytes): it was truncated or overwritten; restore it from a backup"
        )
    length = int.from_bytes(tail[-8:-4], "little")
    if length + 12 > size:
        raise ArchiveError(
            f"archive file {target} has a damaged footer (length {length} in a {size}-byte file): "
            "restore it from a backup"
        )
    return length


def check_of_bytes(data: bytes) -> Check:
    """The check of a file whose bytes are in memory (a writer's buffer)."""
    length = _footer_length(data[-8:], len(data), "(buffer)")
    return Check(len(data), zlib.crc32(data[-(length + 8) :]), zlib.crc32(data))


def check_of_local(path: str) -> Check:
    """The check of a finished local file (a streamed writer's output): its tail, then
    the whole file in pieces (it was just written: the page cache holds it)."""
    size = os.path.getsize(path)
    whole = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            whole = zlib.crc32(chunk, whole)
        fh.seek(max(0, size - _TAIL_READ))
        tail = fh.read()
    length = _footer_length(tail, size, path)
    if length + 8 > len(tail):
        with open(path, "rb") as fh:
            fh.seek(size - length - 8)
            tail = fh.read()
    return Check(size, zlib.crc32(tail[-(length + 8) :]), whole)


#: files checked whole in this process, by (archive uri, path, checksum text): a listed
#: file never changes, so DuckDB may scan it directly afterwards (bounded)
_WHOLE_CHECKED: dict[tuple[str, str, str], None] = {}
_WHOLE_CHECKED_MAX = 65_536
_WHOLE_LOCK = threading.Lock()


def _mismatch(target: str, what: str) -> ArchiveError:
    return ArchiveError(
        f"archive file {target} failed its integrity check: {what}. It was damaged, truncated or "
        "replaced after it was written; restore it from a backup (its manifest row lists it)"
    )


def read_failure(exc: BaseException) -> bool:
    """Whether an exception raised while DuckDB or pyarrow read archive files is a read
    failure (OS, pyarrow, or DuckDB relaying one) rather than a bug to let through."""
    if isinstance(exc, (OSError, pa.ArrowException)):
        return True
    return type(exc).__module__.split(".")[0] in ("duckdb", "_duckdb")


def checked_format() -> ds.ParquetFileFormat:
    """The Parquet format of every dataset over archive files: pages verified against their
    CRCs as they are decoded (also when DuckDB scans the dataset)."""
    import pyarrow.dataset as ds

    return ds.ParquetFileFormat(
        default_fragment_scan_options=ds.ParquetFragmentScanOptions(page_checksum_verification=True)
    )


def pending_name(rel: str) -> str:
    """The hidden name a file waits under until the manifest lists it."""
    folder, _, name = rel.rpartition("/")
    return f"{folder}/.{name}{PENDING_SUFFIX}" if folder else f".{name}{PENDING_SUFFIX}"


def published_name(rel: str) -> str | None:
    """The archive path a pending file stands for, or None when `rel` is not one."""
    folder, _, name = rel.rpartition("/")
    if not (name.startswith(".") and name.endswith(PENDING_SUFFIX)):
        return None
    name = name[1 : -len(PENDING_SUFFIX)]
    return f"{folder}/{name}" if folder else name


def keeps_arrow_schema(schema: pa.Schema) -> bool:
    """Whether a file of this schema stores its Arrow schema (`ARROW:schema`). Not when a
    column has an extension type (JSON): the Parquet logical type already says JSON to
    every engine, and a stored `arrow.json` extension makes pyiceberg refuse the file
    (it has no such type). Such a column then reads back as its storage type (string)."""
    return not any(isinstance(f.type, pa.BaseExtensionType) for f in schema)


def keep_metadata(writer: pq.ParquetWriter, schema: pa.Schema) -> None:
    """The schema's key-value metadata (e.g. `parquedb.fields`) in the file's footer even
    when the Arrow schema, which otherwise carries it, is not stored."""
    if schema.metadata and not keeps_arrow_schema(schema):
        writer.add_key_value_metadata(schema.metadata)


def check_bucket(fs: pafs.FileSystem, bucket: str, root: str, *, creatable: bool = False) -> None:
    """Fail at open, not at the first flush: the bucket must exist (one HEAD of it) and
    the credentials must list the archive's prefix (one LIST, at most a page of keys)."""
    if not bucket:
        raise ConfigurationError(f"archive URI s3://{root} names no bucket: use s3://<bucket>/<prefix>")
    try:
        found = fs.get_file_info(bucket).type
    except OSError as exc:
        raise ConfigurationError(
            f"cannot reach S3 bucket {bucket!r} (credentials, endpoint_override, scheme, region?): {exc}"
        ) from None
    if found == pafs.FileType.NotFound and creatable:
        return  # the first write creates it
    if found == pafs.FileType.NotFound:
        raise ConfigurationError(
            f"S3 bucket {bucket!r} does not exist (or these credentials cannot see it): create it, "
            "or pass allow_bucket_creation=true in archive_options"
        )
    try:
        fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=False))
    except OSError as exc:
        raise ConfigurationError(
            f"cannot list s3://{root} in bucket {bucket!r} (check access_key / secret_key and their rights): {exc}"
        ) from None


@dataclass(frozen=True)
class Archive:
    """An archive root: `fs` (pyarrow filesystem) + `root` (path inside it)."""

    fs: pafs.FileSystem
    root: str
    uri: str
    local: bool
    #: the S3 options the filesystem was built with (URI query + keyword options), for
    #: other readers of the same objects (archive/iceberg.py's FileIO)
    options: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def open(cls, location: str | os.PathLike[str], **options: Any) -> Archive:
        """`./archive`, `/abs/path`, `file:///...` or `s3://bucket/prefix?endpoint_override=...`.

        Extra keyword options go to the filesystem constructor (S3: access_key,
        secret_key, endpoint_override, scheme, region...)."""
        text = os.fspath(location)
        if not text.strip():
            raise ConfigurationError(
                "archive location is empty: pass a folder path or a URI such as s3://bucket/prefix"
            )
        parsed = urlparse(text)
        if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
            path = Path(parsed.path if parsed.scheme == "file" else text).resolve()
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(f"cannot use {text!r} as the archive folder: {exc}") from None
            return cls(pafs.LocalFileSystem(), path.as_posix(), path.as_uri(), True)
        if parsed.scheme == "s3":
            query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
            query.update({k: str(v) for k, v in options.items()})
            kwargs: dict[str, Any] = {}
            for key in ("access_key", "secret_key", "session_token", "region", "endpoint_override", "scheme"):
                if key in query:
                    kwargs[key] = query[key]
            if "allow_bucket_creation" in query:
                kwargs["allow_bucket_creation"] = query["allow_bucket_creation"].lower() == "true"
            try:
                fs = pafs.S3FileSystem(**kwargs)
            except Exception as exc:
                raise ConfigurationError(f"cannot open archive {text!r}: {exc}") from None
            root = (parsed.netloc + "/" + parsed.path.strip("/")).rstrip("/")
            check_bucket(fs, parsed.netloc, root, creatable=bool(kwargs.get("allow_bucket_creation")))
            return cls(fs, root, f"s3://{root}", False, {k: str(v) for k, v in kwargs.items()})
        try:
            fs, root = pafs.FileSystem.from_uri(text)
        except Exception as exc:
            raise ConfigurationError(f"cannot open archive {text!r}: {exc}") from None
        return cls(fs, root.rstrip("/"), text, False)

    # ------------------------------------------------------------------ paths
    def path(self, rel: str) -> str:
        """Absolute path of a relative archive path, refusing anything that escapes the root."""
        norm = posixpath.normpath(rel)
        if norm.startswith(("/", "..")) or "\\" in rel or norm != rel:
            raise ArchiveError(f"refusing archive path {rel!r}: it is not a plain path inside the archive")
        return f"{self.root}/{norm}"

    @staticmethod
    def file_name(kind: str, ns: str, first: int, last: int, prefix: str = "") -> str:
        """Deterministic name: a retried flush rewrites the same file."""
        check_namespace(ns)
        if kind not in ("events", "rels", "entities", "entity_deltas"):
            raise ArchiveError(f"unknown archive kind {kind!r}")
        return f"{kind}/ns={ns}/{prefix}{int(first):012d}-{int(last):012d}.parquet"

    # ------------------------------------------------------------------ io
    def write_table(self, rel: str, table: pa.Table, *, row_group_rows: int | None = None) -> Check:
        """Write the Parquet file `rel` under its pending name (`publish_pending` makes it
        `rel` once the manifest lists it); returns its size and checksums for its manifest
        row. Statistics on every column but the JSON texts (row groups are pruned by their
        min/max); a CRC on every page."""
        buf = io.BytesIO()
        plain = [c for c in table.column_names if c not in _JSON_TEXT]
        with pq.ParquetWriter(
            buf,
            table.schema,
            compression="zstd",
            use_dictionary=plain,
            write_statistics=plain,
            store_schema=keeps_arrow_schema(table.schema),
            write_page_checksum=True,
        ) as writer:
            writer.write_table(table, row_group_size=row_group_rows or ROW_GROUP_ROWS)
            keep_metadata(writer, table.schema)
        data = buf.getvalue()
        target = self.path(pending_name(rel))
        try:
            if self.local:
                self._write_local(target, data)
            else:
                # one PUT of the whole object: readers see all of it or nothing
                self.fs.create_dir(posixpath.dirname(target), recursive=True)
                self._put(target, data)
        except OSError as exc:
            raise ArchiveError(f"cannot write {target}: {exc}") from exc
        return check_of_bytes(data)

    def _put(self, target: str, data: bytes) -> None:
        """One object written; a failed upload leaves no partial pending object behind
        (closing a broken stream may still complete it: delete what it left)."""
        try:
            with self.fs.open_output_stream(target) as out:
                out.write(data)
        except OSError:
            with contextlib.suppress(OSError):
                self.fs.delete_file(target)
            raise

    @staticmethod
    def _write_local(target: str, data: bytes) -> None:
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            Archive._durable_rename(tmp, target)
        except OSError:
            # a full disk must not keep the partial file: a retry needs the space
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @staticmethod
    def _durable_rename(tmp: str, target: str) -> None:
        """Make a finished temp file in the target's folder the target, surviving a crash:
        fsync the file, rename it (atomic for readers), fsync the folder."""
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        Archive._fsync_dir(target)

    @staticmethod
    def _fsync_dir(target: str) -> None:
        """Make a rename into `target`'s folder survive a crash."""
        dir_fd = os.open(os.path.dirname(target), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def staging_path(self, rel: str) -> tuple[str, str | None]:
        """Where a writer that streams a file puts it before `publish`: a hidden temp name
        beside the target locally (the orphan sweep knows the pattern), else a file in a
        local temp folder; the folder to remove afterwards, or None."""
        target = self.path(rel)
        if self.local:
            directory = os.path.dirname(target)
            os.makedirs(directory, exist_ok=True)
            return os.path.join(directory, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp"), None
        scratch = tempfile.mkdtemp(prefix="parquedb-out-")
        return os.path.join(scratch, os.path.basename(target)), scratch

    def publish(self, staged: str, rel: str) -> None:
        """Make a staged file (`staging_path`) the pending file of `rel` (as `write_table`
        leaves it): a durable rename locally, one upload to an object store."""
        target = self.path(pending_name(rel))
        try:
            if self.local:
                self._durable_rename(staged, target)
            else:
                self.fs.create_dir(posixpath.dirname(target), recursive=True)
                try:
                    with open(staged, "rb") as src, self.fs.open_output_stream(target) as out:
                        shutil.copyfileobj(src, out, 8 << 20)
                except OSError:
                    with contextlib.suppress(OSError):
                        self.fs.delete_file(target)  # no partial pending object left behind
                    raise
        except OSError as exc:
            raise ArchiveError(f"cannot write {target}: {exc}") from exc

    def publish_pending(self, rel: str) -> None:
        """Make the pending file of `rel` visible as `rel`, once the manifest lists it.
        Idempotent: another process (a reader, the sweep) may have published it first."""
        source, target = self.path(pending_name(rel)), self.path(rel)
        try:
            if self.local:
                os.replace(source, target)
                self._fsync_dir(target)
            else:
                self.fs.move(source, target)
        except FileNotFoundError:
            if not self.exists(rel):
                raise ArchiveError(f"archive file listed in the manifest is missing: {target}") from None
        except OSError as exc:
            if self.exists(rel):  # a concurrent publish won (an object store's move is copy + delete)
                return
            raise ArchiveError(f"cannot publish {target}: {exc}") from exc

    def staged(self, rel: str) -> bool:
        """Whether `rel` was written and waits to be published (or already is)."""
        return self.exists(pending_name(rel)) or self.exists(rel)

    def _recover(self, rel: str) -> bool:
        """A listed file missing under its name: publish its pending file if it is there
        (its writer committed, then crashed or has not renamed it yet)."""
        if not self.exists(pending_name(rel)):
            return False
        self.publish_pending(rel)
        return True

    # ------------------------------------------------------------------ checked reads
    @contextlib.contextmanager
    def reading(self, rel: str) -> Iterator[str]:
        """Map what reading the file `rel` can raise (OS, pyarrow) to an ArchiveError naming
        it; yields its absolute path."""
        target = self.path(rel)
        try:
            yield target
        except ArchiveError:
            raise
        except FileNotFoundError as exc:
            raise ArchiveFileMissingError(
                f"archive file listed in the manifest is missing: {target} (restore it from a backup)"
            ) from exc
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"cannot read archive file {target}: {exc}") from exc

    @contextlib.contextmanager
    def decoding(self, rel: str) -> Iterator[None]:
        """Map a failure to decode the cells read from `rel` (JSON, typed values) to an
        ArchiveError naming it: the file does not hold what the store wrote."""
        try:
            yield
        except ParqueDBError:
            raise  # typed already (e.g. a value whose registered type is gone)
        except DECODE_ERRORS as exc:
            raise ArchiveError(
                f"archive file {self.path(rel)} holds a value the store cannot decode ({type(exc).__name__}: "
                f"{str(exc)[:200]}): the file is damaged; restore it from a backup"
            ) from None

    def _footer_of(self, fh: Any, target: str, check: Check | None) -> pq.FileMetaData:
        """Read and parse an open file's footer, after comparing its size and footer CRC
        with the manifest's (one ranged read for footers up to 64 KiB)."""
        size = fh.size()
        if check is not None and size != check.size:
            raise _mismatch(target, f"it is {size} bytes, its manifest row says {check.size}")
        n = min(size, _TAIL_READ)
        fh.seek(size - n)
        tail = fh.read(n)
        length = _footer_length(tail, size, target)
        if length + 8 > len(tail):
            fh.seek(size - length - 8)
            tail = fh.read(length + 8)
        else:
            tail = tail[-(length + 8) :]
        crc = zlib.crc32(tail)
        if check is not None and check.footer is not None and crc != check.footer:
            raise _mismatch(target, f"its footer's CRC-32 is {crc:08x}, its manifest row says {check.footer:08x}")
        # parsed from the bytes checked, not read again (offsets point into the real file)
        return pq.ParquetFile(pa.BufferReader(_MAGIC + tail)).metadata

    def footer(self, rel: str, check: Check | None = None) -> pq.FileMetaData:
        """A file's Parquet footer (row groups, statistics, key-value metadata), checked
        against `check` (its manifest row): a ranged read at the end of the file."""
        with self.reading(rel) as target, self._open(rel) as fh:
            return self._footer_of(fh, target, check)

    def read_row_groups(
        self,
        rel: str,
        groups: list[int],
        columns: list[str] | None = None,
        *,
        metadata: pq.FileMetaData | None = None,
        check: Check | None = None,
    ) -> pa.Table:
        """Chosen row groups of chosen columns of one file, pages verified; `metadata`: its
        footer, already read by `footer` (then only those column chunks are fetched), else
        it is read and checked against `check`."""
        with self.reading(rel) as target, self._open(rel) as fh:
            if metadata is None:
                metadata = self._footer_of(fh, target, check)
            pf = pq.ParquetFile(fh, metadata=metadata, page_checksum_verification=True)
            if columns is not None:
                have = set(pf.schema_arrow.names)
                columns = [c for c in columns if c in have]  # older files lack newer columns
            return pf.read_row_groups(groups, columns=columns, use_threads=False)

    def read_table(self, rel: str, *, columns: list[str] | None = None, check: Check | None = None) -> pa.Table:
        """Chosen columns of a whole file (a column the file lacks is left out), checked."""
        with self.reading(rel) as target, self._open(rel) as fh:
            metadata = self._footer_of(fh, target, check)
            pf = pq.ParquetFile(fh, metadata=metadata, page_checksum_verification=True)
            if columns is not None:
                have = set(pf.schema_arrow.names)
                columns = [c for c in columns if c in have]
            return pf.read(columns=columns, use_threads=False)

    def verify(self, rel: str, check: Check | None, *, whole: bool = False) -> pq.FileMetaData:
        """Check a file before something other than this module reads it: its size and
        footer (cheap), and with `whole` every byte against the whole-file CRC (for DuckDB's
        own reader, which checks no page CRC; once per process and file). Returns its footer."""
        with self.reading(rel) as target, self._open(rel) as fh:
            metadata = self._footer_of(fh, target, check)
            if not whole or check is None:
                return metadata
            key = (self.uri, rel, check.text())
            with _WHOLE_LOCK:
                if key in _WHOLE_CHECKED:
                    return metadata
            fh.seek(0)
            crc = 0
            while chunk := fh.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
            if crc != check.whole:
                raise _mismatch(target, f"its CRC-32 is {crc:08x}, its manifest row says {check.whole:08x}")
            with _WHOLE_LOCK:
                _WHOLE_CHECKED[key] = None
                while len(_WHOLE_CHECKED) > _WHOLE_CHECKED_MAX:
                    del _WHOLE_CHECKED[next(iter(_WHOLE_CHECKED))]
            return metadata

    def dataset(self, rels: list[str], **options: Any) -> ds.Dataset:
        """Listed files as one lazily read Arrow dataset with page CRCs verified (DuckDB
        scans it through pyarrow); check their footers first (`verify`)."""
        import pyarrow.dataset as ds

        try:
            return ds.dataset([self.path(r) for r in rels], format=checked_format(), filesystem=self.fs, **options)
        except FileNotFoundError as exc:
            raise ArchiveFileMissingError(f"an archive file listed in the manifest is missing: {exc}") from exc
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(f"cannot read archive files {', '.join(rels[:5])}: {exc}") from exc

    def damaged(self, entries: list[Entry], failure: BaseException) -> ArchiveError:
        """The error to raise when a scan over these files failed (`failure`: DuckDB's or
        pyarrow's, which do not say which file): the first file that fails a full checked
        read names itself; else the failure, with the files' names. Only on the error path:
        it reads every file."""
        for e in entries:
            try:
                self.read_table(e.path, check=Check.of(e))
            except ArchiveError as exc:
                return exc
        names = ", ".join(self.path(e.path) for e in entries[:5]) + (" ..." if len(entries) > 5 else "")
        return ArchiveError(f"cannot read the archive files {names}: {failure}")

    def _open(self, rel: str) -> Any:
        try:
            return self.fs.open_input_file(self.path(rel))
        except FileNotFoundError:
            if not self._recover(rel):
                raise
            return self.fs.open_input_file(self.path(rel))

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ArchiveError(f"cannot delete {self.path(rel)}: {exc}") from exc

    def listing(self, directory: str) -> list[tuple[str, float]]:
        """(relative path, modification time) of the files directly in an archive folder."""
        selector = pafs.FileSelector(self.path(directory), allow_not_found=True, recursive=False)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise ArchiveError(f"cannot list {self.path(directory)}: {exc}") from exc
        out = []
        for info in infos:
            if info.type == pafs.FileType.File:
                mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
                out.append((f"{directory}/{info.base_name}", mtime))
        return out

    def namespaces(self) -> list[str]:
        """Every namespace with an `ns=<ns>` folder under a kind folder (events, rels,
        entities): one listing per kind folder."""
        found: set[str] = set()
        for kind in ("events", "rels", "entities", "entity_deltas"):
            selector = pafs.FileSelector(self.path(kind), allow_not_found=True, recursive=False)
            try:
                infos = self.fs.get_file_info(selector)
            except OSError as exc:
                raise ArchiveError(f"cannot list {self.path(kind)}: {exc}") from exc
            for info in infos:
                if info.type == pafs.FileType.Directory and info.base_name.startswith("ns="):
                    name = info.base_name[3:]
                    try:
                        check_namespace(name)
                    except InvalidNamespaceError:
                        continue  # not a folder this store made: leave it alone
                    found.add(name)
        return sorted(found)

    def exists(self, rel: str) -> bool:
        return bool(self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound)

    def local_root(self) -> str | None:
        return self.root if self.local else None
