#!/usr/bin/env bash
# Build a libsqlite3.so.0 that carries libSQL's row counters (rows read /
# rows written, as Cloudflare D1 / Durable Objects and Turso bill them).
#
#   scripts/build_metered_sqlite.sh            # prints the folder holding the lib
#   LD_LIBRARY_PATH=$(scripts/build_metered_sqlite.sh) python -c 'import sqlite3'
#
# Idempotent: a finished build whose stamp (pinned version, compile flags,
# patch) matches is reused at once.  No stdin is read (fine under CI=true).
# Progress goes to stderr; stdout carries only the library folder.
#
# Env: PARQUEDB_METER_DIR  cache folder (default ~/.cache/parquedb-orm/sqlite-meter)
#      PYTHON              interpreter used for the self-check (default python3)
#      CC                  C compiler (default gcc, else cc)
set -euo pipefail

# SQLite source: the amalgamation shipped inside the better-sqlite3 npm
# package (deps/sqlite3/sqlite3.c).  Pinned: the patch is made for 3.50.4.
BSQ_VERSION="12.4.1"
SQLITE_VERSION="3.50.4"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
patch_file="$here/sqlite_meter.patch"
out_dir="${PARQUEDB_METER_DIR:-${HOME:-/tmp}/.cache/parquedb-orm/sqlite-meter}"
python="${PYTHON:-python3}"
cc="${CC:-$(command -v gcc || command -v cc || true)}"

log() { printf 'build_metered_sqlite: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -f "$patch_file" ] || die "missing $patch_file"

# Same defines as Debian's libsqlite3-0 where they matter to Python's _sqlite3
# and to ordinary applications (load_extension, column metadata, FTS, JSON...).
CFLAGS_SQLITE=(
  -DSQLITE_THREADSAFE=1
  -DSQLITE_ENABLE_COLUMN_METADATA
  -DSQLITE_ENABLE_DBSTAT_VTAB
  -DSQLITE_ENABLE_FTS3 -DSQLITE_ENABLE_FTS3_PARENTHESIS -DSQLITE_ENABLE_FTS3_TOKENIZER
  -DSQLITE_ENABLE_FTS4 -DSQLITE_ENABLE_FTS5
  -DSQLITE_ENABLE_MATH_FUNCTIONS
  -DSQLITE_ENABLE_PREUPDATE_HOOK -DSQLITE_ENABLE_SESSION
  -DSQLITE_ENABLE_RTREE
  -DSQLITE_ENABLE_STMTVTAB
  -DSQLITE_ENABLE_UNLOCK_NOTIFY
  -DSQLITE_LIKE_DOESNT_MATCH_BLOBS
  -DSQLITE_MAX_SCHEMA_RETRY=25
  -DSQLITE_MAX_VARIABLE_NUMBER=250000
  -DSQLITE_SECURE_DELETE
  -DSQLITE_SOUNDEX
  -DSQLITE_USE_URI=1
  -DHAVE_USLEEP=1 -DHAVE_LOCALTIME_R=1 -DHAVE_GMTIME_R=1 -DHAVE_ISNAN=1
  -DHAVE_FDATASYNC=1 -DHAVE_STRCHRNUL=1 -DHAVE_MALLOC_USABLE_SIZE=1
  -DSQLITE_EXTRA_INIT=parquedb_meter_init
)

# The stamp covers everything that shapes the binary.
stamp="$(
  {
    printf '%s\n' "$BSQ_VERSION" "$SQLITE_VERSION" "${CFLAGS_SQLITE[@]}"
    cat "$patch_file"
  } | sha256sum | cut -c1-32
)"

lib="$out_dir/libsqlite3.so.0"
if [ -f "$lib" ] && [ "$(cat "$out_dir/.stamp" 2>/dev/null || true)" = "$stamp" ]; then
  printf '%s\n' "$out_dir"
  exit 0
fi

mkdir -p "$out_dir"
# Serialise concurrent builds (pytest-xdist workers, parallel CI steps).
exec 9>"$out_dir/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi
if [ -f "$lib" ] && [ "$(cat "$out_dir/.stamp" 2>/dev/null || true)" = "$stamp" ]; then
  printf '%s\n' "$out_dir"
  exit 0
fi

[ -n "$cc" ] || die "no C compiler (install gcc)"
command -v patch >/dev/null 2>&1 || die "'patch' not found (apt-get install patch)"

work="$(mktemp -d "${TMPDIR:-/tmp}/pqm-sqlite.XXXXXX")"
trap 'rm -rf "$work"' EXIT

tarball="$out_dir/src/better-sqlite3-$BSQ_VERSION.tgz"
if [ ! -s "$tarball" ]; then
  command -v npm >/dev/null 2>&1 || die "npm not found: needed once to fetch the SQLite amalgamation (better-sqlite3@$BSQ_VERSION)"
  log "fetching better-sqlite3@$BSQ_VERSION (SQLite $SQLITE_VERSION amalgamation) from the npm registry"
  mkdir -p "$out_dir/src" "$work/npm"
  (cd "$work/npm" && npm pack "better-sqlite3@$BSQ_VERSION" --silent --loglevel=error </dev/null >/dev/null) \
    || die "npm pack better-sqlite3@$BSQ_VERSION failed"
  mv "$work/npm/better-sqlite3-$BSQ_VERSION.tgz" "$tarball"
fi

mkdir -p "$work/src"
tar -xzf "$tarball" -C "$work/src" package/deps/sqlite3/sqlite3.c package/deps/sqlite3/sqlite3.h
src="$work/src/package/deps/sqlite3"
grep -q "^#define SQLITE_VERSION *\"$SQLITE_VERSION\"" "$src/sqlite3.c" \
  || die "unexpected SQLite version in better-sqlite3@$BSQ_VERSION (want $SQLITE_VERSION)"

log "patching sqlite3.c"
(cd "$src" && patch -p1 --quiet --forward <"$patch_file") || die "patch did not apply"

log "compiling (about a minute)"
"$cc" -O2 -fPIC -shared -g0 -w \
  -Wl,-soname,libsqlite3.so.0 \
  "${CFLAGS_SQLITE[@]}" \
  -o "$work/libsqlite3.so.0" "$src/sqlite3.c" \
  -lpthread -ldl -lm || die "compiling sqlite3.c with $cc failed"

# Self-check before publishing: Python must load *this* library and see the
# counters through its own sqlite3 module.
log "checking"
LD_LIBRARY_PATH="$work${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$python" - "$SQLITE_VERSION" <<'PY' >&2 || die "self-check failed"
import ctypes, sqlite3, sys
want = sys.argv[1]
assert sqlite3.sqlite_version == want, (sqlite3.sqlite_version, want)
c = sqlite3.connect(":memory:")
handle = c.execute("SELECT parquedb_meter_db_handle()").fetchone()[0]
assert handle, "parquedb_meter_db_handle() returned 0"
lib = ctypes.CDLL("libsqlite3.so.0")
assert lib.parquedb_meter_version() >= 1
print("build_metered_sqlite: ok, sqlite", sqlite3.sqlite_version)
PY

cp "$work/libsqlite3.so.0" "$out_dir/libsqlite3.so.0.tmp.$$"
mv -f "$out_dir/libsqlite3.so.0.tmp.$$" "$lib"
printf '%s\n' "$stamp" >"$out_dir/.stamp"
log "built $lib"
printf '%s\n' "$out_dir"
