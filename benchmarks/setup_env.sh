#!/usr/bin/env bash
# Create the dedicated virtualenv for the benchmark suite: benchmarks/.venv
#
#   bash benchmarks/setup_env.sh            # idempotent; prints the venv's python
#
# Why a separate venv: eventsourcing-sqlalchemy 1.0.x pins sqlalchemy < 2.1, so the
# comparison runs every system (parquedb-orm included) on SQLAlchemy 2.0.x. The
# tracked-model benchmark (benchmarks/tracked.py) adds sqlalchemy-history, the
# maintained fork of SQLAlchemy-Continuum (module sqlalchemy_history).
# Env: PYTHON  base interpreter (default python3), BENCH_VENV  venv folder.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${BENCH_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install -q --upgrade pip >&2
"$venv/bin/python" -m pip install -q \
  "sqlalchemy>=2.0,<2.1" \
  "eventsourcing>=9.3,<10" \
  "eventsourcing-sqlalchemy>=1.0,<2" \
  "sqlalchemy-continuum>=1.4" \
  "sqlalchemy-history>=2.1" \
  "matplotlib>=3.8" >&2
"$venv/bin/python" -m pip install -q -e "$repo" >&2
# the faithful row meter's libsqlite3 (reused when already built)
if [ -x "$repo/scripts/build_metered_sqlite.sh" ] || [ -f "$repo/scripts/build_metered_sqlite.sh" ]; then
  PYTHON="$venv/bin/python" bash "$repo/scripts/build_metered_sqlite.sh" >/dev/null
fi
"$venv/bin/python" - >&2 <<'PY'
import sqlalchemy, eventsourcing, eventsourcing_sqlalchemy, sqlalchemy_continuum, sqlalchemy_history, matplotlib, parquedb_orm
from importlib.metadata import version
for d in ("sqlalchemy", "eventsourcing", "eventsourcing-sqlalchemy", "sqlalchemy-continuum", "sqlalchemy-history", "matplotlib", "parquedb-orm"):
    print(f"  {d} {version(d)}")
PY
printf '%s\n' "$venv/bin/python"
