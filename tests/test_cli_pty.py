"""`parquedb demo` and `parquedb flush` on a real pseudo-terminal (pexpect): rich tables
and progress bars render there, with colours; piped, the same commands print plain text
without one ANSI escape and without progress."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import parquedb_orm as pq

pexpect = pytest.importorskip("pexpect", reason="pexpect is in the test extra")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOX = ("┏", "┃", "━", "│", "└")  # rich's default table box (HEAVY_HEAD)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PARQUEDB_URL", "PARQUEDB_ARCHIVE", "NO_COLOR")}
    env.update({"TERM": "xterm-256color", "COLUMNS": "200", "LINES": "50"})
    return env


def _on_terminal(args: list[str], cwd: Path) -> str:
    child = pexpect.spawn(sys.executable, ["-m", "parquedb_orm.cli", *args], cwd=str(cwd), env=_env(),
                          encoding="utf-8", dimensions=(50, 200), timeout=120)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    return str(child.before)


def _piped(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "parquedb_orm.cli", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=120, check=False)


def test_demo_on_a_terminal_renders_rich_tables(tmp_path: Path) -> None:
    out = _on_terminal(["demo"], tmp_path)
    assert ANSI.search(out), "colours / cursor control on a terminal"
    plain = ANSI.sub("", out)
    assert all(ch in plain for ch in BOX), plain[-2000:]
    assert "what it cost" in plain and "parquedb-orm" in plain and "SQLAlchemy-Continuum" in plain
    assert "parquedb-orm: flush to Parquet" in plain  # the progress bar's last description
    assert "row per change (audit table)" in plain
    if importlib.util.find_spec("sqlalchemy_continuum") is None:  # values are text, never rich markup
        assert "not installed (pip install parquedb-orm[demo])" in plain
    assert (tmp_path / "parquedb-demo.db").is_file()


def test_flush_on_a_terminal_and_piped(tmp_path: Path) -> None:
    url, archive = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "archive"
    db = pq.ParqueDB(url, archive=archive, policy=pq.FlushPolicy(mode="manual"))
    try:
        for i in range(3):
            db.create("items", {"n": i})
    finally:
        db.close()
    out = ANSI.sub("", _on_terminal(["flush", "--url", url, "--archive", str(archive)], tmp_path))
    assert "flushing the WAL to Parquet" in out  # the progress bar
    assert all(ch in out for ch in BOX)
    assert re.search(r"│ events flushed\s+│\s+3\s+│", out), out

    db = pq.ParqueDB(url, archive=archive, policy=pq.FlushPolicy(mode="manual"))
    try:
        db.create("items", {"n": 3})
    finally:
        db.close()
    piped = _piped(["flush", "--url", url, "--archive", str(archive)], tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stdout and "\x1b" not in piped.stderr
    assert "flushing the WAL" not in piped.stdout + piped.stderr  # no progress off a terminal
    assert not any(ch in piped.stdout for ch in BOX)
    assert re.search(r"^events flushed\s+1$", piped.stdout, re.MULTILINE), piped.stdout
