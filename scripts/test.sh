#!/usr/bin/env bash
# The whole test suite: installs and starts what the tests need, runs every
# test, and stops the servers again (also when tests fail).
#
#   bash scripts/test.sh [extra cargo test args]
#
# Build outputs, Maven jars and downloaded tools are cached outside the clone
# under ${RINGLIMIT_CACHE:-$HOME/.cache/ringlimit}.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${RINGLIMIT_CACHE:-$HOME/.cache/ringlimit}"
export RINGLIMIT_CACHE="$CACHE"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

log() { printf 'test.sh: %s\n' "$*" >&2; }
started=$(date +%s)

scripts/redis.sh install
scripts/cassandra.sh install
# The chaos harness's short scenarios: network namespaces (iproute2) and
# setpriv (util-linux), which nodes run under so they die with the harness.
if ! command -v ip >/dev/null || ! command -v setpriv >/dev/null; then
  sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  log "apt-get install iproute2 util-linux"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends iproute2 util-linux >&2 ||
    { "${sudo[@]}" apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends iproute2 util-linux >&2; }
fi

# nginx, for the test of the shipped auth_request configuration
# (node/tests/nginx.rs starts its own; the package must not start one).
if [[ ! -x /usr/sbin/nginx ]]; then
  sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  made_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  log "apt-get install nginx"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends nginx >&2 ||
    { "${sudo[@]}" apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends nginx >&2; }
  [[ -z "$made_policy" ]] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ringlimit-test.XXXXXX")"
cleanup() {
  local rc=$?
  scripts/redis.sh stop "$WORK/redis" >/dev/null 2>&1 || true
  scripts/cassandra.sh stop "$WORK/cassandra" >/dev/null 2>&1 || true
  rm -rf "$WORK"
  log "finished in $(( $(date +%s) - started ))s with exit code $rc"
  exit "$rc"
}
trap cleanup EXIT INT TERM

# Build while the servers start.
log "building (target dir: $CARGO_TARGET_DIR)"
cargo build --workspace --bins --tests &
build_pid=$!

RINGLIMIT_TEST_REDIS_URL="$(scripts/redis.sh start "$WORK/redis")"
RINGLIMIT_TEST_CQL="$(scripts/cassandra.sh start "$WORK/cassandra")"
export RINGLIMIT_TEST_REDIS_URL RINGLIMIT_TEST_CQL
# Tests that need a server fail (never skip) when it is missing.
export RINGLIMIT_REQUIRE_SERVERS=1
export RINGLIMIT_TEST_CASSANDRA_DIR="$WORK/cassandra"
export RINGLIMIT_TEST_REDIS_DIR="$WORK/redis"
log "redis at $RINGLIMIT_TEST_REDIS_URL, CQL at $RINGLIMIT_TEST_CQL"

wait "$build_pid"
log "running tests"
cargo test --workspace "$@"

# Advisories (offline, against the snapshot), licences, bans, sources.
log "checking dependencies (cargo-deny)"
scripts/deny.sh

# A short fuzzing pass in CI, opt-in: building the fuzz targets the first
# time takes several minutes (scripts/fuzz.sh runs them for longer).
if [[ "${CI:-}" == true && "${RINGLIMIT_CI_FUZZ:-0}" == 1 ]]; then
  log "fuzzing each target for ${RINGLIMIT_CI_FUZZ_SECONDS:-12}s"
  scripts/fuzz.sh "${RINGLIMIT_CI_FUZZ_SECONDS:-12}"
fi
