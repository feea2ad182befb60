#!/usr/bin/env bash
# Runs the README's quick start as a new user does: a clean clone, a fresh virtual
# environment (no site-packages of the running one), then the README's own lines, taken
# from its ```bash blocks: the venv line and the first command (`pip install -e . &&
# parquedb demo` with the `demo` extra). The second command (`pip install -e ".[test]" && pytest`) is what
# .ci/run itself runs. Checks that the demo printed its cost table.
#
#   bash scripts/readme_quickstart.sh            # from the repository root
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

git clone -q "$repo" "$work/clone"
# the working tree as it is (uncommitted changes included), so a local run tests what is here
(cd "$repo" && git ls-files -m -o --exclude-standard -z) | (cd "$repo" && xargs -0 -r cp --parents -t "$work/clone") || true

# the README's bash blocks, in order: venv line, command 1, command 2
mapfile -t lines < <(python3 - "$work/clone/README.md" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
for block in re.findall(r"```bash\n(.*?)```", quick, flags=re.S):
    print(block.strip())
PY
)
[ "${#lines[@]}" -eq 3 ] || { echo "readme_quickstart: expected 3 bash blocks in the quick start, got ${#lines[@]}" >&2; exit 1; }

cd "$work/clone"
# a fresh environment: no venv of the caller, no PYTHONPATH
env -u VIRTUAL_ENV -u PYTHONPATH PATH="$(echo "$PATH" | tr ':' '\n' | grep -v "${VIRTUAL_ENV:-/nonexistent}" | paste -sd:)" \
  bash -euo pipefail -c "${lines[0]} && ${lines[1]}" < /dev/null > "$work/demo.out" 2>&1 || {
    cat "$work/demo.out" >&2; echo "readme_quickstart: the README's first command failed" >&2; exit 1; }
grep -q "parquedb-orm" "$work/demo.out" && grep -qi "rows written" "$work/demo.out" \
  && ! grep -q "not installed" "$work/demo.out" || {
  cat "$work/demo.out" >&2; echo "readme_quickstart: the demo did not print its cost table with all three systems measured" >&2; exit 1; }
echo "readme_quickstart: ok ($(grep -ci 'rows' "$work/demo.out") lines about rows)"
