# shellcheck shell=bash
# Shared by scripts/ha/*.sh (sourced, not run): where things live in a cluster
# directory, how to run a daemon as the postgres OS user, and how to ask
# Patroni which node is the primary. Each script sets HA_SCRIPT (its name in
# error lines) before sourcing this.

HA_NODES="n1 n2"
PG_BIN_DIR="${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}"
HA_SYSTEM_PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

die() {
  # shellcheck disable=SC2153 # set by the sourcing script
  printf '%s: %s\n' "$HA_SCRIPT" "$*" >&2
  exit 1
}

# The cluster directory as an absolute path, refusing anything that is not
# one of ours when it already exists (down.sh removes it).
ha_dir() {
  [ -n "${1:-}" ] || die "usage: $HA_SCRIPT DIR"
  local dir
  dir="$(realpath -m -- "$1")"
  case "$dir" in
    / | /tmp | /root | /home | /var | /usr | /etc) die "refusing to use $dir as a cluster directory" ;;
  esac
  printf '%s\n' "$dir"
}

ha_is_ours() { [ -f "$1/env" ] && grep -qx 'AUTHD_HA_CLUSTER=1' "$1/env"; }

# Load DIR/env (written by up.sh) into the environment.
ha_load_env() {
  ha_is_ours "$1" || die "$1 is not a cluster directory made by scripts/ha/up.sh (no $1/env)"
  set -a
  # shellcheck disable=SC1091
  . "$1/env"
  set +a
}

# Daemons run as the postgres OS user when we are root (Patroni and Postgres
# refuse root), with a clean environment so no PG* variable of the caller
# leaks in. Sets HA_AS_OWNER to the command prefix; setpriv and env exec, so
# `"${HA_AS_OWNER[@]}" daemon &` leaves the daemon's own PID in $!.
ha_as_owner() {
  local home="$1"
  HA_AS_OWNER=()
  if [ "$(id -u)" -eq 0 ]; then
    HA_AS_OWNER=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  HA_AS_OWNER+=(env -i PATH="$HA_SYSTEM_PATH" HOME="$home" LANG=C.UTF-8)
}

# Whether the PID in PIDFILE is alive and its command line mentions MARKER
# (guards against a recycled PID).
ha_pid_alive() {
  local pidfile="$1" marker="$2" pid
  [ -s "$pidfile" ] || return 1
  pid="$(head -n 1 "$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# Node n1's ports are NODE1_REST_PORT and NODE1_PG_PORT in DIR/env.
ha_node_rest_port() {
  local var="NODE${1#n}_REST_PORT"
  printf '%s\n' "${!var}"
}

ha_node_pg_port() {
  local var="NODE${1#n}_PG_PORT"
  printf '%s\n' "${!var}"
}

# HTTP status of a Patroni REST GET on NODE (000 when it does not answer).
ha_rest_status() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
    "http://127.0.0.1:$(ha_node_rest_port "$1")$2" 2>/dev/null || true
}

# The node whose Patroni answers GET /primary with 200, or nothing.
ha_primary() {
  local node
  for node in $HA_NODES; do
    if [ "$(ha_rest_status "$node" /primary)" = 200 ]; then
      printf '%s\n' "$node"
      return 0
    fi
  done
  return 1
}

ha_other_node() {
  local node
  for node in $HA_NODES; do
    [ "$node" = "$1" ] || printf '%s\n' "$node"
  done
}

# The postmaster PID of NODE in $DIR (first line of postmaster.pid), or nothing.
ha_postmaster_pid() {
  local file="$DIR/$1/data/postmaster.pid" pid
  [ -r "$file" ] || return 1
  pid="$(head -n 1 "$file")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -d "/proc/$pid" ] || return 1
  printf '%s\n' "$pid"
}
