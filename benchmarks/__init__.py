"""On-demand benchmark suite of parquedb-orm (never part of `pytest`).

Run the blog workload against parquedb-orm and three alternatives with the faithful
SQLite row meter::

    python -m benchmarks.blog --scale 0.1

See docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The row meter (`parquedb_meter`) is a development tool outside the package, in
# tools/meter: `python -m benchmarks.x` from the repository root imports it from the
# checkout without installing it, ahead of any installed copy.
_METER = str(Path(__file__).resolve().parent.parent / "tools" / "meter")
if _METER in sys.path:
    sys.path.remove(_METER)
sys.path.insert(0, _METER)
