#!/usr/bin/env bash
# The benchmark suite (BENCHMARKS.md): builds authd and the load generator,
# starts `authd serve` as its own process on a fresh database, runs every
# scenario next to its ceiling (pgbench running the store's SQL; argon2id on
# all cores), prints a table and writes bench.json.
#
#   bash scripts/bench.sh              full run, release build (~10 minutes)
#   bash scripts/bench.sh --smoke      every scenario for a moment, debug build,
#                                      tiny counts, no verdicts (scripts/test.sh)
#   bash scripts/bench.sh --profile    full run with perf profiles of refresh and
#                                      /me (flame graphs), of login and of the
#                                      flood's phases (CPU per process, scheduling
#                                      delays), all in target/bench/perf/
#
# Other arguments go to the load generator (cargo run --example bench -- --help).
# Postgres: $DATABASE_URL if set, else a server on 127.0.0.1:5432 (user postgres).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
profile=0
args=()
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1; args+=("$a") ;;
    --profile) profile=1 ;;
    *) args+=("$a") ;;
  esac
done

if [ -z "${DATABASE_URL:-}" ]; then
  if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    echo "bench: set DATABASE_URL=postgres://USER@HOST:PORT/DB (a role that may CREATE DATABASE)" >&2
    exit 1
  fi
fi

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
  else
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

command -v pgbench >/dev/null 2>&1 || apt_install postgresql-client
if [ "$profile" = 1 ]; then
  command -v perf >/dev/null 2>&1 || apt_install linux-perf
  command -v inferno-flamegraph >/dev/null 2>&1 || cargo install --locked inferno
fi

if [ "$smoke" = 1 ]; then
  # Debug: the test suite has just built nearly all of it.
  cargo build --locked --bin authd --example bench
  target/debug/examples/bench --authd target/debug/authd --json target/bench/bench-smoke.json "${args[@]}"
  exit
fi

cargo build --locked --release --bin authd --example bench
if [ "$profile" = 1 ]; then
  perf_dir=target/bench/perf
  rm -rf "$perf_dir" && mkdir -p "$perf_dir"
  target/release/examples/bench --perf "$perf_dir" "${args[@]}"
  for s in refresh me; do
    perf script -i "$perf_dir/$s.data" 2>/dev/null | inferno-collapse-perf > "$perf_dir/$s.folded"
    inferno-flamegraph --title "authd: $s" < "$perf_dir/$s.folded" > "$perf_dir/$s.svg"
    # Self time per function in authd, and CPU per process on the whole machine.
    perf script -i "$perf_dir/$s.data" 2>/dev/null | python3 scripts/perf-components.py > "$perf_dir/$s-components.txt"
    perf report -i "$perf_dir/$s.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -n 25 > "$perf_dir/$s-top.txt"
    perf report -i "$perf_dir/$s-all.data" --sort comm --stdio 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -n 12 > "$perf_dir/$s-processes.txt"
    echo "== $s: flame graph $perf_dir/$s.svg"
    cat "$perf_dir/$s-processes.txt" "$perf_dir/$s-components.txt" "$perf_dir/$s-top.txt"
  done
  # Login and the flood's phases: CPU per process, and how long woken tasks
  # waited for a core (scheduling delay, by task name).
  for s in login flood-none flood-2x flood-4x; do
    [ -f "$perf_dir/$s-all.data" ] || continue
    perf report -i "$perf_dir/$s-all.data" --sort comm --stdio 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -n 12 > "$perf_dir/$s-processes.txt"
    perf sched latency -i "$perf_dir/$s-sched.data" --sort max 2>/dev/null \
      | head -n 24 > "$perf_dir/$s-latency.txt"
    echo "== $s"
    cat "$perf_dir/$s-processes.txt" "$perf_dir/$s-latency.txt"
  done
else
  target/release/examples/bench "${args[@]}"
fi
