#!/usr/bin/env bash
# Creates .venv with the project and everything the demo and the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -P -m venv .venv  # -P: the operator/ folder must not shadow the stdlib module
.venv/bin/python -P -m pip install --quiet --upgrade pip
.venv/bin/python -P -m pip install --quiet -c constraints.txt -e '.[dev]'
.venv/bin/python -P scripts/fetch_helm.py  # helm + kubectl for the chart tests
