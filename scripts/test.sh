#!/usr/bin/env bash
# Set up what the tests need, then run them all (unit, loopback WebRTC, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-browser
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
