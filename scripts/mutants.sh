#!/usr/bin/env bash
# Mutation testing of the code whose tests matter most: the store's rules and
# error classification, token verification, CSRF and cookies, password
# hashing and its queue, the lockout rules and the per-IP rate limit.
#
#   bash scripts/mutants.sh                 # every file below
#   bash scripts/mutants.sh --file src/tokens.rs   # only that file (other options go to cargo-mutants)
#
# Not part of scripts/test.sh: each mutant rebuilds authd and reruns the suite,
# so a full run takes most of an hour on 2 cores. Needs Postgres like the tests
# (DATABASE_URL, default the local server). Results: mutants.out/ (caught.txt,
# missed.txt, timeout.txt, unviable.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo mutants --version 2>/dev/null | grep -q '^cargo-mutants 27\.'; then
  cargo install cargo-mutants --version 27.1.0 --locked
fi
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

FILES=(
  src/store/mod.rs
  src/tokens.rs
  src/http/csrf.rs
  src/http/cookies.rs
  src/password.rs
  src/lockout.rs
  src/http/ratelimit.rs
)

# Equivalent mutants: changes no test can observe because the behaviour is the
# same. Each is named here with why; everything else must be caught.
EQUIVALENT=(
)

# Given --file options replace the list.
file_args=()
case " $* " in
  *" --file "* | *" -f "*) ;;
  *) for f in "${FILES[@]}"; do file_args+=(--file "$f"); done ;;
esac
exclude_args=()
for re in "${EQUIVALENT[@]}"; do exclude_args+=(--exclude-re "$re"); done

# The failover test needs its own HA cluster and minutes per run, and the
# hashing-memory test measures RSS: neither checks these files' logic.
exec cargo mutants --package authd --test-tool nextest --timeout 300 \
  "${file_args[@]}" "${exclude_args[@]}" "$@" \
  -- -E 'not (binary_id(authd::failover) | binary_id(authd::hashing_memory))'
