#!/usr/bin/env bash
# Run a real single-node Apache Cassandra 5.0.x (CQL server) from Maven Central
# jars, without Docker, for the integration tests.
#
# Usage:
#   scripts/cassandra.sh install        resolve cassandra-all 5.0.x + deps into the jar cache
#   scripts/cassandra.sh start <dir>    start a node whose state lives in <dir>;
#                                       prints 127.0.0.1:PORT (CQL) on stdout when CQL answers
#   scripts/cassandra.sh stop <dir>     SIGTERM, wait up to 60 s, then SIGKILL
#   scripts/cassandra.sh kill <dir>     SIGKILL at once (a crash; writes of the last
#                                       commitlog_sync_period, 10 s, may be lost)
#   scripts/cassandra.sh status <dir>   exit 0 if the node of <dir> is running
#
# `stop` then `start` on the same <dir> reuses the same ports (recorded in
# <dir>/port and <dir>/storage_port) and the same data.
#
# Environment:
#   RINGLIMIT_CACHE              cache root (default $HOME/.cache/ringlimit);
#                                jars go to $RINGLIMIT_CACHE/cassandra/lib
#   RINGLIMIT_CASSANDRA_VERSION  exact cassandra-all version to install
#                                (default: 5.0.8, else the newest 5.0.x)
#   RINGLIMIT_CASSANDRA_HEAP     JVM heap, -Xms = -Xmx (default 1g)
#   RINGLIMIT_CASSANDRA_TIMEOUT  seconds to wait for CQL on start (default 180)
#   RINGLIMIT_CASSANDRA_COMMITLOG_SYNC
#                                periodic (default: fsync every 10 s; a `kill` may lose
#                                the last 10 s of acknowledged writes) or batch (fsync
#                                before each write is acknowledged; survives `kill`)
#   JAVA                         java binary (default: java on PATH if it is 11 or 17,
#                                else a JDK 17/11 under /usr/lib/jvm; 21-23 work with
#                                a flag, 24+ cannot run Cassandra 5.0)
#
# Only the CQL address is printed on stdout; progress goes to stderr.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="${BASH_SOURCE[0]}"
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"
CACHE_ROOT="${RINGLIMIT_CACHE:-$HOME/.cache/ringlimit}"
CASS_HOME="$CACHE_ROOT/cassandra"
LIB="$CASS_HOME/lib"
MARKER="$LIB/.ringlimit-complete"
PREFERRED_VERSION="${RINGLIMIT_CASSANDRA_VERSION:-5.0.8}"
HEAP="${RINGLIMIT_CASSANDRA_HEAP:-1g}"
START_TIMEOUT="${RINGLIMIT_CASSANDRA_TIMEOUT:-180}"
COMMITLOG_SYNC="${RINGLIMIT_CASSANDRA_COMMITLOG_SYNC:-periodic}"
JAVA="${JAVA:-}"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

# ---------------------------------------------------------------- install --

write_pom() { # <pom> <version>
  cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project>
  <modelVersion>4.0.0</modelVersion>
  <groupId>ringlimit.test</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$2</version>
    </dependency>
  </dependencies>
</project>
EOF
}

# Resolve one version spec (exact, or a Maven range) into $1; 0 on success.
resolve_into() { # <outdir> <version-spec>
  local out="$1" spec="$2" pom="$CASS_HOME/pom.xml" mvnlog="$CASS_HOME/mvn.log"
  rm -rf "$out"
  mkdir -p "$out"
  write_pom "$pom" "$spec"
  log "resolving org.apache.cassandra:cassandra-all:$spec (maven log: $mvnlog)"
  # ERROR lines about ${jmc5.path} (system-scoped deps of the parent pom) are
  # harmless; the exit status and the presence of the jar decide.
  if ! mvn -q -B -f "$pom" "$DEP_PLUGIN:copy-dependencies" \
      -DoutputDirectory="$out" -DincludeScope=runtime >"$mvnlog" 2>&1; then
    log "maven failed for $spec; last lines:"
    tail -n 15 "$mvnlog" >&2 || true
    return 1
  fi
  compgen -G "$out/cassandra-all-*.jar" >/dev/null || { log "no cassandra-all jar after resolving $spec"; return 1; }
  compgen -G "$out/jamm-*.jar" >/dev/null || { log "no jamm jar after resolving $spec"; return 1; }
}

cmd_install() {
  if [[ -f "$MARKER" ]]; then
    log "already installed: $(cat "$MARKER") in $LIB"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found"
  mkdir -p "$CASS_HOME"
  local tmp="$CASS_HOME/lib.tmp"
  # Exact preferred version first, then the newest 5.0.x Maven can resolve.
  if ! resolve_into "$tmp" "$PREFERRED_VERSION"; then
    log "falling back to the newest 5.0.x"
    resolve_into "$tmp" "[5.0.0,5.1.0)" || die "could not resolve any cassandra-all 5.0.x"
  fi
  local jar version
  jar="$(compgen -G "$tmp/cassandra-all-*.jar" | head -n 1)"
  version="$(basename "$jar" .jar)"
  version="${version#cassandra-all-}"
  rm -rf "$LIB"
  mv "$tmp" "$LIB"
  printf '%s\n' "$version" >"$MARKER"
  log "installed cassandra-all $version: $(find "$LIB" -name '*.jar' | wc -l) jars in $LIB"
}

