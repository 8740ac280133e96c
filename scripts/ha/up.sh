#!/usr/bin/env bash
# The reference HA Postgres on loopback: one etcd, two Postgres 15 nodes under
# Patroni (synchronous replication), HAProxy routing to the primary.
#
#   scripts/ha/up.sh DIR
#
# Generates configs, free ports and passwords in DIR (DIR/env, sourceable:
# HAPROXY_PORT, ETCD_PORT, NODE1_REST_PORT, NODE1_PG_PORT, ..., DATABASE_URL for
# authd, ADMIN_DATABASE_URL), starts whatever is not running (PID files in DIR),
# and returns once the primary takes writes through HAProxy and the other node
# is its attached synchronous standby. Idempotent: on a running cluster it only
# checks; after a node crash it restarts that node and waits until the cluster
# is whole again. Daemons run as the postgres OS user when called as root.
# Installs patroni, etcd-server and haproxy with apt-get when missing.
#
#   HA_UP_TIMEOUT=120   seconds for the whole run (then one error line, exit 1)
set -euo pipefail
HA_SCRIPT="scripts/ha/up.sh" # used by die() in lib.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR="$(ha_dir "${1:-}")"
UP_TIMEOUT="${HA_UP_TIMEOUT:-120}"
DEADLINE=$((SECONDS + UP_TIMEOUT))

# Poll CMD until it succeeds or the run's deadline passes.
wait_until() {
  local what="$1" hint="$2"
  shift 2
  until "$@"; do
    if [ "$SECONDS" -ge "$DEADLINE" ]; then
      die "timed out after ${UP_TIMEOUT}s waiting for $what (see $hint; scripts/ha/down.sh $DIR cleans up)"
    fi
    sleep 0.2
  done
}

remaining() {
  local left=$((DEADLINE - SECONDS))
  [ "$left" -gt 1 ] || left=1
  printf '%s\n' "$left"
}

# --- tools -----------------------------------------------------------------

ensure_tools() {
  local missing=()
  command -v patroni >/dev/null 2>&1 || missing+=(patroni)
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client-15)
  command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
  [ -x "$PG_BIN_DIR/postgres" ] || missing+=(postgresql-15)
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1 && [ -x "$PG_BIN_DIR/postgres" ]; then
    die "running as root needs the postgres OS user to run Patroni and Postgres as (it comes with the postgresql-15 package)"
  fi
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] ||
    die "missing ${missing[*]}: install them (apt-get install -y ${missing[*]}) or run as root so this script can"
  local log="$DIR.apt.log"
  printf '%s: installing %s (apt-get)\n' "$HA_SCRIPT" "${missing[*]}" >&2
  if ! { timeout "$(remaining)" apt-get -o DPkg::Lock::Timeout=120 update &&
    DEBIAN_FRONTEND=noninteractive timeout "$(remaining)" \
      apt-get -o DPkg::Lock::Timeout=120 install -y -q "${missing[@]}"; } >"$log" 2>&1; then
    die "missing ${missing[*]} and 'apt-get install -y ${missing[*]}' failed (log: $log)"
  fi
  rm -f "$log"
  if ! { command -v patroni && command -v etcd && command -v haproxy && command -v psql &&
    [ -x "$PG_BIN_DIR/postgres" ]; } >/dev/null 2>&1; then
    die "apt-get installed ${missing[*]} but a tool is still missing"
  fi
}

# --- configuration (first run only) ----------------------------------------

# Seven distinct ports that nothing listens on, below the ephemeral range so
# an outgoing connection cannot have taken one by the time a daemon binds it.
pick_ports() {
  /usr/bin/python3 - <<'PY'
import random, socket
ports, socks = [], []
while len(ports) < 7:
    port = random.randint(20000, 32000)
    if port in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    socks.append(s)
    ports.append(port)
print(" ".join(map(str, ports)))
PY
}

password() { head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '='; }

write_node_config() {
  local node="$1" rest="$2" pg="$3"
  mkdir -p "$DIR/$node"
  cat >"$DIR/$node/patroni.yml" <<YAML
scope: authd-ha
namespace: /authd-ha/
name: $node
restapi:
  listen: 127.0.0.1:$rest
  connect_address: 127.0.0.1:$rest
etcd3:
  hosts: 127.0.0.1:$ETCD_PORT
bootstrap:
  dcs:
    # Fast failure detection on one machine; loop_wait + 2 * retry_timeout
    # must stay below ttl.
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    # A crashed primary postmaster is not restarted in place: fail over to
    # the synchronous standby at once.
    primary_start_timeout: 0
    maximum_lag_on_failover: 1048576
    # A commit is acknowledged only once the standby has it: a failover never
    # loses an acknowledged write.
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      remove_data_directory_on_rewind_failure: true
      remove_data_directory_on_diverged_timelines: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 5
        max_replication_slots: 5
        wal_keep_size: 128MB
        max_connections: 100
  initdb:
    - encoding: UTF8
    - data-checksums
    - auth-host: scram-sha-256
    - auth-local: peer
postgresql:
  listen: 127.0.0.1:$pg
  connect_address: 127.0.0.1:$pg
  data_dir: $DIR/$node/data
  bin_dir: $PG_BIN_DIR
  pgpass: $DIR/$node/pgpass
  authentication:
    superuser:
      username: postgres
      password: $PG_SUPERUSER_PASSWORD
    replication:
      username: replicator
      password: $PG_REPLICATION_PASSWORD
    rewind:
      username: rewinder
      password: $PG_REWIND_PASSWORD
  parameters:
    unix_socket_directories: $DIR/$node
  pg_hba:
    - local all all peer
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
YAML
}

