#!/usr/bin/env bash
# Line coverage of protocol/, actors/ and node/ by their tests
# (cargo-llvm-cov, source-based coverage).
#
#   bash scripts/coverage.sh [--servers] [extra cargo test args, e.g. --lib]
#
# cargo-llvm-cov is installed into ${RINGLIMIT_CACHE:-$HOME/.cache/ringlimit}/tools
# on first use; it needs rustup's llvm-tools-preview component, added here
# when missing. Tests that need Redis or a CQL server run when
# RINGLIMIT_TEST_REDIS_URL / RINGLIMIT_TEST_CQL name one and are skipped
# otherwise; `--servers` starts both for the run, as scripts/test.sh does.
#
# Writes $CACHE/coverage/summary.json (llvm-cov's export), an HTML report in
# $CACHE/coverage/html, and prints the line coverage per crate and the
# least covered files.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${RINGLIMIT_CACHE:-$HOME/.cache/ringlimit}"
TOOLS="$CACHE/tools"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
OUT="$CACHE/coverage"

log() { printf 'coverage.sh: %s\n' "$*" >&2; }

if ! rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; then
  log "adding the llvm-tools-preview component"
  rustup component add llvm-tools-preview
fi
if [[ ! -x "$TOOLS/bin/cargo-llvm-cov" ]]; then
  log "installing cargo-llvm-cov into $TOOLS"
  cargo install --locked --root "$TOOLS" cargo-llvm-cov
fi
export PATH="$TOOLS/bin:$PATH"

crates=(ringlimit-protocol ringlimit-actors ringlimit-node)
started=$(date +%s)

# --servers: start Redis and the CQL server first (as scripts/test.sh does),
# so the tests that need them run and count; they are stopped at exit.
if [[ "${1:-}" == --servers ]]; then
  shift
  scripts/redis.sh install
  scripts/cassandra.sh install
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/ringlimit-coverage.XXXXXX")"
  stop_servers() {
    scripts/redis.sh stop "$WORK/redis" >/dev/null 2>&1 || true
    scripts/cassandra.sh stop "$WORK/cassandra" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  }
  trap stop_servers EXIT INT TERM
  RINGLIMIT_TEST_REDIS_URL="$(scripts/redis.sh start "$WORK/redis")"
  RINGLIMIT_TEST_CQL="$(scripts/cassandra.sh start "$WORK/cassandra")"
  export RINGLIMIT_TEST_REDIS_URL RINGLIMIT_TEST_CQL RINGLIMIT_REQUIRE_SERVERS=1
  export RINGLIMIT_TEST_CASSANDRA_DIR="$WORK/cassandra" RINGLIMIT_TEST_REDIS_DIR="$WORK/redis"
  log "redis at $RINGLIMIT_TEST_REDIS_URL, CQL at $RINGLIMIT_TEST_CQL"
fi
# Only the previous run's profiles: the instrumented build is kept.
cargo llvm-cov clean --profraw-only
# Nodes started by the process tests are stopped with SIGTERM instead of
# SIGKILL, so each writes its profile on exit (see node/tests/common).
export RINGLIMIT_TEST_GRACEFUL_STOP=1
# A failing test still leaves its profiles: the report is written either
# way, and the script then exits with the tests' status.
tests_rc=0
cargo llvm-cov --no-report "${crates[@]/#/--package=}" "$@" || tests_rc=$?
mkdir -p "$OUT"
cargo llvm-cov report --json --summary-only --output-path "$OUT/summary.json"
cargo llvm-cov report --html --output-dir "$OUT" >/dev/null
log "tests and reports in $(( $(date +%s) - started ))s; HTML in $OUT/html/index.html"

python3 - "$ROOT" "$OUT/summary.json" <<'EOF'
import json, os, sys
root, path = sys.argv[1], sys.argv[2]
files = json.load(open(path))["data"][0]["files"]
per, rows = {}, []
for f in files:
    rel = os.path.relpath(f["filename"], root)
    crate = rel.split(os.sep, 1)[0]
    if crate not in ("protocol", "actors", "node"):
        continue
    lines = f["summary"]["lines"]
    c, n = per.get(crate, (0, 0))
    per[crate] = (c + lines["covered"], n + lines["count"])
    rows.append((lines["percent"], lines["count"], rel))
print(f"{'crate':10} {'lines':>8} {'covered':>8} {'percent':>8}")
tc = tn = 0
for crate in ("protocol", "actors", "node"):
    c, n = per.get(crate, (0, 0))
    tc, tn = tc + c, tn + n
    print(f"{crate:10} {n:8} {c:8} {100 * c / max(n, 1):7.1f}%")
print(f"{'total':10} {tn:8} {tc:8} {100 * tc / max(tn, 1):7.1f}%")
print("\nleast covered files (at least 50 lines):")
for pct, n, rel in sorted(r for r in rows if r[1] >= 50)[:15]:
    print(f"  {pct:5.1f}% of {n:5} lines  {rel}")
EOF

if [[ $tests_rc -ne 0 ]]; then
  log "some tests failed (exit code $tests_rc); the figures above include the tests that ran"
fi
exit "$tests_rc"
