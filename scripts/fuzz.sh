#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer) one after another.
#
#   bash scripts/fuzz.sh [seconds per target] [target...]
#
# Seconds per target: the first argument, else RINGLIMIT_FUZZ_SECONDS, else
# 180. Targets: the rest of the arguments, else every target.
#
# cargo-fuzz is installed into ${RINGLIMIT_CACHE:-$HOME/.cache/ringlimit}/tools
# on first use. The fuzz build has its own target directory in the cache (its
# compiler flags differ from the workspace's). Each target starts from the
# seed corpus in the tree (fuzz/corpus/<target>) plus the inputs earlier runs
# found, which are kept in the cache, not in the tree. A crash is saved under
# fuzz/artifacts/<target>/ (ignored by git); reproduce it with
#   cargo fuzz run -a -s none <target> fuzz/artifacts/<target>/<file>
#
# The build uses no sanitizer (the code forbids `unsafe`; panics, overflow
# checks and debug assertions are what find bugs here), so the default
# toolchain serves. RINGLIMIT_FUZZ_SANITIZER=address (or another cargo-fuzz
# sanitizer) builds with that one instead, which needs a nightly toolchain
# (RINGLIMIT_FUZZ_TOOLCHAIN=nightly).
#
# Prints per target: seconds, executions, corpus size, and whether it crashed;
# exits 1 if any target crashed or failed to run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${RINGLIMIT_CACHE:-$HOME/.cache/ringlimit}"
TOOLS="$CACHE/tools"
export PATH="$TOOLS/bin:$PATH"
export CARGO_TARGET_DIR="$CACHE/fuzz-target"

log() { printf 'fuzz.sh: %s\n' "$*" >&2; }

secs="${1:-${RINGLIMIT_FUZZ_SECONDS:-180}}"
[[ "$secs" =~ ^[0-9]+$ && "$secs" -gt 0 ]] || { log "seconds must be a positive integer, not '$secs'"; exit 2; }
shift $(( $# > 0 ? 1 : 0 ))
sanitizer="${RINGLIMIT_FUZZ_SANITIZER:-none}"
toolchain=()
[[ -n "${RINGLIMIT_FUZZ_TOOLCHAIN:-}" ]] && toolchain=("+$RINGLIMIT_FUZZ_TOOLCHAIN")

if [[ ! -x "$TOOLS/bin/cargo-fuzz" ]]; then
  log "installing cargo-fuzz into $TOOLS"
  cargo install --locked --root "$TOOLS" cargo-fuzz
fi

cd "$ROOT/fuzz"
if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

started=$(date +%s)
log "building ${#targets[@]} targets (sanitizer: $sanitizer)"
mkdir -p "$CACHE/fuzz/logs"
blog="$CACHE/fuzz/logs/build.log"
: >"$blog"
for t in "${targets[@]}"; do
  cargo "${toolchain[@]}" fuzz build -a -s "$sanitizer" "$t" >>"$blog" 2>&1 \
    || { tail -n 40 "$blog" >&2; log "building $t failed"; exit 1; }
done
log "built in $(( $(date +%s) - started ))s"

failed=0
total_execs=0
printf '%-16s %8s %14s %8s  %s\n' target seconds executions corpus result
for t in "${targets[@]}"; do
  work="$CACHE/fuzz/corpus/$t"
  mkdir -p "$work"
  flog="$CACHE/fuzz/logs/$t.log"
  t0=$(date +%s)
  rc=0
  cargo "${toolchain[@]}" fuzz run -a -s "$sanitizer" "$t" "$work" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$flog" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$flog" | tail -n 1)"
  corpus="$(find "$work" -type f | wc -l)"
  if [[ "$rc" -eq 0 ]]; then
    result=ok
  else
    failed=1
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$flog" | tail -n 1)"
    result="FAILED (exit $rc${artifact:+, input $artifact}; log $flog)"
  fi
  total_execs=$(( total_execs + ${execs:-0} ))
  printf '%-16s %8s %14s %8s  %s\n' "$t" "$(( $(date +%s) - t0 ))" "${execs:-?}" "$corpus" "$result"
done
log "${#targets[@]} targets, $total_execs executions in $(( $(date +%s) - started ))s"
exit "$failed"
