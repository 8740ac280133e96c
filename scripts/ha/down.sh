#!/usr/bin/env bash
# Tears down a cluster made by scripts/ha/up.sh and removes DIR. Its data is
# thrown away, so nothing is shut down gracefully: HAProxy gets TERM, both
# Patroni daemons KILL (so neither restarts or promotes anything meanwhile),
# each Postgres an immediate shutdown (QUIT; KILL for whatever remains,
# orphaned backends of a crashed node included), etcd TERM, each by the PID
# recorded in DIR (postmaster.pid for Postgres). Idempotent (a missing DIR is
# fine), bounded (well under 30 s: every wait ends in KILL), and refuses to
# remove a directory up.sh did not make.
#
#   scripts/ha/down.sh DIR
set -euo pipefail
HA_SCRIPT="scripts/ha/down.sh" # used by die() in lib.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="$(ha_dir "${1:-}")"
[ -e "$DIR" ] || exit 0
if ! ha_is_ours "$DIR"; then
  # up.sh may have failed before writing DIR/env; then only its own files
  # (configs, logs, an unstarted etcd dir) can be there.
  if [ -z "$(ls -A "$DIR")" ] || [ -f "$DIR/n1/patroni.yml" ]; then
    :
  else
    die "$DIR was not made by scripts/ha/up.sh (no $DIR/env); not removing it"
  fi
fi

pid_of() {
  local pidfile="$1" marker="$2"
  ha_pid_alive "$pidfile" "$marker" && head -n 1 "$pidfile"
}

# Running, as opposed to gone or a zombie waiting for its reaper.
running() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

# Send SIG to PIDS, wait up to SECS for them to exit, then SIGKILL the rest.
stop_pids() {
  local sig="$1" secs="$2"
  shift 2
  [ "$#" -gt 0 ] || return 0
  kill "-$sig" "$@" 2>/dev/null || true
  local deadline=$((SECONDS + secs)) pid alive
  while :; do
    alive=()
    for pid in "$@"; do
      running "$pid" && alive+=("$pid")
    done
    [ "${#alive[@]}" -eq 0 ] && return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      kill -KILL "${alive[@]}" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
}

# Postgres processes of a node: every process whose working directory is the
# node's data directory (the postmaster and its backends, orphaned or not).
node_postgres_pids() {
  find /proc/[0-9]*/cwd -maxdepth 0 -lname "$DIR/$1/data" 2>/dev/null | cut -d/ -f3
}

pids=()
pid="$(pid_of "$DIR/haproxy.pid" "$DIR/haproxy.cfg")" && pids+=("$pid")
stop_pids TERM 5 "${pids[@]}"

pids=()
for node in $HA_NODES; do
  pid="$(pid_of "$DIR/$node/patroni.pid" "$DIR/$node/patroni.yml")" && pids+=("$pid")
done
stop_pids KILL 5 "${pids[@]}"

pids=()
for node in $HA_NODES; do
  pid="$(ha_postmaster_pid "$node" 2>/dev/null)" && pids+=("$pid")
done
stop_pids QUIT 10 "${pids[@]}"
pids=()
for node in $HA_NODES; do
  while read -r pid; do [ -n "$pid" ] && pids+=("$pid"); done < <(node_postgres_pids "$node")
done
stop_pids KILL 5 "${pids[@]}"

pids=()
pid="$(pid_of "$DIR/etcd.pid" "--data-dir $DIR/etcd")" && pids+=("$pid")
stop_pids TERM 5 "${pids[@]}"

rm -rf -- "$DIR"