configure() {
  if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    die "$DIR exists and is not a cluster directory made by this script; give a new or empty one"
  fi
  # Postgres's socket path (DIR/n1/.s.PGSQL.NNNNN) must fit in 107 bytes.
  [ "${#DIR}" -le 80 ] || die "$DIR is too long for Postgres's socket path: use a directory path of at most 80 characters"
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  local ports
  read -r -a ports <<<"$(pick_ports)"
  [ "${#ports[@]}" -eq 7 ] || die "could not find 7 free ports on 127.0.0.1"
  ETCD_PORT=${ports[0]}
  ETCD_PEER_PORT=${ports[1]}
  HAPROXY_PORT=${ports[2]}
  NODE1_REST_PORT=${ports[3]}
  NODE1_PG_PORT=${ports[4]}
  NODE2_REST_PORT=${ports[5]}
  NODE2_PG_PORT=${ports[6]}
  PG_SUPERUSER_PASSWORD="$(password)"
  PG_REPLICATION_PASSWORD="$(password)"
  PG_REWIND_PASSWORD="$(password)"
  AUTHD_DB_PASSWORD="$(password)"

  write_node_config n1 "$NODE1_REST_PORT" "$NODE1_PG_PORT"
  write_node_config n2 "$NODE2_REST_PORT" "$NODE2_PG_PORT"
  mkdir -p "$DIR/etcd"
  chmod 700 "$DIR/etcd"
  cat >"$DIR/haproxy.cfg" <<CFG
global
  maxconn 500
  log stderr format raw local0 info

defaults
  mode tcp
  log global
  timeout connect 1s
  timeout check 1s
  timeout client 30m
  timeout server 30m

# Every connection goes to the node whose Patroni says it holds the leader
# lock (GET /primary = 200). A node marked down has its connections cut at
# once, so clients never keep writing into a demoted primary.
listen postgres
  bind 127.0.0.1:$HAPROXY_PORT
  option httpchk OPTIONS /primary
  http-check expect status 200
  default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
  server n1 127.0.0.1:$NODE1_PG_PORT maxconn 90 check port $NODE1_REST_PORT
  server n2 127.0.0.1:$NODE2_PG_PORT maxconn 90 check port $NODE2_REST_PORT
CFG

  local env_tmp="$DIR/env.tmp"
  cat >"$env_tmp" <<ENV
AUTHD_HA_CLUSTER=1
AUTHD_HA_DIR=$DIR
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
HAPROXY_PORT=$HAPROXY_PORT
NODE1_REST_PORT=$NODE1_REST_PORT
NODE1_PG_PORT=$NODE1_PG_PORT
NODE2_REST_PORT=$NODE2_REST_PORT
NODE2_PG_PORT=$NODE2_PG_PORT
PG_SUPERUSER_PASSWORD=$PG_SUPERUSER_PASSWORD
PG_REPLICATION_PASSWORD=$PG_REPLICATION_PASSWORD
PG_REWIND_PASSWORD=$PG_REWIND_PASSWORD
AUTHD_DB_PASSWORD=$AUTHD_DB_PASSWORD
ADMIN_DATABASE_URL=postgres://postgres:$PG_SUPERUSER_PASSWORD@127.0.0.1:$HAPROXY_PORT/postgres
DATABASE_URL=postgres://authd:$AUTHD_DB_PASSWORD@127.0.0.1:$HAPROXY_PORT/authd
ENV
  chmod 600 "$env_tmp"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$DIR"
    chown root:root "$env_tmp"
  fi
  # Written last: its presence marks a complete configuration.
  mv "$env_tmp" "$DIR/env"
}

# --- processes -------------------------------------------------------------

# A daemon just started is only recognisable by its command line once setpriv
# and env have exec'd it; until then a PID-file check would call it dead.
started() {
  local what="$1" pidfile="$2" marker="$3" log="$4" limit=$((SECONDS + 5))
  until ha_pid_alive "$pidfile" "$marker"; do
    [ -d "/proc/$(head -n 1 "$pidfile")" ] ||
      die "$what exited at start (see $log): $(tail -n 5 "$log" 2>/dev/null | tr '\n' ' ')"
    [ "$SECONDS" -lt "$limit" ] || die "$what did not start within 5 s (see $log)"
    sleep 0.05
  done
}