# ------------------------------------------------------------ start / stop --

port_is_free() { # <port>
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

pid_of() { # <dir>; prints the pid if this dir's Cassandra is alive
  pid_from "$1/cassandra.pid" CassandraDaemon
}

commitlog_yaml() {
  case "$COMMITLOG_SYNC" in
    periodic) printf 'commitlog_sync: periodic\ncommitlog_sync_period: 10s\n' ;;
    batch) printf 'commitlog_sync: batch\n' ;;
    *) die "RINGLIMIT_CASSANDRA_COMMITLOG_SYNC must be periodic or batch, not '$COMMITLOG_SYNC'" ;;
  esac
}

write_yaml() { # <dir> <native-port> <storage-port>
  local dir="$1" native="$2" storage="$3"
  cat >"$dir/conf/cassandra.yaml" <<EOF
# Generated by scripts/cassandra.sh for tests; Cassandra 5.0 key names.
cluster_name: ringlimit-test
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$storage"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: $storage
native_transport_port: $native
start_native_transport: true
data_file_directories:
  - $dir/data
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
$(commitlog_yaml)
auto_snapshot: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
# Small footprint for a 2-core CI box.
concurrent_compactors: 1
key_cache_size: 8MiB
counter_cache_size: 4MiB
file_cache_size: 64MiB
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
# ringlimit batches usage rows by replica, up to 32 partitions a batch (one
# replica applies them all): not the misuse this warning is about.
unlogged_batch_across_partitions_warn_threshold: 64
EOF
}

write_logback() { # <dir>
  cat >"$1/conf/logback.xml" <<'EOF'
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
EOF
}

java_major() { # <java>; prints the feature version (17, 11, ...)
  "$1" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = \(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -n 1
}

# Sets JAVA and JAVA_EXTRA_FLAGS, or dies.
pick_java() {
  local candidate major
  local -a candidates=()
  JAVA_EXTRA_FLAGS=()
  if [[ -n "$JAVA" ]]; then
    candidates=("$JAVA")
  else
    command -v java >/dev/null && candidates+=("$(command -v java)")
    for candidate in /usr/lib/jvm/*17*/bin/java /usr/lib/jvm/*11*/bin/java; do
      [[ -x "$candidate" ]] && candidates+=("$candidate")
    done
  fi
  for candidate in "${candidates[@]}"; do
    major="$(java_major "$candidate")"
    case "$major" in
      11 | 17) JAVA="$candidate"; return 0 ;;
      21 | 22 | 23)
        if [[ -n "$JAVA" ]]; then
          log "warning: Java $major is not supported by Cassandra 5.0; trying with -Djava.security.manager=allow"
          JAVA_EXTRA_FLAGS=(-Djava.security.manager=allow)
          return 0
        fi ;;
    esac
  done
  die "no Java 11 or 17 found (tried: ${candidates[*]:-none}); set JAVA=/path/to/java17"
}

java_flags() { # <dir>; one flag per line
  local dir="$1" jamm
  jamm="$(compgen -G "$LIB/jamm-*.jar" | head -n 1)"
  cat <<EOF
-javaagent:$jamm
-Xms$HEAP
-Xmx$HEAP
-Xss256k
-XX:+UseG1GC
-XX:+ParallelRefProcEnabled
-XX:MaxTenuringThreshold=1
-XX:G1HeapRegionSize=16m
-XX:MaxGCPauseMillis=300
-XX:InitiatingHeapOccupancyPercent=70
-XX:MaxDirectMemorySize=512m
-XX:+UseTLAB
-XX:+ResizeTLAB
-XX:+PerfDisableSharedMem
-XX:+HeapDumpOnOutOfMemoryError
-XX:+ExitOnOutOfMemoryError
-XX:HeapDumpPath=$dir
-XX:ErrorFile=$dir/hs_err_%p.log
-ea
-da:net.openhft...
-Djava.net.preferIPv4Stack=true
-Djdk.attach.allowAttachSelf=true
-Dio.netty.tryReflectionSetAccessible=true
-Dio.netty.allocator.useCacheForAllThreads=true
-Dio.netty.allocator.maxOrder=11
-Dcassandra-foreground=yes
-Dcassandra.config=file://$dir/conf/cassandra.yaml
-Dcassandra.storagedir=$dir
-Dcassandra.logdir=$dir
-Dlogback.configurationFile=file://$dir/conf/logback.xml
-Dcassandra.skip_wait_for_gossip_to_settle=0
-Dcassandra.unsafesystem=true
-Djava.io.tmpdir=$dir/tmp
--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED
--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED
--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED
--add-exports=java.sql/java.sql=ALL-UNNAMED
--add-exports=java.base/java.lang.ref=ALL-UNNAMED
--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED
--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED
--add-opens=java.base/java.lang.module=ALL-UNNAMED
--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED
--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED
--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED
--add-opens=java.base/jdk.internal.math=ALL-UNNAMED
--add-opens=java.base/jdk.internal.module=ALL-UNNAMED
--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED
--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED
--add-opens=java.base/sun.nio.ch=ALL-UNNAMED
--add-opens=java.base/java.io=ALL-UNNAMED
--add-opens=java.base/java.lang.reflect=ALL-UNNAMED
--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
--add-opens=java.base/java.lang=ALL-UNNAMED
--add-opens=java.base/java.util=ALL-UNNAMED
--add-opens=java.base/java.nio=ALL-UNNAMED
EOF
}

