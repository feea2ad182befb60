"""The `parquedb` command, run as a real subprocess (`python -m parquedb_orm.cli`, and the
console script once): every command's options, $PARQUEDB_URL, one-line errors with the
documented exit codes, read-only commands that create nothing, and each command's result
checked against the store."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as papq
import pytest
from backends import backend_engine, url_of

import parquedb_orm as pq
from parquedb_orm.cli import main
from parquedb_orm.cli.demo import NOT_INSTALLED
from parquedb_orm.cli.workload import build

COMMANDS = ("demo", "bench", "upgrade", "downgrade", "current", "heads", "flush", "stats", "inspect", "export", "sql")
ANSI = re.compile(r"\x1b\[")
CONTINUUM = importlib.util.find_spec("sqlalchemy_continuum") is not None


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("PARQUEDB_URL", "PARQUEDB_ARCHIVE")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "parquedb_orm.cli", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_all(*commands: list[str], env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands, started together (each process spends about a second on imports)."""
    full = {k: v for k, v in os.environ.items() if k not in ("PARQUEDB_URL", "PARQUEDB_ARCHIVE")}
    full.update(env or {})
    procs = [subprocess.Popen([sys.executable, "-m", "parquedb_orm.cli", *args], env=full, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in commands]
    done = []
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- help, usage


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: parquedb {command}")
    assert "--json" in text
    if command not in ("heads", "bench"):
        assert "--url" in text


def test_console_script_help_lists_every_command() -> None:
    import sysconfig

    script = Path(sysconfig.get_path("scripts")) / "parquedb"
    assert script.exists(), "the console script parquedb = parquedb_orm.cli:main is installed with the package"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert command in proc.stdout


def test_bad_urls_and_missing_url_give_one_line(tmp_path: Path) -> None:
    nonsense, no_url, missing_dir, refused = run_all(
        ["current", "--url", "nonsense"],
        ["stats"],
        ["upgrade", "--url", "sqlite:////missing/dir/s.db"],
        ["current", "--url", "postgresql://127.0.0.1:1/x"],
    )
    one_line_error(nonsense, 2, "invalid database URL 'nonsense'")
    one_line_error(no_url, 2, "--url URL", "$PARQUEDB_URL")
    line = one_line_error(missing_dir, 1, "unable to open database file")
    assert "sqlite:////missing/dir/s.db" in line
    one_line_error(refused, 1, "127.0.0.1", "refused")
    assert not Path("/missing").exists()


def in_process(
    capsys: pytest.CaptureFixture[str], *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """The same main() in this process: for the text variants of what a subprocess test
    already ran (a subprocess costs about a second of imports)."""
    saved = {k: os.environ.get(k) for k in ("PARQUEDB_URL", "PARQUEDB_ARCHIVE")}
    try:
        for key in saved:
            os.environ.pop(key, None)
        os.environ.update(env or {})
        code = main(list(args))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_commands_on_a_missing_file_create_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    for words in (["stats"], ["current"], ["downgrade", "base"], ["flush", "--archive", "/missing/a"],
                  ["inspect", "a/b"], ["sql", "SELECT 1"], ["export", "--to", "/missing/out", "--archive", "/m/a"]):
        code, out, err = in_process(capsys, *words, "--url", "sqlite:////missing/dir/s.db")
        assert (code, out) == (1, ""), (words, code, out, err)
        assert err.strip() == f"parquedb {words[0]}: error: no database at /missing/dir/s.db (nothing was created)"
    assert not Path("/missing").exists() and not Path("/m").exists()


def test_parquedb_url_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "env.db"
    env = {"PARQUEDB_URL": f"sqlite:///{db}"}
    up = run("upgrade", "pq0002", "--json", env=env)  # a revision alone: not taken for a URL
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout) == {"command": "upgrade", "from": [], "to": ["pq0002"]}
    down = run("downgrade", "-v", "pq0001", env=env)  # no URL needed with $PARQUEDB_URL
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "downgrade: pq0002 -> pq0001"
    assert "Running downgrade" in down.stderr  # Alembic's lines only with -v
    assert up.stderr == ""
    old_form = run("upgrade", f"sqlite:///{db}")  # the old positional URL still works
    assert old_form.returncode == 0, old_form.stderr
    assert old_form.stdout.strip() == f"upgrade: pq0001 -> {pq.migrate.heads()[0]}"
    assert old_form.stderr == ""


def test_current_writes_nothing(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    one_line_error(run("current", "--url", f"sqlite:///{fresh}"), 1, f"no database at {fresh}")
    assert list(tmp_path.iterdir()) == []
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 'there.db'}")
    db.close()
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    proc = run("current", "--json", "--url", f"sqlite:///{tmp_path / 'there.db'}")
    assert proc.returncode == 0, proc.stderr
    heads = list(pq.migrate.heads())
    assert json.loads(proc.stdout) == {"revisions": heads, "at_head": True, "heads": heads}
    assert proc.stderr == ""
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before


# --------------------------------------------------------------------------- flush, stats


def test_db_stats_counts_manual_flushes(tmp_path: Path) -> None:
    db = pq.ParqueDB(f"sqlite:///{tmp_path / 's.db'}", archive=tmp_path / "a", policy=pq.FlushPolicy(mode="manual"))
    try:
        for i in range(3):
            db.create("users", {"n": i})
            db.flush()
        stats = db.stats()
        assert stats["flushes"] == 3
        assert stats["last_flush"]["events"] == 1 and stats["last_flush"]["files"] == 2
        assert stats["last_flush_error"] is None
        db.create("users", {"n": 3})
        (tmp_path / "a" / "events" / "ns=users").rename(tmp_path / "moved")
        (tmp_path / "a" / "events" / "ns=users").write_text("not a folder")  # the next file cannot be written
        with pytest.raises(pq.ArchiveError, match="cannot write"):
            db.flush()
        stats = db.stats()
        assert stats["flushes"] == 3 and "ArchiveError" in stats["last_flush_error"]
        (tmp_path / "a" / "events" / "ns=users").unlink()
        (tmp_path / "moved").rename(tmp_path / "a" / "events" / "ns=users")
        assert db.flush().events == 1 and db.stats()["flushes"] == 4
    finally:
        db.close()


BACKENDS = ["sqlite-file", "postgresql", "mysql"]


@pytest.mark.parametrize("kind", BACKENDS)
def test_flush_then_stats(kind: str, tmp_path: Path) -> None:
    with backend_engine(kind, tmp_path) as engine:
        url = url_of(kind, tmp_path)
        archive = tmp_path / "archive"
        db = pq.ParqueDB(engine, archive=archive, policy=pq.FlushPolicy(mode="manual"))
        try:
            users = [db.create("users", {"n": i}) for i in range(5)]
            db.update("users", users[0]["$id"].split("/")[1], {"$set": {"n": 10}})
            db.link(users[0]["$id"], "follows", users[1]["$id"])
        finally:
            db.close()
        env = {"PARQUEDB_URL": url, "PARQUEDB_ARCHIVE": str(archive)}
        flushed = run("flush", "--json", env=env)
        assert flushed.returncode == 0, flushed.stderr
        result = json.loads(flushed.stdout)
        assert (result["unflushed_before"], result["events"], result["rel_events"], result["flushes"]) == (7, 6, 1, 1)
        assert result["files"] == 3  # events, entity delta, rels
        st = run("stats", "--json", env=env)
        assert st.returncode == 0, st.stderr
        stats = json.loads(st.stdout)
        assert stats["unflushed_events"] == 0 and stats["unflushed_rel_events"] == 0
        assert stats["wal"]["events"]["users"]["flushed_to_seq"] == 6
        assert stats["wal"]["rels"]["users"]["flushed_to_seq"] == 1
        assert stats["archive"]["files"] == 3 and stats["archive"]["bytes"] == result["bytes"]
        assert {k: v["rows"] for k, v in stats["archive"]["by_kind"].items()} == {"events": 6, "rels": 1,
                                                                                  "entities": 5}


# --------------------------------------------------------------------------- the demo's store


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One `parquedb demo --json` run; the other tests read its store."""
    cwd = tmp_path_factory.mktemp("demo")
    proc = run("demo", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, json.loads(proc.stdout)


def test_demo_measures_three_systems(demo: tuple[Path, dict[str, Any]]) -> None:
    cwd, data = demo
    assert (cwd / "parquedb-demo.db").is_file() and (cwd / "parquedb-demo-archive" / "events").is_dir()
    wl = build(1)
    assert data["commits_per_system"] == len(wl.ops) == 250
    ours, rows = data["systems"]["parquedb"], data["systems"]["row_per_change"]
    # the audit layout's figures follow from its code: 2 statements per create / link, 3 per update
    creates, links, updates = (sum(1 for op in wl.ops if op[0] in kinds)
                               for kinds in (("create", "order_create"), ("link",), ("update", "order_update")))
    assert (rows["statements"], rows["rows_written"], rows["rows_returned"]) == (
        2 * creates + 2 * links + 3 * updates, 2 * (creates + links + updates), updates)
    assert rows["rows_stored"] == creates + links + len(wl.ops)  # live rows + one change row each
    assert ours["commits"] == 250
    assert ours["flush"]["events"] == creates + updates and ours["flush"]["rel_events"] == links
    for name in ("statements", "rows_written", "rows_returned", "rows_stored", "file_bytes", "archive_bytes"):
        assert ours[name] > 0, name
    assert ours["rows_written"] < rows["rows_written"]
    assert ours["rows_stored"] * 5 < rows["rows_stored"]  # history lives in Parquet, not in SQL rows
    continuum = data["systems"]["continuum"]
    if CONTINUUM:
        assert continuum["measured"] is True
        assert continuum["rows_written"] > rows["rows_written"] and continuum["rows_stored"] > rows["rows_stored"]
    else:
        assert continuum == {"label": "SQLAlchemy-Continuum", "measured": False, "reason": NOT_INSTALLED}


def test_demo_piped_prints_plain_table_and_recreates(demo: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    import shutil

    cwd = tmp_path  # the fixture's run, copied: this run replaces it
    shutil.copy(demo[0] / "parquedb-demo.db", cwd / "parquedb-demo.db")
    shutil.copytree(demo[0] / "parquedb-demo-archive", cwd / "parquedb-demo-archive")
    again = run("demo", cwd=cwd)
    assert again.returncode == 0, again.stderr
    out = again.stdout
    assert "recreated parquedb-demo.db and parquedb-demo-archive/ (previous run deleted)" in out
    assert not ANSI.search(out) and not ANSI.search(again.stderr)
    header = next(line for line in out.splitlines() if "parquedb-orm" in line and "row per change" in line)
    assert "SQLAlchemy-Continuum" in header
    written = next(line for line in out.splitlines() if line.startswith("rows written (inserted"))
    numbers = [int(n.replace(",", "")) for n in re.findall(r"\b\d[\d,]*\b", written.split(")", 1)[1])]
    assert len(numbers) == (3 if CONTINUUM else 2) and all(n > 0 for n in numbers)
    if not CONTINUUM:
        assert NOT_INSTALLED in written
    assert "parquedb sql --url sqlite:///parquedb-demo.db --archive parquedb-demo-archive" in out
    assert "read_parquet('parquedb-demo-archive/events/**/*.parquet'" in out


def test_demo_refuses_a_foreign_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    con = sqlite3.connect(tmp_path / "parquedb-demo.db")
    con.execute("CREATE TABLE precious (x)")
    con.close()
    code, _out, err = in_process(capsys, "demo", "--url", f"sqlite:///{tmp_path / 'parquedb-demo.db'}",
                                 "--archive", str(tmp_path / "a"))
    assert code == 2 and "not a parquedb demo database (tables: precious)" in err
    store = tmp_path / "store.db"  # a store of the app's: its tables alone do not make it the demo's
    pq.ParqueDB(f"sqlite:///{store}").close()
    code, _out, err = in_process(capsys, "demo", "--url", f"sqlite:///{store}", "--archive", str(tmp_path / "a"))
    assert code == 2 and "is not a parquedb demo database" in err and store.stat().st_size > 0
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "events").mkdir()
    code, _out, err = in_process(capsys, "demo", "--url", f"sqlite:///{tmp_path / 'new.db'}",
                                 "--archive", str(tmp_path / "archive"))
    assert code == 2 and "is not a parquedb demo archive" in err and (tmp_path / "archive" / "events").is_dir()
    assert (tmp_path / "parquedb-demo.db").exists()


def _store_env(demo: tuple[Path, dict[str, Any]]) -> dict[str, str]:
    cwd, _data = demo
    return {"PARQUEDB_URL": f"sqlite:///{cwd / 'parquedb-demo.db'}", "PARQUEDB_ARCHIVE": str(cwd /
                                                                                            "parquedb-demo-archive")}


def test_sql_over_the_archive(demo: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    query = "SELECT ns, op, count(*) AS n FROM events GROUP BY ALL ORDER BY ALL"
    proc = run("sql", "--json", query, env=_store_env(demo))
    assert proc.returncode == 0, proc.stderr
    got = {(r["ns"], r["op"]): r["n"] for r in json.loads(proc.stdout)}
    want = Counter((op[1], "UPDATE" if "update" in op[0] else "CREATE") for op in build(1).ops if op[0] != "link")
    assert got == dict(want)
    code, out, _err = in_process(capsys, "sql", "SELECT count(*) AS links FROM rels", env=_store_env(demo))
    assert code == 0 and out.splitlines() == ["links", "-----", "100", "(1 row)"]
    one_line_error(run("sql", "SELECT nope FROM events", env=_store_env(demo)), 1, "query failed")


def test_inspect_an_entity(demo: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    ref = demo[1]["systems"]["parquedb"]["example_ref"]  # the first post
    proc = run("inspect", "--json", ref, env=_store_env(demo))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    ops = build(1).ops
    updates = sum(1 for op in ops if op[0] == "update" and op[2] == "p0")
    assert data["ref"] == ref and data["version"] == 1 + updates and data["state"]["title"] == "post 0"
    assert data["state"]["views"] == sum(op[3]["$inc"]["views"] for op in ops if op[0] == "update" and op[2] == "p0")
    assert [h["op"] for h in data["history"]].count("UPDATE") == updates
    assert [h["op"] for h in data["history"]].count("LINK") == 1  # its author
    one_line_error(run("inspect", "posts/zzzz", env=_store_env(demo)), 1, "no entity posts/zzzz")
    code, out, err = in_process(capsys, "inspect", ref, env=_store_env(demo))
    assert code == 0 and out.startswith(f"{ref}  version {data['version']}\nstate\n"), out
    assert "history (oldest first)" in out and out.count("UPDATE") == updates
    no_archive = {"PARQUEDB_URL": _store_env(demo)["PARQUEDB_URL"]}
    code, _out, err = in_process(capsys, "inspect", ref, env=no_archive)
    assert code == 2 and "this store has 10 archive files: pass --archive PATH or set $PARQUEDB_ARCHIVE" in err
    code, _out, err = in_process(capsys, "inspect", "nonsense", env=_store_env(demo))
    assert code == 2 and err.strip() == "parquedb inspect: error: expected NS/ID (e.g. users/Uk), got 'nonsense'"


def test_export_parquet_and_iceberg(
    demo: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = _store_env(demo)
    iceberg = importlib.util.find_spec("pyiceberg") is not None
    proc, *ice_run = run_all(["export", "--to", str(tmp_path / "out"), "--json"],
                             *([["export", "--to", str(tmp_path / "ice"), "--format", "iceberg", "--json"]]
                               if iceberg else []), env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    counts = {name: papq.read_table(tmp_path / "out" / f"{name}.parquet").num_rows for name in ("events", "rels",
                                                                                                "entities")}
    assert counts == result["rows"] == {"events": 150, "rels": 100, "entities": 80}
    code, _out, err = in_process(capsys, "export", "--to", str(tmp_path / "out"), env=env)
    assert code == 2 and err.strip().endswith("exists and is not an empty folder")
    if not iceberg:
        return
    from pyiceberg.catalog.sql import SqlCatalog

    assert ice_run[0].returncode == 0, ice_run[0].stderr
    catalog = SqlCatalog("export", uri=f"sqlite:///{tmp_path / 'ice' / 'catalog.db'}",
                         warehouse=(tmp_path / "ice").as_uri())
    scanned = {name: catalog.load_table(("parquedb", name)).scan().to_arrow().num_rows for name in counts}
    assert scanned == counts


def test_bench_in_process_and_heads(capsys: pytest.CaptureFixture[str]) -> None:
    """`bench` is the demo's workload in a temporary folder: the same deterministic figures
    for the row-per-change layout, at the scale asked."""
    code, out, err = in_process(capsys, "bench", "--scale", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["archive"] is None and data["scale"] == 1 and data["commits_per_system"] == 250
    assert (data["systems"]["row_per_change"]["statements"], data["systems"]["row_per_change"]["rows_stored"]) == (
        570, 430)
    assert data["systems"]["parquedb"]["flush"]["events"] == 150
    code, out, _err = in_process(capsys, "heads")
    assert (code, out.split()) == (0, list(pq.migrate.heads()))
    with pytest.raises(SystemExit) as stop:
        main(["bench", "--scale", "0"])
    assert stop.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


def test_commands_on_a_database_without_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE t (x)")
    con.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    for words in (["stats"], ["sql", "SELECT 1"], ["inspect", "a/b"]):
        code, out, err = in_process(capsys, *words, "--url", f"sqlite:///{tmp_path / 'other.db'}")
        assert (code, out) == (1, "")
        assert err.startswith(f"parquedb {words[0]}: error: no parquedb store in sqlite:///{tmp_path / 'other.db'} "
                              "(missing tables: archive_manifest, counters"), err
        assert err.strip().endswith("run `parquedb upgrade --url URL`")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # read-only: no -wal / -shm either
