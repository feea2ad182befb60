"""The tracked-model benchmark (benchmarks/tracked.py) cannot silently rot.

Its parquedb-orm system runs at a tiny size in-process (dev venv, no incumbents needed)
and the counts it reports are checked: one WAL row per commit whatever the number of
tracked rows changed in it, every change an event, every version read back. A second test
runs the same systems in a child process under the faithful meter (the counter-carrying
libsqlite3) and checks the exact rows written: the app's own rows plus one per commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from parquedb_meter import FaithfulMeterUnavailable, metered_env

REPO_ROOT = Path(__file__).resolve().parent.parent
METER_DIR = REPO_ROOT / "tools" / "meter"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes") or bool(os.environ.get("PARQUEDB_REQUIRE_SERVERS"))
N = 12  # orders seeded and updated per workload

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import tracked  # noqa: E402


def _check_parquedb(res: dict[str, Any], n: int) -> None:
    assert res["errors"] == [], res["errors"]
    w = res["workloads"]
    # the seed: n inserts in one commit -> one WAL row holding n events
    seed = w["updates_one_commit"]
    assert seed["seed"]["wal_rows_inserted"] == 1
    assert seed["history_after_seed"] == [1, n]
    # n updates in one commit: exactly one WAL row written for the n events
    one = w["updates_one_commit"]
    assert one["counts"]["wal_rows_inserted"] == 1
    assert (one["history_rows_added"], one["history_records_added"]) == (1, n)
    # one per commit: one WAL row per commit
    per = w["updates_per_commit"]
    assert per["counts"]["wal_rows_inserted"] == n
    assert (per["history_rows_added"], per["history_records_added"]) == (n, n)
    # the ORM-enabled bulk update(Order) is captured: one statement, one WAL row, n events
    bulk = w["bulk_update"]
    assert bulk["counts"]["wal_rows_inserted"] == 1
    assert (bulk["history_rows_added"], bulk["history_records_added"]) == (1, n)
    for key, r in w.items():
        # history read back for the first and last order: seed version + the workload's
        assert r["versions"] == [2, 2], key
        assert r["versions_after_flush"] == [2, 2], key  # and still there once archived to Parquet
        assert r["pragmas"] == {"journal_mode": "wal", "synchronous": "NORMAL"}, key
        assert "flush" in r, key


def test_parquedb_system_in_process(tmp_path: Path) -> None:
    res = tracked.run_system("parquedb", N, tmp_path, repeat=1, warmup=False)
    _check_parquedb(res, N)
    md = tracked.render_markdown(
        {"parquedb": res},
        {"size": N, "repeat": 1, "command": "test", "date": "-", "machine": "-", "versions": {}, "faithful": False},
    )
    assert "| parquedb-orm (pq.Tracked) |" in md and "| 2 / 2 | yes |" in md
    assert "then `flush()` to Parquet" in md


def test_help_and_arguments() -> None:
    with pytest.raises(SystemExit) as exc:
        tracked.main(["--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        tracked.main(["--systems", "nope"])
    assert exc.value.code == 2


_CHILD = """
import json, sys, tempfile
from pathlib import Path
from benchmarks import tracked
root = Path(tempfile.mkdtemp(prefix="pq-tracked-test-"))
out = {name: tracked.run_system(name, int(sys.argv[1]), root, repeat=1, warmup=False)
       for name in ("parquedb", "plain", "raw")}
print(json.dumps(out))
"""


def test_faithful_rows(tmp_path: Path) -> None:
    try:
        env = metered_env()
    except FaithfulMeterUnavailable as exc:
        if IN_CI:
            pytest.fail(f"faithful SQLite meter unavailable under CI: {exc}")
        pytest.skip(f"faithful SQLite meter unavailable: {exc}")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(METER_DIR), str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(N)], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    pq, plain, raw = res["parquedb"], res["plain"], res["raw"]
    assert pq["faithful"] and plain["faithful"] and raw["faithful"]
    _check_parquedb(pq, N)

    def counts(r: dict[str, Any], key: str, part: str = "counts") -> dict[str, Any]:
        c: dict[str, Any] = r["workloads"][key][part]
        return c

    # the floor: the app's own rows (no secondary index: one written row per row changed)
    for key in tracked.WORKLOADS:
        assert counts(plain, key)["rows_written"] == N, key
        assert counts(raw, key)["rows_written"] == N, key  # raw sqlite3 sends the same statements
        assert counts(raw, key)["rows_read"] == counts(plain, key)["rows_read"], key
        assert counts(pq, key)["app_rows_written"] == N, key  # the app's rows cost the same with tracking
    # parquedb-orm adds exactly one written row per commit: its WAL row
    assert counts(pq, "updates_one_commit")["rows_written"] == N + 1
    assert counts(pq, "updates_per_commit")["rows_written"] == 2 * N
    assert counts(pq, "bulk_update")["rows_written"] == N + 1
    # the seed's commit also creates the namespace's id counter row
    assert counts(pq, "updates_one_commit", "seed")["rows_written"] == N + 2
    assert counts(plain, "updates_one_commit", "seed")["rows_written"] == N
