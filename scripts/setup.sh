#!/usr/bin/env bash
# Creates .venv with the project and everything the demo and the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
.venv/bin/python scripts/fetch_helm.py  # helm + kubectl for the chart tests
# wrk, the load generator of bench/serving.py (and of its smoke test): Debian's package, best effort.
if ! command -v wrk >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
  { $sudo apt-get install -y -qq wrk || { $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk; }; } \
    >/dev/null 2>&1 || echo "note: could not install wrk (bench/serving.py needs it)" >&2
fi
