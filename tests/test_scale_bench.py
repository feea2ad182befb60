"""benchmarks/scale.py end to end at a tiny N: every metric row of the table has a number."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_scale_benchmark_tiny(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks.scale import METRICS
    finally:
        sys.path.remove(str(REPO))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--n", "2000", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    md = (out / "scale.md").read_text()
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2:
            rows[cells[0].strip("*")] = cells[1]
    number = re.compile(r"^-?[\d,]+(\.\d+)?$")
    for m in METRICS:
        assert m.label in rows, f"missing row {m.label!r}"
        assert number.match(rows[m.label]), f"{m.label}: {rows[m.label]!r}"
    assert "journal_mode=wal" in md and "synchronous=NORMAL" in md
    assert "first cold get: rows read (fresh process)" in md.split("Variant:")[1]