start_etcd() {
  ha_pid_alive "$DIR/etcd.pid" "--data-dir $DIR/etcd" && return 0
  ha_as_owner "$DIR/etcd"
  "${HA_AS_OWNER[@]}" etcd \
    --name authd-ha --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "authd-ha=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new \
    </dev/null >>"$DIR/etcd.log" 2>&1 &
  echo $! >"$DIR/etcd.pid"
  started etcd "$DIR/etcd.pid" "--data-dir $DIR/etcd" "$DIR/etcd.log"
}

start_node() {
  local node="$1"
  ha_pid_alive "$DIR/$node/patroni.pid" "$DIR/$node/patroni.yml" && return 0
  ha_as_owner "$DIR/$node"
  "${HA_AS_OWNER[@]}" patroni "$DIR/$node/patroni.yml" \
    </dev/null >>"$DIR/$node/patroni.log" 2>&1 &
  echo $! >"$DIR/$node/patroni.pid"
  started "Patroni on $node" "$DIR/$node/patroni.pid" "$DIR/$node/patroni.yml" "$DIR/$node/patroni.log"
}

start_haproxy() {
  ha_pid_alive "$DIR/haproxy.pid" "$DIR/haproxy.cfg" && return 0
  ha_as_owner "$DIR"
  "${HA_AS_OWNER[@]}" haproxy -db -f "$DIR/haproxy.cfg" \
    </dev/null >>"$DIR/haproxy.log" 2>&1 &
  echo $! >"$DIR/haproxy.pid"
  started HAProxy "$DIR/haproxy.pid" "$DIR/haproxy.cfg" "$DIR/haproxy.log"
}

etcd_healthy() {
  ha_pid_alive "$DIR/etcd.pid" "--data-dir $DIR/etcd" ||
    die "etcd exited at start (see $DIR/etcd.log): $(tail -n 5 "$DIR/etcd.log" 2>/dev/null | tr '\n' ' ')"
  curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

# A primary, and the other node attached as its synchronous standby.
cluster_whole() {
  local node primary
  for node in $HA_NODES; do
    ha_pid_alive "$DIR/$node/patroni.pid" "$DIR/$node/patroni.yml" ||
      die "Patroni on $node exited (see $DIR/$node/patroni.log)"
  done
  primary="$(ha_primary)" || return 1
  [ "$(ha_rest_status "$(ha_other_node "$primary")" /sync)" = 200 ]
}

# psql through HAProxy, bounded. The password goes in the environment, not
# on psql's command line where ps would show it.
ha_psql() {
  local url="$1" password
  shift
  password="${url#postgres://*:}"
  password="${password%%@*}"
  PGPASSWORD="$password" PGCONNECT_TIMEOUT=2 PGOPTIONS="-c statement_timeout=5000" \
    timeout 10 psql "${url/:$password@/@}" -XAtq -v ON_ERROR_STOP=1 "$@"
}

# authd's role and database (idempotent); a write, so this also proves the
# primary behind HAProxy takes writes.
create_authd_database() {
  ha_psql "$ADMIN_DATABASE_URL" >/dev/null 2>&1 <<SQL
\\set pw '$AUTHD_DB_PASSWORD'
SELECT format('CREATE ROLE authd LOGIN PASSWORD %L', :'pw')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authd') \\gexec
SELECT 'CREATE DATABASE authd OWNER authd'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'authd') \\gexec
SQL
}

# A transaction id is only handed out by a writable primary, and its commit
# waits for the synchronous standby.
authd_can_write() {
  [ "$(ha_psql "$DATABASE_URL" -c 'SELECT txid_current() > 0' 2>/dev/null)" = t ]
}

# --- main ------------------------------------------------------------------

ensure_tools
if ! ha_is_ours "$DIR"; then
  configure
fi
ha_load_env "$DIR"

start_etcd
wait_until "etcd on 127.0.0.1:$ETCD_PORT" "$DIR/etcd.log" etcd_healthy
for node in $HA_NODES; do start_node "$node"; done
start_haproxy
wait_until "a primary and a synchronous standby" "$DIR/n1/patroni.log, $DIR/n2/patroni.log" cluster_whole
ha_pid_alive "$DIR/haproxy.pid" "$DIR/haproxy.cfg" || die "HAProxy exited at start (see $DIR/haproxy.log)"
wait_until "writes through HAProxy on 127.0.0.1:$HAPROXY_PORT" "$DIR/haproxy.log" create_authd_database
wait_until "authd's database to take writes" "$DIR/haproxy.log" authd_can_write
printf '%s: cluster up in %s (primary %s, HAProxy 127.0.0.1:%s); settings in %s/env\n' \
  "$HA_SCRIPT" "$DIR" "$(ha_primary || echo '?')" "$HAPROXY_PORT" "$DIR" >&2
