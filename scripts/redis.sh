#!/usr/bin/env bash
# Standalone Redis and a 3-master Redis Cluster on loopback, for the tests.
#
# Usage:
#   scripts/redis.sh install               apt-get install redis-server (and redis-cli) if missing
#   scripts/redis.sh start <dir>           start a standalone server; prints redis://127.0.0.1:PORT
#                                          (again on the same dir: the same port)
#   scripts/redis.sh stop <dir>            stop it (SIGTERM via pidfile, wait)
#   scripts/redis.sh kill <dir>            SIGKILL it at once (a crash; without
#                                          persistence it comes back empty)
#   scripts/redis.sh start-cluster <dir>   start a 3-master cluster; prints
#                                          127.0.0.1:A,127.0.0.1:B,127.0.0.1:C
#   scripts/redis.sh stop-cluster <dir>    stop the cluster
#
# Every server runs daemonized with its pidfile, logfile and files inside <dir>
# (the cluster: <dir>/node-PORT/), without persistence. Only the address line is
# printed on stdout; progress goes to stderr.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="${BASH_SOURCE[0]}"
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"
READY_TIMEOUT="${RINGLIMIT_REDIS_TIMEOUT:-30}" # seconds

need_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    die "redis-server/redis-cli not found; run: $0 install"
  fi
}

cmd_install() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    log "already installed: $(redis-server --version)"
    return 0
  fi
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the package lists only when apt does not know the package yet.
  if ! apt-cache show redis-server >/dev/null 2>&1; then
    log "apt-get update"
    "${sudo[@]}" apt-get update -qq >&2
  fi
  log "apt-get install redis-server"
  # The package's own service may fail to start where there is no init system;
  # only the binaries matter here.
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends redis-server redis-tools >&2
  command -v redis-server >/dev/null || die "redis-server still missing after install"
  # Do not leave the Debian service running on 6379 where the package
  # started it (tests start their own servers on free ports).
  if [[ -d /run/systemd/system ]]; then
    "${sudo[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
  elif [[ -s /run/redis/redis-server.pid ]] && command -v service >/dev/null; then
    "${sudo[@]}" service redis-server stop >&2 || true
  fi
  log "installed: $(redis-server --version)"
}

# start_server <node-dir> <port> [extra redis-server args...]
start_server() {
  local ndir="$1" port="$2"
  shift 2
  mkdir -p "$ndir"
  redis-server --port "$port" --bind 127.0.0.1 --protected-mode no \
    --daemonize yes --pidfile "$ndir/redis.pid" --logfile "$ndir/redis.log" \
    --dir "$ndir" --save "" --appendonly no "$@" >&2 ||
    die "redis-server failed to start on $port; log: $ndir/redis.log"
  printf '%s\n' "$port" >"$ndir/port"
}

wait_ping() { # <port> <node-dir>
  local port="$1" ndir="$2" deadline=$((SECONDS + READY_TIMEOUT))
  until [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" == PONG ]]; do
    if ((SECONDS >= deadline)); then
      log "redis on $port not answering PING after ${READY_TIMEOUT}s; log tail:"
      tail -n 20 "$ndir/redis.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
}

stop_server() { # <node-dir>
  local ndir="$1" pid
  [[ -f "$ndir/redis.pid" ]] || { log "not running ($ndir)"; return 0; }
  if pid="$(pid_from "$ndir/redis.pid" redis-server)"; then
    terminate "$pid" 30 || true
  fi
  rm -f "$ndir/redis.pid"
}

cmd_start() {
  [[ $# -eq 1 ]] || usage
  need_redis
  local dir port
  dir="$(abs_dir "$1")"
  if [[ -f "$dir/redis.pid" ]] && alive "$(cat "$dir/redis.pid")"; then
    die "already running for $dir (pid $(cat "$dir/redis.pid"))"
  fi
  # A restart on the same dir reuses the port, so clients reconnect to it.
  if [[ -f "$dir/port" ]]; then
    port="$(cat "$dir/port")"
  else
    port="$(free_port)"
  fi
  start_server "$dir" "$port"
  wait_ping "$port" "$dir"
  log "redis ready on 127.0.0.1:$port (pid $(cat "$dir/redis.pid"))"
  printf 'redis://127.0.0.1:%s\n' "$port"
}

cmd_stop() {
  [[ $# -eq 1 ]] || usage
  [[ -d "$1" ]] || die "no such dir: $1"
  stop_server "$1"
  log "stopped ($1)"
}

cmd_kill() {
  [[ $# -eq 1 ]] || usage
  [[ -d "$1" ]] || die "no such dir: $1"
  local pid
  if pid="$(pid_from "$1/redis.pid" redis-server)"; then
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.05; done
  fi
  rm -f "$1/redis.pid"
  log "killed ($1)"
}

cmd_start_cluster() {
  [[ $# -eq 1 ]] || usage
  need_redis
  local dir port
  local -a ports nodes
  dir="$(abs_dir "$1")"
  if compgen -G "$dir/node-*/redis.pid" >/dev/null; then
    die "a cluster seems to be running in $dir; stop-cluster first"
  fi
  # The cluster bus listens on PORT+10000, which must be free too.
  mapfile -t ports < <(free_port 3 --offset 10000)
  [[ ${#ports[@]} -eq 3 ]] || die "could not pick 3 free ports"
  for port in "${ports[@]}"; do
    rm -rf "$dir/node-$port"
    start_server "$dir/node-$port" "$port" \
      --cluster-enabled yes --cluster-config-file "$dir/node-$port/nodes.conf" \
      --cluster-node-timeout 5000
    nodes+=("127.0.0.1:$port")
  done
  printf '%s\n' "${ports[@]}" >"$dir/ports"
  for port in "${ports[@]}"; do wait_ping "$port" "$dir/node-$port"; done

  log "creating cluster ${nodes[*]}"
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
    >"$dir/cluster-create.log" 2>&1 || {
    cat "$dir/cluster-create.log" >&2
    die "redis-cli --cluster create failed"
  }

  local deadline=$((SECONDS + READY_TIMEOUT)) ok
  while true; do
    ok=1
    for port in "${ports[@]}"; do
      redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | tr -d '\r' |
        grep -qx 'cluster_state:ok' || ok=0
    done
    ((ok)) && break
    if ((SECONDS >= deadline)); then
      redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info >&2 || true
      die "cluster_state not ok after ${READY_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "cluster ready: ${nodes[*]}"
  (IFS=,; printf '%s\n' "${nodes[*]}")
}

cmd_stop_cluster() {
  [[ $# -eq 1 ]] || usage
  [[ -d "$1" ]] || die "no such dir: $1"
  local ndir found=0
  for ndir in "$1"/node-*/; do
    [[ -d "$ndir" ]] || continue
    found=1
    stop_server "${ndir%/}"
  done
  ((found)) || log "no cluster nodes in $1"
  log "cluster stopped ($1)"
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd="$1"
  shift
  case "$cmd" in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    kill) cmd_kill "$@" ;;
    start-cluster) cmd_start_cluster "$@" ;;
    stop-cluster) cmd_stop_cluster "$@" ;;
    *) usage ;;
  esac
}

main "$@"
