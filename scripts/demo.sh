#!/usr/bin/env bash
# Sets up (once) and trains the digits example locally: no cluster, no download.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/kerasop ] || bash scripts/setup.sh
exec .venv/bin/kerasop run examples/digits.yaml
