# Helpers shared by scripts/redis.sh and scripts/cassandra.sh (sourced, not
# run). The sourcing script sets SCRIPT (its own path, for `usage` and the
# prefix of `log`) and SCRIPT_DIR (the scripts directory) first.

log() { printf '%s: %s\n' "${SCRIPT##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# True if <pid> exists and is not a zombie (a daemon reparented to an init
# that reaps slowly stays a zombie for seconds after it exited).
alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }" # the state letter follows the "(comm) " field
  [[ "${stat:0:1}" != Z ]]
}

# Prints the script's header comment (its usage) and exits 2.
usage() {
  sed -n '2,/^set -euo/p' "$SCRIPT" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit 2
}

abs_dir() {
  mkdir -p "$1"
  (cd "$1" && pwd)
}

# free_port [count] [--offset N]: free loopback TCP ports, one per line.
free_port() { python3 "$SCRIPT_DIR/free-port.py" "$@"; }

# Prints the pid recorded in <pidfile> if that process is alive and its
# command line contains <pattern> (a guard against a stale pidfile whose pid
# now belongs to another process).
pid_from() { # <pidfile> <pattern>
  local pid
  [[ -f "$1" ]] || return 1
  pid="$(cat "$1")"
  [[ -n "$pid" ]] || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$2" || return 1
  printf '%s\n' "$pid"
}

# SIGTERM, then waits up to <seconds> for <pid> to go; SIGKILL if it has not.
# Returns 1 when it had to send SIGKILL.
terminate() { # <pid> <seconds>
  local pid="$1" secs="$2" i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    log "pid $pid still alive after ${secs}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    return 1
  fi
}