cmd_start() {
  [[ $# -eq 1 ]] || usage
  local dir native storage pid
  dir="$(abs_dir "$1")"
  [[ -f "$MARKER" ]] || die "jars not installed; run: $0 install"
  pick_java
  commitlog_yaml >/dev/null # validates RINGLIMIT_CASSANDRA_COMMITLOG_SYNC
  if pid="$(pid_of "$dir")"; then
    die "already running (pid $pid) for $dir"
  fi

  mkdir -p "$dir"/{conf,data,commitlog,saved_caches,hints,cdc_raw,tmp}
  if [[ -f "$dir/port" && -f "$dir/storage_port" ]]; then
    native="$(cat "$dir/port")"
    storage="$(cat "$dir/storage_port")"
    port_is_free "$native" || die "recorded CQL port $native of $dir is in use"
    port_is_free "$storage" || die "recorded storage port $storage of $dir is in use"
  else
    local ports
    ports="$(free_port 2)"
    native="$(sed -n 1p <<<"$ports")"
    storage="$(sed -n 2p <<<"$ports")"
    printf '%s\n' "$native" >"$dir/port"
    printf '%s\n' "$storage" >"$dir/storage_port"
  fi
  write_yaml "$dir" "$native" "$storage"
  write_logback "$dir"

  # Keep the previous run's log for post-mortems.
  [[ -f "$dir/cassandra.log" ]] && mv -f "$dir/cassandra.log" "$dir/cassandra.log.prev"

  local -a flags
  mapfile -t flags < <(java_flags "$dir")
  flags+=("${JAVA_EXTRA_FLAGS[@]}")
  log "starting Cassandra $(cat "$MARKER") with $JAVA in $dir (CQL 127.0.0.1:$native, storage $storage)"
  # setsid: own process group, so the caller's Ctrl-C / job control leaves it be.
  setsid "$JAVA" "${flags[@]}" -cp "$LIB/*" org.apache.cassandra.service.CassandraDaemon \
    </dev/null >"$dir/cassandra.log" 2>&1 &
  pid=$!
  printf '%s\n' "$pid" >"$dir/cassandra.pid"

  local started=$SECONDS
  while true; do
    if ! alive "$pid"; then
      log "Cassandra (pid $pid) died during start-up; last log lines of $dir/cassandra.log:"
      tail -n 60 "$dir/cassandra.log" >&2 || true
      rm -f "$dir/cassandra.pid"
      exit 1
    fi
    if python3 "$SCRIPT_DIR/cql.py" --timeout 5 "127.0.0.1:$native" \
        "SELECT release_version FROM system.local" >/dev/null 2>&1; then
      break
    fi
    if (( SECONDS - started >= START_TIMEOUT )); then
      log "CQL not ready after ${START_TIMEOUT}s; last log lines:"
      tail -n 60 "$dir/cassandra.log" >&2 || true
      stop_pid "$dir" "$pid"
      exit 1
    fi
    sleep 0.5
  done
  log "CQL ready on 127.0.0.1:$native after $((SECONDS - started))s (pid $pid)"
  printf '127.0.0.1:%s\n' "$native"
}

stop_pid() { # <dir> <pid>
  local dir="$1" pid="$2"
  if ! terminate "$pid" 60; then
    while alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$dir/cassandra.pid"
}

# Sets the caller's dir and pid to the node of <dir>; when it is not running,
# says so, removes its pidfile and returns 1.
running_node() { # <dir>
  dir="$(cd "$1" 2>/dev/null && pwd)" || die "no such dir: $1"
  if ! pid="$(pid_of "$dir")"; then
    log "not running ($dir)"
    rm -f "$dir/cassandra.pid"
    return 1
  fi
}

cmd_stop() {
  [[ $# -eq 1 ]] || usage
  local dir pid
  running_node "$1" || return 0
  log "stopping pid $pid"
  stop_pid "$dir" "$pid"
  log "stopped"
}

cmd_kill() {
  [[ $# -eq 1 ]] || usage
  local dir pid
  running_node "$1" || return 0
  log "killing pid $pid (SIGKILL)"
  kill -KILL "$pid" 2>/dev/null || true
  while alive "$pid"; do sleep 0.1; done
  rm -f "$dir/cassandra.pid"
}

cmd_status() {
  [[ $# -eq 1 ]] || usage
  local pid
  if pid="$(pid_of "$1")"; then
    log "running (pid $pid), CQL 127.0.0.1:$(cat "$1/port")"
  else
    log "not running"
    return 1
  fi
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
    status) cmd_status "$@" ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
