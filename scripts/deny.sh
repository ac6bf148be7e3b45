#!/usr/bin/env bash
# Checks the dependency graph with cargo-deny (deny.toml): security
# advisories, licences, banned and duplicate crates, sources. Offline: the
# advisories come from a snapshot of the RustSec advisory database, never
# fetched.
#
#   bash scripts/deny.sh [advisories|bans|licenses|sources ...]
#
# RINGLIMIT_ADVISORY_DB  the snapshot (a copy of the advisory-db repository,
#                        with or without its .git); default ../shared/advisory-db
#                        relative to the repository root.
#
# cargo-deny is installed into ${RINGLIMIT_CACHE:-$HOME/.cache/ringlimit}/tools
# on first use (RINGLIMIT_CARGO_DENY_VERSION, default below) and reused after.
# The snapshot is copied into the cache and made a git repository (cargo-deny
# reads its database as one). Prints the snapshot's date; exits non-zero on
# any error, such as an advisory that affects a dependency and is not ignored
# (with a reason) in deny.toml.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${RINGLIMIT_CACHE:-$HOME/.cache/ringlimit}"
TOOLS="$CACHE/tools"
VERSION="${RINGLIMIT_CARGO_DENY_VERSION:-0.20.2}"
SRC="${RINGLIMIT_ADVISORY_DB:-$ROOT/../shared/advisory-db}"

log() { printf 'deny.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# cargo-deny looks for each database under db-path in a directory named
# after its URL; this is the name it gives the default (RustSec) database.
DBS="$CACHE/advisory-dbs"
DB="$DBS/advisory-db-3157b0e258782691"

# Without a snapshot, the copy a previous run left in the cache is used; with
# neither, the advisories check is skipped (said loudly) and the licence,
# ban and source checks still run: they need no database.
checks=("$@")
use_cached=0
if [[ ! -d "$SRC/crates" ]]; then
  if [[ -d "$DB/crates" ]]; then
    log "no advisory database snapshot at $SRC; using the copy cached by an earlier run"
    use_cached=1
  else
    log "WARNING: no advisory database snapshot at $SRC and none cached;"
    log "WARNING: skipping the advisories check (set RINGLIMIT_ADVISORY_DB to a copy of the RustSec advisory-db)"
    if [[ ${#checks[@]} -eq 0 ]]; then checks=(bans licenses sources); fi
    filtered=()
    for c in "${checks[@]}"; do [[ "$c" == advisories ]] || filtered+=("$c"); done
    checks=("${filtered[@]}")
    use_cached=2
  fi
fi

installed="$("$TOOLS/bin/cargo-deny" --version 2>/dev/null || true)"
if [[ "$installed" != "cargo-deny $VERSION" ]]; then
  log "installing cargo-deny $VERSION into $TOOLS (a few minutes, once)"
  started=$(date +%s)
  cargo install --locked --root "$TOOLS" --version "$VERSION" cargo-deny
  log "cargo-deny installed in $(( $(date +%s) - started ))s"
fi

if [[ $use_cached -eq 0 ]]; then
  # The snapshot's date: its last commit when it is a repository, else the
  # date of its newest advisory.
  if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
    date="$(git -C "$SRC" log -1 --format=%cs)"
    what="commit $(git -C "$SRC" rev-parse --short HEAD), $date"
  else
    date="$(grep -rhs '^date = "' "$SRC/crates" "$SRC/rust" | sed 's/^date = "\(.*\)"$/\1/' | sort | tail -n 1)"
    [[ -n "$date" ]] || die "no dated advisory in $SRC"
    what="newest advisory dated $date"
  fi

  rm -rf "$DB"
  mkdir -p "$DB"
  cp -R "$SRC/." "$DB/"
  rm -rf "$DB/.git"
  chmod -R u+w "$DB"
  (
    cd "$DB"
    export GIT_AUTHOR_DATE="${date}T00:00:00Z" GIT_COMMITTER_DATE="${date}T00:00:00Z"
    git init -q
    git add -A
    git -c user.name=snapshot -c user.email=snapshot@localhost -c commit.gpgsign=false \
      commit -q -m "advisory-db snapshot ($what)"
  )
  count="$(find "$DB/crates" -name '*.md' | wc -l)"
  log "advisory database: snapshot with $count crate advisories ($what)"

elif [[ $use_cached -eq 1 ]]; then
  what="$(git -C "$DB" log -1 --format=%s)"
else
  what="none (advisories not checked)"
fi

export RINGLIMIT_DENY_DB_DIR="$DBS"
# cargo-deny reads the metadata of every dependency of every target, the
# Windows- and Android-only crates too, which a build on Linux never
# downloads: fetch them first (a no-op once they are in cargo's cache).
cargo fetch --locked --quiet
# Inclusion graphs make the duplicate-version warnings hundreds of lines
# long; `cargo deny check bans` with the same RINGLIMIT_DENY_DB_DIR shows them.
"$TOOLS/bin/cargo-deny" --offline --locked check --hide-inclusion-graph --show-stats ${checks[@]+"${checks[@]}"}
log "advisory database used: $what"
