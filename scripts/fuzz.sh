#!/usr/bin/env bash
# The long fuzz run: each target (codec, records, filters, operators, api) for N seconds
# (default 300); new failing inputs are saved under tests/fuzz/corpus/<target>/found-*.
# Extra arguments go to `python -m tests.fuzz` (e.g. --target codec). docs/development.md
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
shift || true
exec env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python -m tests.fuzz --seconds "$seconds" "$@"
