#!/usr/bin/env bash
# Fault: kill -9 the primary's postmaster only. Its Patroni stays up and, with
# primary_start_timeout 0, hands the leader lock to the synchronous standby
# instead of restarting Postgres in place. Prints the node and the PID killed.
#
#   scripts/ha/kill-primary-postmaster.sh DIR
set -euo pipefail
HA_SCRIPT="scripts/ha/kill-primary-postmaster.sh" # used by die() in lib.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="$(ha_dir "${1:-}")"
ha_load_env "$DIR"
primary="$(ha_primary)" || die "no node answers GET /primary: the cluster has no primary"
pid="$(ha_postmaster_pid "$primary")" || die "no running postmaster for the primary $primary ($DIR/$primary/data/postmaster.pid)"
kill -KILL "$pid"
printf '%s %s\n' "$primary" "$pid"
