#!/usr/bin/env bash
# Browser end-to-end tests: the demo frontend and authd's cookie, CORS and CSRF
# rules in headless Chromium (Debian's package, driven by playwright-core).
# Installs what it needs on a fresh machine (Chromium via apt-get, npm
# packages via `npm ci`), builds authd, runs every e2e/tests/*.test.mjs with
# Node's test runner. The authd servers the tests start use SQLite in temp
# dirs (no Postgres). Exits non-zero on any failure.
#
#   E2E_TIMEOUT=600   seconds for the whole test run
#   CHROMIUM=/usr/bin/chromium
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$E2E_DIR")"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
TIMEOUT="${E2E_TIMEOUT:-600}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'e2e/run.sh: %s\n' "$*" >&2; exit 1; }

# Whatever the tests leave running (authd servers, static servers) is in the
# test run's process group, and whatever they leave on disk (databases,
# browser profiles) is in $work: end and remove both on every exit path.
runner=""
work=""
cleanup() {
  if [ -n "$runner" ]; then
    kill -TERM -- "-$runner" 2>/dev/null || true
  fi
  if [ -n "$work" ]; then
    rm -rf "$work" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. Chromium, from Debian (Playwright's own browser downloads are not used).
if [ ! -x "$CHROMIUM" ]; then
  [ "$CHROMIUM" = /usr/bin/chromium ] || die "CHROMIUM=$CHROMIUM is not an executable"
  say "installing chromium (apt-get)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
  fi
  apt_log="$(mktemp)"
  if ! { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium; } >"$apt_log" 2>&1; then
    die "/usr/bin/chromium is missing and 'apt-get install -y chromium' failed (needs root and Debian's archive; log: $apt_log)"
  fi
  rm -f "$apt_log"
  [ -x "$CHROMIUM" ] || die "apt-get installed chromium but $CHROMIUM is still missing"
fi

# 2. Node >= 20.10 (node:test with --test-concurrency) and the npm packages.
command -v node >/dev/null 2>&1 || die "node is missing: install Node.js 20 or newer"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=10)?0:1)' \
  || die "Node.js $(node --version) is too old: 20.10 or newer is needed"
stamp="$E2E_DIR/node_modules/.run-sh-lock"
if ! cmp -s "$E2E_DIR/package-lock.json" "$stamp"; then
  say "npm ci (e2e/)"
  (cd "$E2E_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$E2E_DIR/package-lock.json" "$stamp"
fi

# 3. authd itself (cheap when already built).
say "cargo build --locked"
(cd "$ROOT" && cargo build --locked --quiet)

# 4. The tests, one file at a time, within a time limit. `timeout` runs them
# in a process group of their own, which `cleanup` ends.
say "node --test (headless $("$CHROMIUM" --version 2>/dev/null || echo chromium))"
cd "$E2E_DIR"
work="$(mktemp -d -t authd-e2e-run.XXXXXX)"
export AUTHD_BIN="$ROOT/target/debug/authd" CHROMIUM
TMPDIR="$work" timeout --kill-after=15 "$TIMEOUT" node --test --test-concurrency=1 tests/*.test.mjs &
runner=$!
status=0
wait "$runner" || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  die "the browser tests did not finish within ${TIMEOUT}s"
fi
[ "$status" -eq 0 ] || die "browser tests failed (exit $status)"
say "browser tests passed"
