"""The blog benchmark still runs (a tiny scale, parquedb-orm and the row-per-change stores: through
SQLAlchemy and on raw sqlite3), so a refactoring that breaks its imports fails here rather than when
someone measures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_blog_benchmark_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.blog", "--scale", "0.01", "--no-venv", "--systems", "parquedb,naive,raw",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "blog.md").read_text()
    assert "failed" not in table, [line for line in table.splitlines() if "fail" in line]
    for system in ("parquedb-orm", "naive (row per change)", "raw sqlite3, row per change"):  # each measured
        assert any(line.startswith(f"| {system} | ") and "n/a" not in line for line in table.splitlines()), table
