#!/usr/bin/env bash
# Mutation testing of the code whose tests matter most: the store's rules and
# error classification, token verification, CSRF and cookies, password
# hashing and its queue, the lockout rules, the per-IP rate limit and the warm
# connections of the hot statements.
#
#   bash scripts/mutants.sh              # every group below
#   bash scripts/mutants.sh tokens csrf  # some groups
#
# Not part of scripts/test.sh: each mutant rebuilds authd and reruns tests.
# Each file is tested with the unit tests and the integration suites that
# exercise it (building only those keeps a mutant at about a minute on 2
# cores, against seven for the whole suite). Needs Postgres like the tests
# (DATABASE_URL, default the local server). Results: mutants.out/<group>/
# (caught.txt, missed.txt, timeout.txt, unviable.txt); a missed mutant makes
# the script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo mutants --version 2>/dev/null | grep -q '^cargo-mutants 27\.'; then
  cargo install cargo-mutants --version 27.1.0 --locked
fi
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

# group: file, then the test targets that exercise it.
declare -A FILE TESTS
FILE[store]=src/store/mod.rs;        TESTS[store]="--lib --test conformance --test outage --test sessions --test api"
FILE[tokens]=src/tokens.rs;          TESTS[tokens]="--lib --test api --test jwks --test revocations"
FILE[csrf]=src/http/csrf.rs;         TESTS[csrf]="--lib --test api"
FILE[cookies]=src/http/cookies.rs;   TESTS[cookies]="--lib --test api"
FILE[password]=src/password.rs;      TESTS[password]="--lib --test hashing --test hashing_memory --test hashing_http --test accounts"
FILE[lockout]=src/lockout.rs;        TESTS[lockout]="--lib --test bruteforce"
FILE[ratelimit]=src/http/ratelimit.rs; TESTS[ratelimit]="--lib --test bruteforce"
FILE[warm]=src/store/warm.rs;        TESTS[warm]="--lib --test outage --test api"
ORDER=(store tokens csrf cookies password lockout ratelimit warm)

# Equivalent mutants: changes no test can observe because the behaviour is
# the same. Each is named here (a regex over cargo-mutants' mutant name) with
# why; everything else must be caught.
EQUIVALENT=(
  # A connection warm for exactly WARM_FOR (300 s, to the nanosecond of a
  # monotonic clock) is retired either way: no test can land on that instant.
  'src/store/warm\.rs:[0-9]+:[0-9]+: replace < with <= in is_fresh'
)

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=("${ORDER[@]}")
exclude_args=()
for re in "${EQUIVALENT[@]}"; do exclude_args+=(--exclude-re "$re"); done

status=0
mkdir -p mutants.out
for g in "${groups[@]}"; do
  [ -n "${FILE[$g]:-}" ] || { echo "unknown group $g (one of: ${ORDER[*]})" >&2; exit 2; }
  echo "==> $g: ${FILE[$g]} with ${TESTS[$g]}"
  # shellcheck disable=SC2086
  cargo mutants --package authd --test-tool nextest --timeout 300 \
    --file "${FILE[$g]}" "${exclude_args[@]}" --output "mutants.out/$g" \
    ${MUTANTS_ARGS:-} -- ${TESTS[$g]} || status=$?
done
exit "$status"
