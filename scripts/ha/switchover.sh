#!/usr/bin/env bash
# A planned switchover: the primary hands over to its synchronous standby
# (Patroni REST POST /switchover on the primary; Patroni answers once it is
# done). Prints the new primary's node name.
#
#   scripts/ha/switchover.sh DIR
set -euo pipefail
HA_SCRIPT="scripts/ha/switchover.sh" # used by die() in lib.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="$(ha_dir "${1:-}")"
ha_load_env "$DIR"
primary="$(ha_primary)" || die "no node answers GET /primary: the cluster has no primary"
candidate="$(ha_other_node "$primary")"
[ "$(ha_rest_status "$candidate" /sync)" = 200 ] ||
  die "$candidate is not an attached synchronous standby: nothing to switch over to (run scripts/ha/up.sh $DIR)"
answer="$(curl -sS --max-time 30 -w '\n%{http_code}' -X POST \
  -H 'content-type: application/json' \
  -d "{\"leader\":\"$primary\",\"candidate\":\"$candidate\"}" \
  "http://127.0.0.1:$(ha_node_rest_port "$primary")/switchover" 2>&1)" ||
  die "POST /switchover to $primary failed: ${answer//$'\n'/ }"
[ "${answer##*$'\n'}" = 200 ] || die "POST /switchover to $primary answered: ${answer//$'\n'/ }"
printf '%s\n' "$candidate"
