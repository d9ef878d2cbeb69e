#!/usr/bin/env bash
# Builds the operator image (Dockerfile.operator) and the trainer/model-server image (Dockerfile.trainer)
# with podman, as the image tests (tests/images) and hack/e2e-kind.sh use them.
#
#   hack/build-images.sh                    # base (when needed), operator and trainer
#   hack/build-images.sh operator trainer   # only these steps (base | operator | trainer)
#   hack/build-images.sh clean              # remove the images named below (and dangling layers)
#
# Environment:
#   OPERATOR_IMAGE  default ghcr.io/keras-operator/keras-operator:VERSION (the chart's default names)
#   TRAINER_IMAGE   default ghcr.io/keras-operator/keras-trainer:VERSION, :VERSION-jax or :VERSION-torch
#                   (the operator's default image per spec.backend)
#   BACKEND         tensorflow (default), jax or torch: the trainer's Keras backend (Dockerfile.trainer's
#                   BACKEND). With the layer cache (the default) the jax and torch images build on the
#                   cached TensorFlow layers and add only their backend: BACKEND=jax hack/build-images.sh trainer
#   VARIANT         cpu (default) or gpu (the trainer with tensorflow[and-cuda], and jax[cuda12] for jax)
#   PYTHON_IMAGE    the base of both images; default python:3.11-slim-bookworm. When that cannot be
#                   pulled (no registry access) and debootstrap is at hand (as root), a stand-in is
#                   made: Debian bookworm's Python 3.11 with this machine's CA bundle and pip settings,
#                   imported as LOCAL_BASE_IMAGE (default localhost/keras-python-base:bookworm).
#   BUILD_FLAGS     more `podman build` flags, e.g. --layers=false (no cached layers left behind)
#   CONTAINERS_CONF default hack/containers.conf (runc, cgroupfs, ulimits)
# Builds use --network=host, so a package index or proxy on this machine's localhost works too.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/hack/containers.conf}

VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/keras-operator/Chart.yaml)
OPERATOR_IMAGE=${OPERATOR_IMAGE:-ghcr.io/keras-operator/keras-operator:$VERSION}
BACKEND=${BACKEND:-tensorflow}
case $BACKEND in
  tensorflow) TRAINER_IMAGE=${TRAINER_IMAGE:-ghcr.io/keras-operator/keras-trainer:$VERSION} ;;
  jax | torch) TRAINER_IMAGE=${TRAINER_IMAGE:-ghcr.io/keras-operator/keras-trainer:$VERSION-$BACKEND} ;;
  *) echo "unknown BACKEND: $BACKEND (tensorflow | jax | torch)" >&2; exit 2 ;;
esac
VARIANT=${VARIANT:-cpu}
# Fully qualified: podman resolves no short names without unqualified-search registries.
DEFAULT_PYTHON_IMAGE=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE_IMAGE=${LOCAL_BASE_IMAGE:-localhost/keras-python-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { echo "[build-images $(date +%H:%M:%S)] $*" >&2; }

# Writes the pip settings a build needs on this machine into a pip.conf for the base image: the CA
# bundle (registries may sit behind a TLS-re-signing proxy) and any index configured here by file or
# environment (local file:// indexes are left out: the build cannot see them).
pip_conf() {
  echo "[global]"
  echo "cert = /etc/ssl/certs/ca-certificates.crt"
  python3 - <<'PY'
import configparser, os
found = {}
for path in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", os.path.expanduser("~/.config/pip/pip.conf"),
             os.path.expanduser("~/.pip/pip.conf")):
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        continue
    for section in ("global", "install"):
        for key in ("index-url", "extra-index-url", "trusted-host", "timeout", "retries"):
            if parser.has_option(section, key):
                found[key] = parser.get(section, key)
for key in ("index-url", "extra-index-url", "trusted-host", "timeout", "retries"):
    value = os.environ.get("PIP_" + key.upper().replace("-", "_"))
    if value:
        found[key] = value
if "timeout" not in found and os.environ.get("PIP_DEFAULT_TIMEOUT"):
    found["timeout"] = os.environ["PIP_DEFAULT_TIMEOUT"]
for key, value in found.items():
    kept = [v for v in value.split() if not v.startswith("file:")]
    if kept:
        print(f"{key} = {' '.join(kept)}")
PY
}

local_base() {
  if podman image exists "$LOCAL_BASE_IMAGE"; then
    say "base: $LOCAL_BASE_IMAGE exists"
    return
  fi
  if [ "$(id -u)" -ne 0 ] || ! command -v debootstrap >/dev/null; then
    say "cannot pull $DEFAULT_PYTHON_IMAGE, and making a local base needs root and debootstrap"
    exit 1
  fi
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/keras-base.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$dir'" EXIT
  say "base: debootstrap bookworm (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$dir/root" "$DEBIAN_MIRROR" \
    >"$dir/debootstrap.log" 2>&1 || { tail -n 20 "$dir/debootstrap.log" >&2; exit 1; }
  local r=$dir/root
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/usr/share/doc/* "$r"/usr/share/man/* \
    "$r"/usr/share/locale/*
  cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
  ln -sf /usr/bin/python3 "$r/usr/local/bin/python"
  pip_conf >"$r/etc/pip.conf"
  tar -C "$r" -c . | podman import --quiet - "$LOCAL_BASE_IMAGE" >/dev/null
  rm -rf "$dir"
  trap - EXIT
  say "base: $LOCAL_BASE_IMAGE made"
}

# The base: PYTHON_IMAGE when set; else the default when it can be pulled; else a local stand-in.
base() {
  if [ -n "${PYTHON_IMAGE:-}" ]; then
    return
  fi
  if podman image exists "$DEFAULT_PYTHON_IMAGE" || podman pull --quiet "$DEFAULT_PYTHON_IMAGE" >/dev/null 2>&1; then
    PYTHON_IMAGE=$DEFAULT_PYTHON_IMAGE
  else
    local_base
    PYTHON_IMAGE=$LOCAL_BASE_IMAGE
  fi
}

build() {  # build DOCKERFILE IMAGE [ARG...]
  local file=$1 image=$2
  shift 2
  local started=$SECONDS
  say "$image: building $file on $PYTHON_IMAGE"
  # shellcheck disable=SC2086
  podman build --network=host --pull=never ${BUILD_FLAGS:-} --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" "$@" \
    -f "$file" -t "$image" . >&2
  say "$image: built in $((SECONDS - started)) s, $(podman image inspect --format '{{.Size}}' "$image") bytes"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(base operator trainer)
for step in "${steps[@]}"; do
  case $step in
    base) base ;;
    operator) base; build Dockerfile.operator "$OPERATOR_IMAGE" ;;
    trainer)
      base
      # The default build passes no BACKEND: its arguments stay as they were.
      backend_arg=()
      [ "$BACKEND" = tensorflow ] || backend_arg=(--build-arg "BACKEND=$BACKEND")
      build Dockerfile.trainer "$TRAINER_IMAGE" --build-arg "VARIANT=$VARIANT" "${backend_arg[@]}"
      ;;
    clean)
      for image in "$OPERATOR_IMAGE" "$TRAINER_IMAGE" "$LOCAL_BASE_IMAGE"; do
        podman rmi --force "$image" >/dev/null 2>&1 || true
      done
      podman image prune --force >/dev/null
      ;;
    *) echo "unknown step: $step (base | operator | trainer | clean)" >&2; exit 2 ;;
  esac
done
