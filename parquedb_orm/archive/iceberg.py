"""The archive published as Apache Iceberg tables `events`, `rels`, `entities` (extra
`parquedb-orm[iceberg]`, docs/iceberg.md).

Nothing is rewritten: each table registers the archive's own Parquet files (the manifest's
rows of its kinds: `events` + `bulk_events`, `rels`, `entities` + `bulk`), partitioned by
identity on the files' `ns` column when they have one. The catalog is a pyiceberg
`SqlCatalog` in the store's own database (its tables `iceberg_tables` and
`iceberg_namespace_properties`) unless the application passes one; the warehouse is the
archive location, the tables' metadata under `<archive>/_iceberg/<table>/` (a folder
name hive readers skip).

Exactly once. Our manifest (SQL) is the truth; a table is made equal to it: `publish`
diffs a table's current data files against the manifest's files of its kinds and
commits ONE snapshot per table that differs (a fast append for a flush, an overwrite
that deletes the merged sources and adds the merged file for a compaction). The flush
calls it after its SQL commit (order: Parquet write, manifest commit, Iceberg commit),
the store at open: a crash between any two steps is repaired by the next publish,
nothing is added twice (the diff) and nothing is lost (the manifest still lists it).
Each snapshot's summary says what it covers: `parquedb.seq.<ns>` = "first-last" of the
sequences it added, `parquedb.covers.<ns>` = the highest sequence the table holds for
the namespace after it (time travel by flush).

Columns: the Iceberg schema is derived from parquet.*_SCHEMA at run time: JSON columns
are Iceberg `string` (the Arrow JSON extension's storage type), dictionary columns their
value type, UTC timestamps `timestamptz`. Columns a file has beyond the table's schema
(an entities file's shredded `f_<k>` columns, whose type may differ between files) are
not part of the table: the table's name mapping gives them ids outside the schema, so
every reader skips them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlalchemy import Engine

from parquedb_orm.archive import parquet
from parquedb_orm.archive.files import Archive, Check
from parquedb_orm.errors import ArchiveError, ConfigurationError
from parquedb_orm.sql import manifest

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import Table

log = logging.getLogger("parquedb_orm")

#: Iceberg table -> the manifest kinds whose files it registers
TABLES: dict[str, tuple[str, ...]] = {
    "events": ("events", manifest.BULK_EVENTS),
    "rels": ("rels",),
    "entities": ("entities", manifest.BULK),
}
#: kinds whose ranges are sequences (bulk kinds range over id numbers)
_SEQ_KINDS = frozenset(manifest.KINDS)
#: where each table's metadata lives, under the archive root
METADATA_FOLDER = "_iceberg"
#: ids given in the name mapping to file columns outside the schema (never schema ids)
_EXTRA_ID_BASE = 1_000_000
_NAMESPACE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: JSON text columns of files written before the JSON logical type
_OLD_JSON = frozenset({"state", "data", "before", "after", "meta", "changes", "types"})
#: archive option -> pyiceberg FileIO property (PyArrowFileIO)
_S3_PROPS = {
    "access_key": "s3.access-key-id",
    "secret_key": "s3.secret-access-key",
    "session_token": "s3.session-token",
    "region": "s3.region",
}


@dataclass(frozen=True)
class Iceberg:
    """Publish the archive as Iceberg tables (`ParqueDB(..., iceberg=pq.Iceberg())`).

    `catalog`: None (a pyiceberg SqlCatalog in the store's own database), a pyiceberg
    `Catalog`, or a catalog name that `pyiceberg.catalog.load_catalog(name, **properties)`
    loads (from `properties` or ~/.pyiceberg.yaml). `namespace`: the Iceberg namespace of
    the three tables. `properties`: extra catalog properties (for the built-in catalog
    too, e.g. FileIO settings)."""

    catalog: Any = None
    namespace: str = "parquedb"
    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE.fullmatch(self.namespace):
            raise ConfigurationError(
                f"Iceberg namespace must be a name of letters, digits and _ (not starting with a digit), "
                f"got {self.namespace!r}"
            )
        if not isinstance(self.properties, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.properties.items()
        ):
            raise ConfigurationError(f"Iceberg properties must map str to str, got {self.properties!r}")
        cat = self.catalog
        if (
            cat is not None
            and not isinstance(cat, str)
            and not all(hasattr(cat, a) for a in ("load_table", "create_table", "create_namespace"))
        ):
            raise ConfigurationError(
                "Iceberg catalog must be None (the store's database), a pyiceberg Catalog or a catalog name, "
                f"got {type(cat).__name__}"
            )
        if isinstance(cat, str) and not cat.strip():
            raise ConfigurationError("Iceberg catalog name is empty")


def _require() -> None:
    try:
        import pyiceberg.catalog.sql  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"Iceberg publishing needs the iceberg extra: pip install 'parquedb-orm[iceberg]' ({exc})"
        ) from None


# ---------------------------------------------------------------------- schemas
def _plain(field_: pa.Field) -> pa.Field:
    """An Arrow field as Iceberg sees it: an extension type (JSON) as its storage type,
    a dictionary as its values."""
    t = field_.type
    if isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.field(field_.name, t, nullable=True)


def plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([_plain(f) for f in schema])


def archive_schemas() -> dict[str, pa.Schema]:
    """Each table's Arrow schema, from the archive's current file schemas."""
    return {
        "events": plain_schema(parquet.EVENTS_SCHEMA),
        "rels": plain_schema(parquet.RELS_SCHEMA),
        "entities": plain_schema(parquet.ENTITIES_SCHEMA),
    }


def _json_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if isinstance(f.type, pa.BaseExtensionType) or f.name in _OLD_JSON]


# ---------------------------------------------------------------------- catalog
def _fileio_properties(archive: Archive) -> dict[str, str]:
    """pyiceberg FileIO properties reaching the archive's objects with the archive's own
    S3 options (the built-in catalog; a catalog the application passes brings its own)."""
    if archive.local:
        return {}
    opts = archive.options
    props = {_S3_PROPS[k]: v for k, v in opts.items() if k in _S3_PROPS}
    if "endpoint_override" in opts:
        endpoint = opts["endpoint_override"]
        if "://" not in endpoint:
            endpoint = f"{opts.get('scheme', 'https')}://{endpoint}"
        props["s3.endpoint"] = endpoint
    return props


def open_catalog(option: Iceberg, engine: Engine, archive: Archive) -> Catalog:
    """The catalog an option names (see `Iceberg`), checked by listing its namespaces."""
    _require()
    from pyiceberg.catalog import load_catalog
    from pyiceberg.catalog.sql import SqlCatalog

    cat = option.catalog
    try:
        if cat is None:
            url = engine.url
            if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
                raise ConfigurationError(
                    "an in-memory SQLite database cannot hold the Iceberg catalog other engines read: "
                    "use a SQLite file, PostgreSQL or MariaDB, or pass iceberg=pq.Iceberg(catalog=...)"
                )
            props = {
                "uri": url.render_as_string(hide_password=False),
                "warehouse": archive.uri,
                **_fileio_properties(archive),
                **option.properties,
            }
            catalog: Catalog = SqlCatalog("parquedb", **props)
        elif isinstance(cat, str):
            catalog = load_catalog(cat, **option.properties)
        else:
            catalog = cat
        catalog.list_namespaces()
    except ConfigurationError:
        raise
    except Exception as exc:  # a driver, network or pyiceberg error: the catalog is unusable
        name = "the store's database" if cat is None else repr(cat if isinstance(cat, str) else type(cat).__name__)
        raise ConfigurationError(f"cannot use the Iceberg catalog {name}: {type(exc).__name__}: {exc}") from None
    return catalog


# ---------------------------------------------------------------------- publisher
@dataclass
class _Known:
    """What this process knows of a table: its snapshot and the data files it lists."""

    table: Table
    snapshot_id: int | None
    files: dict[str, DataFile]


class Publisher:
    """Keeps the Iceberg tables equal to the manifest (module doc)."""

    def __init__(self, option: Iceberg, catalog: Catalog, archive: Archive, engine: Engine) -> None:
        self.option = option
        self.catalog = catalog
        self.archive = archive
        self.engine = engine
        self._lock = threading.Lock()
        self._known: dict[str, _Known] = {}

    # ------------------------------------------------------------ naming
    def identifier(self, table: str) -> tuple[str, str]:
        return (self.option.namespace, table)

    def uri(self, rel: str) -> str:
        self.archive.path(rel)  # refuses a path outside the archive
        return f"{self.archive.uri}/{rel}"

    # ------------------------------------------------------------ tables
    def _table(self, name: str) -> Table:
        from pyiceberg.exceptions import NoSuchTableError

        ident = self.identifier(name)
        self.catalog.create_namespace_if_not_exists(self.option.namespace)
        try:
            return self.catalog.load_table(ident)
        except NoSuchTableError:
            pass
        schema = archive_schemas()[name]
        props = {f"write.metadata.metrics.column.{c}": "none" for c in _json_columns(schema)}
        props["parquedb.kinds"] = ",".join(TABLES[name])
        location = f"{self.archive.uri}/{METADATA_FOLDER}/{name}"
        try:
            table = self.catalog.create_table(ident, schema=schema, location=location, properties=props)
        except Exception as exc:
            from pyiceberg.exceptions import TableAlreadyExistsError

            if isinstance(exc, TableAlreadyExistsError):  # another process created it first
                return self.catalog.load_table(ident)
            raise
        if "ns" in schema.names:
            with table.update_spec() as spec:
                spec.add_identity("ns")
        return table

    def _load(self, name: str, refresh: bool = False) -> _Known:
        known = self._known.get(name)
        if known is not None and not refresh:
            return known
        table = self._table(name)
        snap = table.current_snapshot()
        files: dict[str, DataFile] = {}
        if snap is not None:
            for mf in snap.manifests(table.io):
                for entry in mf.fetch_manifest_entry(table.io, discard_deleted=True):
                    files[entry.data_file.file_path] = entry.data_file
        known = self._known[name] = _Known(table, None if snap is None else snap.snapshot_id, files)
        return known

    # ------------------------------------------------------------ publish
    def publish(self, entries: list[manifest.Entry] | None = None) -> dict[str, int]:
        """Make every table list exactly the manifest's files of its kinds (`entries`:
        the whole manifest, read here when not given). Returns, per table, the number of
        snapshots committed (0 or 1)."""
        if entries is None:
            with self.engine.connect() as conn:
                entries = manifest.load_all(conn)
        done: dict[str, int] = {}
        with self._lock:
            for name, kinds in TABLES.items():
                want = {self.uri(e.path): e for e in entries if e.kind in kinds}
                try:
                    done[name] = self._publish_table(name, want)
                except ArchiveError:
                    raise
                except Exception as exc:
                    self._known.pop(name, None)  # read it again next time
                    raise ArchiveError(
                        f"cannot publish the Iceberg table {'.'.join(self.identifier(name))}: "
                        f"{type(exc).__name__}: {exc} (the archive is intact; the next flush or open retries)"
                    ) from exc
        return done

    def _publish_table(self, name: str, want: dict[str, manifest.Entry]) -> int:
        from pyiceberg.exceptions import CommitFailedException

        for attempt in range(3):
            known = self._load(name, refresh=attempt > 0)
            add = [e for path, e in want.items() if path not in known.files]
            gone = [df for path, df in known.files.items() if path not in want]
            if not add and not gone:
                return 0
            try:
                self._commit(known, add, gone, want)
            except CommitFailedException:
                continue  # another process committed first: diff again against its snapshot
            return 1
        raise ArchiveError(f"Iceberg table {name}: three commits in a row lost a race; the next publish retries")

    def _commit(
        self, known: _Known, add: list[manifest.Entry], gone: list[DataFile], want: dict[str, manifest.Entry]
    ) -> None:
        table = known.table
        added = [self._data_file(table, e) for e in add]
        summary = _summary(add, want)
        mapping = _name_mapping(table, [cols for _df, cols in added])
        with table.transaction() as tx:
            if mapping is not None:
                tx.set_properties({"schema.name-mapping.default": mapping})
            update = tx.update_snapshot(snapshot_properties=summary)
            producer: Any = update.overwrite() if gone else update.fast_append()
            with producer:
                for df in gone:
                    producer.delete_data_file(df)
                for df, _cols in added:
                    producer.append_data_file(df)
        snap = table.current_snapshot()
        known.snapshot_id = None if snap is None else snap.snapshot_id
        for df in gone:
            known.files.pop(df.file_path, None)
        for df, _cols in added:
            known.files[df.file_path] = df

    def _data_file(self, table: Table, entry: manifest.Entry) -> tuple[DataFile, list[str]]:
        """The Iceberg DataFile of one archive file, from its footer (one ranged read, checked
        against its manifest row by the archive's reader), as
        pyiceberg's add_files builds it, except that columns outside the table's schema
        are allowed (their statistics are left out). Returns it and those columns."""
        from pyiceberg.io.pyarrow import (
            _check_pyarrow_schema_compatible,
            _pyarrow_to_schema_without_ids,
            compute_statistics_plan,
            data_file_statistics_from_parquet_metadata,
            parquet_path_to_id_mapping,
        )
        from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
        from pyiceberg.schema import Schema
        from pyiceberg.types import NestedField

        md = table.metadata
        schema = md.schema()
        path = self.uri(entry.path)
        footer = self.archive.footer(entry.path, Check.of(entry))
        # a checked row's size is the file's (verified above); an older row's is looked up
        size = entry.bytes if entry.checksum is not None else len(table.io.new_input(path))
        arrow = plain_schema(footer.schema.to_arrow_schema())
        names = {f.name for f in schema.fields}
        missing = names - set(arrow.names)
        if missing:
            raise ArchiveError(f"archive file {path} lacks the Iceberg table's columns {sorted(missing)}")
        _check_pyarrow_schema_compatible(
            schema, pa.schema([f for f in arrow if f.name in names]), format_version=md.format_version
        )
        extra = [f for f in arrow if f.name not in names]
        fields = list(schema.fields)
        if extra:
            top = schema.highest_field_id
            typed = _pyarrow_to_schema_without_ids(pa.schema(extra)).fields
            fields += [NestedField(top + 1 + i, f.name, f.field_type, required=False) for i, f in enumerate(typed)]
        wide = Schema(*fields, schema_id=schema.schema_id)
        props = dict(md.properties)
        for f in extra:
            props[f"write.metadata.metrics.column.{f.name}"] = "none"
        stats = data_file_statistics_from_parquet_metadata(
            parquet_metadata=footer,
            stats_columns=compute_statistics_plan(wide, props),
            parquet_column_mapping=parquet_path_to_id_mapping(wide),
        )
        ids = {f.field_id for f in schema.fields}
        kept: dict[str, Any] = {
            attr: {k: v for k, v in getattr(stats, attr).items() if k in ids}
            for attr in ("column_sizes", "value_counts", "null_value_counts", "nan_value_counts", "column_aggregates")
        }
        stats = dataclasses.replace(stats, **kept)
        data_file = DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=stats.partition(md.spec(), schema),
            file_size_in_bytes=size,
            sort_order_id=None,
            equality_ids=None,
            key_metadata=None,
            **stats.to_serialized_dict(),
        )
        data_file.spec_id = md.default_spec_id  # not a field of the struct; deletes need it
        return data_file, [f.name for f in extra]


def _summary(add: list[manifest.Entry], want: dict[str, manifest.Entry]) -> dict[str, str]:
    """Snapshot summary properties: the sequence range each namespace's added files cover
    and the highest sequence the table then holds per namespace."""
    out: dict[str, str] = {}
    ranges: dict[str, tuple[int, int]] = {}
    for e in add:
        if e.kind in _SEQ_KINDS:
            lo, hi = ranges.get(e.ns, (e.first_seq, e.last_seq))
            ranges[e.ns] = (min(lo, e.first_seq), max(hi, e.last_seq))
    for ns, (lo, hi) in sorted(ranges.items()):
        out[f"parquedb.seq.{ns}"] = f"{lo}-{hi}"
    covers: dict[str, int] = {}
    for e in want.values():
        if e.kind in _SEQ_KINDS:
            covers[e.ns] = max(covers.get(e.ns, 0), e.last_seq)
    for ns, hi in sorted(covers.items()):
        out[f"parquedb.covers.{ns}"] = str(hi)
    out["parquedb.files"] = str(len(want))
    return out


def _name_mapping(table: Table, extra: list[list[str]]) -> str | None:
    """The table's name mapping with ids (outside the schema) for file columns it lacks,
    or None when it already names them all. Readers of files without field ids map
    columns by this; a column mapped to an id not in the schema is not read."""
    from pyiceberg.table.name_mapping import MappedField, NameMapping, parse_mapping_from_json

    current = table.metadata.name_mapping()
    base = current if current is not None else table.schema().name_mapping
    named = {n for f in base.root for n in f.names}
    new = sorted({c for cols in extra for c in cols} - named)
    if not new and current is not None:
        return None
    top = max([_EXTRA_ID_BASE - 1, *(f.field_id for f in base.root if f.field_id is not None)])
    more = [MappedField.model_validate({"field-id": top + 1 + i, "names": [c]}) for i, c in enumerate(new)]
    fields = [*base.root, *more]
    text = NameMapping(fields).model_dump_json()
    parse_mapping_from_json(text)  # what readers will parse
    return text


def open_publisher(option: Iceberg, engine: Engine, archive: Archive) -> Publisher:
    """A publisher for an opened store; `publish()` it once to reconcile."""
    if not isinstance(option, Iceberg):
        raise ConfigurationError(f"iceberg must be a parquedb_orm.Iceberg, got {type(option).__name__}")
    return Publisher(option, open_catalog(option, engine, archive), archive, engine)
