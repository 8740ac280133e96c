#!/usr/bin/env bash
# A Python venv with a pinned schemathesis, for tests/schemathesis.rs:
# .venv-test/ at the repository root (git-ignored). Idempotent: an existing
# venv with the pinned version is kept. Prints the schemathesis path.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
VENV=.venv-test
BIN="$VENV/bin/schemathesis"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -qx "schemathesis, version $VERSION"; then
  echo "$PWD/$BIN"
  exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "scripts/schemathesis-venv.sh: python3 is missing (apt-get install python3 python3-venv)" >&2; exit 1; }
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; } >&2
  else
    echo "scripts/schemathesis-venv.sh: python3's venv module is missing (apt-get install python3-venv)" >&2
    exit 1
  fi
fi
rm -rf "$VENV"
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
"$BIN" --version >&2
echo "$PWD/$BIN"
