#!/usr/bin/env bash
# A 3-node ringlimit cluster on 127.0.0.1 with one Redis and one CQL server
# (Cassandra from Maven Central, the CI stand-in for ScyllaDB). Prints the
# endpoints, then runs until Ctrl-C and stops everything.
#
#   bash scripts/local-cluster.sh [work-dir]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/ringlimit-cluster.XXXXXX")}"
mkdir -p "$WORK"
TOKEN="${RINGLIMIT_ADMIN_TOKEN:-local-cluster-admin-token}"
# The cluster cookie needs at least 32 characters: a fresh random one per run.
COOKIE="${RINGLIMIT_COOKIE:-$(python3 -c 'import secrets; print(secrets.token_hex(24))')}"
log() { printf 'local-cluster: %s\n' "$*" >&2; }

scripts/redis.sh install
scripts/cassandra.sh install
cargo build --release --bin ringlimit
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ringlimit"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  scripts/redis.sh stop "$WORK/redis" >/dev/null 2>&1 || true
  scripts/cassandra.sh stop "$WORK/cassandra" >/dev/null 2>&1 || true
  log "stopped; data kept in $WORK"
}
trap cleanup EXIT INT TERM

REDIS="$(scripts/redis.sh start "$WORK/redis")"
CQL="$(scripts/cassandra.sh start "$WORK/cassandra")"
RINGLIMIT_SCYLLA_NODES="$CQL" RINGLIMIT_SCYLLA_KEYSPACE=ringlimit RINGLIMIT_ADMIN_TOKEN="$TOKEN" "$BIN" migrate

mapfile -t PORTS < <(python3 scripts/free-port.py 9)
for i in 0 1 2; do
  data=${PORTS[$((i * 3))]} admin=${PORTS[$((i * 3 + 1))]} cl=${PORTS[$((i * 3 + 2))]}
  seeds=""
  for j in 0 1 2; do
    [[ $j == "$i" ]] && continue
    seeds="${seeds:+$seeds,}127.0.0.1:${PORTS[$((j * 3 + 2))]}"
  done
  mkdir -p "$WORK/node$((i + 1))"
  RINGLIMIT_NODE_NAME="node$((i + 1))" RINGLIMIT_CLUSTER_ADDR="127.0.0.1:$cl" RINGLIMIT_SEEDS="$seeds" \
    RINGLIMIT_COOKIE="$COOKIE" RINGLIMIT_DATA_ADDR="127.0.0.1:$data" RINGLIMIT_ADMIN_ADDR="127.0.0.1:$admin" \
    RINGLIMIT_ADMIN_TOKEN="$TOKEN" RINGLIMIT_DATA_DIR="$WORK/node$((i + 1))" RINGLIMIT_REDIS_URL="$REDIS" \
    RINGLIMIT_SCYLLA_NODES="$CQL" RINGLIMIT_SCYLLA_KEYSPACE=ringlimit \
    "$BIN" >"$WORK/node$((i + 1)).out" 2>"$WORK/node$((i + 1)).log" &
  pids+=($!)
  echo "node$((i + 1)): data http://127.0.0.1:$data  admin http://127.0.0.1:$admin  cluster 127.0.0.1:$cl"
done
echo "redis: $REDIS"
echo "cql:   $CQL"
echo "admin token: $TOKEN"
echo "logs:  $WORK/node*.log   (Ctrl-C stops everything)"
wait
