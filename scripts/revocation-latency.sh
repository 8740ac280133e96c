#!/usr/bin/env bash
# Revocation latency of the verifier kits (issue 17.4): three `authd serve`
# replicas on one fresh database, a downstream service per kit (Rust:
# crates/authd-verify/examples/downstream.rs; Node:
# clients/node/examples/downstream.js) following replica 1's feed, and 100
# trials each of: log in (replica 3), check the downstream accepts the token,
# POST /logout-all to replica 2, time from its 204 to the downstream's first
# 401. Prints the percentiles. Release builds (PROFILE=debug: debug builds);
# everything on 127.0.0.1.
#
#   bash scripts/revocation-latency.sh [TRIALS]
#
# Needs DATABASE_URL (a role that may CREATE DATABASE), psql, node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
trials="${1:-100}"
: "${DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres}"

profile="${PROFILE:-release}"
flag=--release
[ "$profile" = release ] || { profile=debug; flag=; }
cargo build $flag --locked --quiet --bin authd
cargo build $flag --locked --quiet -p authd-verify --example downstream --example revocation_latency
bin="target/$profile"
(cd clients/node && npm ci --no-audit --no-fund --loglevel=error)

work=$(mktemp -d)
db="authd_latency_$(date +%s)_$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql "$DATABASE_URL" -Xq -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql "$DATABASE_URL" -Xq -c "CREATE DATABASE \"$db\"" >/dev/null
db_url=$(printf '%s' "$DATABASE_URL" | sed -E "s#^([a-z]+://[^/?]+)(/[^?]*)?#\1/$db#")

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ready() {
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "not ready: $1" >&2
  exit 1
}

./$bin/authd secret generate --ed25519 > "$work/key.pem"
feed_token=$(./$bin/authd secret generate)
refresh_secret=$(./$bin/authd secret generate)
urls=()
for i in 1 2 3; do
  port=$(free_port)
  # Replica 1 migrates; the others wait for it.
  [ "$i" = 1 ] || wait_ready "${urls[0]}/health/ready"
  DATABASE_URL="$db_url" ACCESS_TOKEN_ALG=EdDSA ACCESS_TOKEN_PRIVATE_KEY="$work/key.pem" \
    REFRESH_TOKEN_SECRET="$refresh_secret" \
    REVOCATIONS_TOKEN="$feed_token" RATE_LIMIT_PER_IP=0 RUST_LOG=warn \
    REQUEST_TIMEOUT=30s PASSWORD_HASH_MAX_WAIT=20s \
    BIND_ADDR="127.0.0.1:$port" ./$bin/authd serve > "$work/authd-$i.log" 2>&1 &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
done
for url in "${urls[@]}"; do wait_ready "$url/health/ready"; done

rust_port=$(free_port)
AUTHD_URL="${urls[0]}" AUTHD_REVOCATIONS_TOKEN="$feed_token" BIND_ADDR="127.0.0.1:$rust_port" \
  ./$bin/examples/downstream > "$work/rust.log" 2>&1 &
pids+=($!)
node_port=$(free_port)
AUTHD_URL="${urls[0]}" AUTHD_REVOCATIONS_TOKEN="$feed_token" PORT="$node_port" \
  node clients/node/examples/downstream.js > "$work/node.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$rust_port/health"
wait_ready "http://127.0.0.1:$node_port/health"

echo "revocation latency: 204 of /logout-all (replica 2) -> first 401 from a downstream following replica 1"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "command: PROFILE=$profile bash scripts/revocation-latency.sh $trials"
printf 'Rust kit (authd-verify): '
./$bin/examples/revocation_latency "${urls[2]}" "${urls[1]}" "http://127.0.0.1:$rust_port/me" "$trials"
printf 'Node kit (clients/node): '
./$bin/examples/revocation_latency "${urls[2]}" "${urls[1]}" "http://127.0.0.1:$node_port/me" "$trials"
