"""examples/quickstart.py runs as a new user would run it, and says what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from parquedb_meter import metered_lib_dir

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "quickstart.py"
STEP_COST = re.compile(r"^    -> (\d+) SQL statements?, (\d+) rows? written", re.M)
SUMMARY = re.compile(r"^Summary: (\d+) steps, (\d+) SQL statements, (\d+) rows written", re.M)


def run(cwd: Path, env: dict[str, str] | None = None) -> tuple[str, float]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout, elapsed


def costs(out: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in STEP_COST.findall(out)]


def test_quickstart_runs_and_reports_costs(tmp_path: Path) -> None:
    out, elapsed = run(tmp_path)
    for line in (
        "[1] create 3 users",
        "create 4 posts in one transaction",
        "update a post with several operators",
        "find posts with views > 20",
        "related: a post's author (outbound) and Ann's posts (inbound)",
        "history of the first post",
        "Events all the way down",
        "author of 'Parquet for history': ['Bob']",
        "posts by Ann: ['Hello, parquedb', 'Events all the way down']",
        "as of version 1:",
    ):
        assert line in out, f"{line!r} missing from:\n{out}"
    assert re.search(r"^    CREATE +v1", out, re.M) and re.search(r"^    UPDATE +v3", out, re.M)
    summary = SUMMARY.search(out)
    assert summary is not None, out
    steps = costs(out)
    assert len(steps) == int(summary.group(1)) >= 10
    assert sum(s for s, _ in steps) == int(summary.group(2))
    assert sum(w for _, w in steps) == int(summary.group(3))
    # what the design promises, as the example prints it
    assert steps[1][1] <= 3, out  # 4 creates + 4 links in one commit: a WAL row each (+ the id counter)
    assert steps[2][1] == 1, out  # one update, one written row
    assert steps[5] == (0, 0), out  # a get after a write is served from memory
    assert out.rstrip().splitlines()[-1].startswith("Summary:")
    assert (tmp_path / "quickstart.db").is_file() and (tmp_path / "archive").is_dir()
    assert elapsed < 5.0 or os.environ.get("CI"), f"quickstart took {elapsed:.1f} s"


def test_quickstart_reruns_cleanly(tmp_path: Path) -> None:
    first, _ = run(tmp_path)
    second, _ = run(tmp_path)  # the database is recreated: same ids, same versions, same costs
    strip = re.compile(r", [\d.]+ s\.$", re.M)
    assert strip.sub("", first) == strip.sub("", second)


@pytest.mark.skipif(
    not (metered_lib_dir() / "libsqlite3.so.0").is_file() or not sys.platform.startswith("linux"),
    reason="the row-counting libsqlite3 is not built (scripts/build_metered_sqlite.sh)",
)
def test_quickstart_prints_billed_rows_on_the_metered_sqlite(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(metered_lib_dir()), env.get("LD_LIBRARY_PATH")) if p)
    out, _ = run(tmp_path, env)
    billed = re.findall(r"billed \(D1/Turso\): (\d+) rows? read, (\d+) written", out)
    if not billed:
        pytest.skip("the metered libsqlite3 did not load in this interpreter")
    assert len(billed) == len(costs(out))
    assert "(billed: " in out.splitlines()[-1]
    assert billed[5] == ("0", "0")  # the cached get reads nothing
