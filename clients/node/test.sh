#!/usr/bin/env bash
# The Node kit's tests against a real authd: builds target/debug/authd,
# installs the locked npm dependencies (npm ci), creates a fresh Postgres
# database, runs `node --test` (which starts and stops `authd serve` itself),
# and drops the database. Needs DATABASE_URL (a role that may CREATE DATABASE),
# as scripts/test.sh sets it; installs psql if missing.
set -euo pipefail
cd "$(dirname "$0")"
: "${DATABASE_URL:?set DATABASE_URL=postgres://USER@HOST:PORT/DB (a role that may CREATE DATABASE)}"

if ! command -v psql >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq postgresql-client >/dev/null
fi
if ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi

(cd ../.. && cargo build --locked --quiet --bin authd)
timeout 300 npm ci --no-audit --no-fund --loglevel=error

db="authd_test_node_$(date +%s)_$$"
psql "$DATABASE_URL" -Xq -c "CREATE DATABASE \"$db\"" >/dev/null
trap 'psql "$DATABASE_URL" -Xq -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
# The admin URL with its database name replaced (query string kept).
db_url=$(printf '%s' "$DATABASE_URL" | sed -E "s#^([a-z]+://[^/?]+)(/[^?]*)?#\1/$db#")

AUTHD_BIN="$(cd ../.. && pwd)/target/debug/authd" \
AUTHD_TEST_DATABASE_URL="$db_url" \
  timeout 300 node --test --test-concurrency=1 test/*.test.js
