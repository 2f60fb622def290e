#!/usr/bin/env bash
# Set up what the tests need, then run them all (unit, loopback WebRTC, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-browser
export HF_HUB_OFFLINE=1
# The store, limits and two-app-server tests run against PostgreSQL as well as SQLite: a throwaway cluster.
eval "$(bash scripts/postgres.sh start)"
trap 'bash scripts/postgres.sh stop "$KOE_TEST_PGDIR"' EXIT
.venv/bin/python -m pytest -q "$@"
