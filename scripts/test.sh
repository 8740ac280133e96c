#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, then every Rust test of the
# workspace (unit, integration against a real Postgres and real SQLite files,
# the authd-verify kit against a real `authd serve`; then, alone, the
# failover test on an HA cluster it builds with scripts/ha/), then the Node
# verifier kit's tests (clients/node/test.sh), then the benchmark suite's
# smoke run (scripts/bench.sh --smoke), then the browser
# end-to-end tests in headless Chromium, then the container test (the
# Dockerfile built with buildah and run with podman: scripts/container/test.sh).
#
# Postgres: $DATABASE_URL if set (a role that may CREATE DATABASE); else a
# server answering on 127.0.0.1:5432 (user postgres); else the locally
# installed cluster, started with pg_ctlcluster; else a one-line error.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

find_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then
    return
  fi
  if ! port_open 127.0.0.1 5432 && command -v pg_ctlcluster >/dev/null 2>&1; then
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$version" ]; then
      say "starting the local PostgreSQL $version cluster"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
      for _ in $(seq 1 60); do port_open 127.0.0.1 5432 && break; sleep 0.5; done
    fi
  fi
  if port_open 127.0.0.1 5432; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
    return
  fi
  echo "authd tests need PostgreSQL: set DATABASE_URL=postgres://USER@HOST:PORT/DB (a role allowed to CREATE DATABASE), or install PostgreSQL locally (apt-get install postgresql) so this script can start it." >&2
  exit 1
}

drop_test_databases() {
  command -v psql >/dev/null 2>&1 || return 0
  psql "$DATABASE_URL" -XAtq -c "SELECT 'DROP DATABASE IF EXISTS \"' || datname || '\" WITH (FORCE);' FROM pg_database WHERE datname LIKE 'authd_test_%'" 2>/dev/null \
    | psql "$DATABASE_URL" -Xq >/dev/null 2>&1 || true
}

find_postgres
say "Postgres: ${DATABASE_URL%%\?*}"
drop_test_databases

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "schemathesis venv (tests/schemathesis.rs)"
SCHEMATHESIS="$(bash scripts/schemathesis-venv.sh)"
export SCHEMATHESIS

say "Rust tests (unit + integration)"
# The binary the kits' tests run as a process (`authd serve`): built here so
# those tests find it ready (its features differ from the workspace build's).
cargo build --locked --bin authd
if cargo nextest --version >/dev/null 2>&1; then
  # The failover test runs alone afterwards: its outage bounds assume it
  # does not share the two cores with the rest of the suite.
  cargo nextest run --workspace --locked --no-fail-fast -E 'not binary_id(authd::failover)'
  say "failover test (HA Postgres: Patroni + etcd + HAProxy, scripts/ha/)"
  cargo nextest run --workspace --locked --no-fail-fast -E 'binary_id(authd::failover)'
else
  # cargo test runs one test binary at a time, the failover test included.
  cargo test --workspace --locked --no-fail-fast
fi
cargo test --workspace --locked --doc

say "Node verifier kit (clients/node: npm ci, node --test against a real authd)"
bash clients/node/test.sh

say "benchmark smoke run (every scenario for a moment; no timing judged)"
# Debug build (the tests above built nearly all of it); installs pgbench if missing.
bash scripts/bench.sh --smoke

if [ -x e2e/run.sh ]; then
  say "browser end-to-end tests (headless Chromium)"
  e2e/run.sh
fi

say "container test (Dockerfile built with buildah, run with podman)"
bash scripts/container/test.sh

drop_test_databases
say "all tests passed"
