"""benchmarks/soak.py end to end for a few seconds at a low rate: the consistency check
passes and the report has its fields (no assertion on times or rates)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_soak_benchmark_tiny(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--seconds", "5", "--rate", "60", "--rss-every", "1",
         "--max-interval", "1", "--min-events", "20", "--history-sample", "50",
         "--out", str(out), "--json", str(tmp_path / "soak.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = json.loads((tmp_path / "soak.json").read_text())
    assert res["passed"] is True
    c = res["consistency"]
    assert c["ok"] is True and c["problems"] == []
    assert c["entities"] > 4 and c["archive_events"] == c["recorded_events"] > 0
    assert c["duckdb_view_events"] == c["recorded_events"]
    assert c["unflushed_after_flush"] == 0 and c["history_checked"] > 0
    assert res["errors"] == 0 and res["violations"] == 0
    assert res["journal_mode"] == "wal" and res["synchronous"] == "NORMAL"
    assert res["background_flushes"] >= 1  # max_interval=1 s over a 5 s run
    assert len(res["rss_series"]) >= 3 and all(s["rss"] > 0 for s in res["rss_series"])
    for kind in ("create", "update", "link", "delete", "get", "find", "related", "history"):
        assert res["ops"][kind]["ops"] > 0, kind
        assert res["ops"][kind]["p50_ms"] is not None and res["ops"][kind]["p99_ms"] is not None

    md = (out / "soak.md").read_text()
    assert "`python -m benchmarks.soak --seconds 5 --rate 60" in md
    assert "parquedb-orm at " in md and " UTC; " in md
    assert "journal_mode=wal, synchronous=NORMAL" in md
    assert "**Result: PASS**" in md
    for label in ("target rate, ops/s", "achieved rate, ops/s", "background flushes during the load", "errors",
                  "RSS verdict", "consistency check", "| op | ops | p50 ms | p99 ms |", "RSS series, MiB"):  # fmt: skip
        assert label in md, label
