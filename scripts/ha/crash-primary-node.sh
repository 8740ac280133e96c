#!/usr/bin/env bash
# Fault: the primary's node dies: kill -9 its Patroni, then its postmaster.
# The leader lock then expires (ttl) before the standby takes over. Prints the
# crashed node's name; `scripts/ha/up.sh DIR` restarts it (it rejoins as a
# standby, rewound if needed).
#
#   scripts/ha/crash-primary-node.sh DIR
set -euo pipefail
HA_SCRIPT="scripts/ha/crash-primary-node.sh" # used by die() in lib.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="$(ha_dir "${1:-}")"
ha_load_env "$DIR"
primary="$(ha_primary)" || die "no node answers GET /primary: the cluster has no primary"
ha_pid_alive "$DIR/$primary/patroni.pid" "$DIR/$primary/patroni.yml" ||
  die "Patroni of the primary $primary is not running ($DIR/$primary/patroni.pid)"
patroni_pid="$(head -n 1 "$DIR/$primary/patroni.pid")"
postmaster_pid="$(ha_postmaster_pid "$primary")" ||
  die "no running postmaster for the primary $primary ($DIR/$primary/data/postmaster.pid)"
# Patroni first, so it cannot restart the postmaster in between.
kill -KILL "$patroni_pid" "$postmaster_pid"
printf '%s\n' "$primary"
