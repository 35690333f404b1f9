#!/usr/bin/env bash
# Set up what tests/test_deploy_container_run.py needs to build and run deploy/container/Containerfile
# (run as root; idempotent): podman (with buildah's builder inside), runc, mmdebstrap, and a Debian base
# image made from Debian's packages, so that nothing is pulled from an image registry.
#
#   $MONITOR_VM_CACHE/container/base-bookworm.tar   mmdebstrap rootfs: python3, python3-venv,
#                                                   python-is-python3, passwd, ca-certificates
#
# The test imports the tarball into a private podman store and builds the Containerfile on it with
# --build-arg PYTHON_IMAGE=localhost/ipsec-monitor-base:bookworm. Building the tarball takes ~2.5 min once.
set -euo pipefail

CACHE="${MONITOR_VM_CACHE:-/opt/monitor-vm}/container"
BASE="$CACHE/base-bookworm.tar"
PKGS=(podman runc mmdebstrap)
INCLUDE=python3,python3-venv,python-is-python3,passwd,ca-certificates
APT=(apt-get -y -q -o DPkg::Lock::Timeout=900)

log() { echo "container-setup: $*" >&2; }
if [ "$(id -u)" != 0 ]; then log "must run as root"; exit 2; fi
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  "${APT[@]}" update >&2
  "${APT[@]}" install --no-install-recommends "${missing[@]}" >&2
fi

# the recipe is part of the cache key: a changed package list rebuilds the base
mkdir -p "$CACHE"
if [ ! -s "$BASE" ] || [ "$(cat "$BASE.recipe" 2>/dev/null)" != "bookworm minbase $INCLUDE" ]; then
  log "building $BASE with mmdebstrap (Debian's mirror from this host's apt sources)"
  rm -f "$BASE.new"
  mmdebstrap --variant=minbase --include="$INCLUDE" bookworm "$BASE.new" >&2
  mv "$BASE.new" "$BASE"
  echo "bookworm minbase $INCLUDE" > "$BASE.recipe"
fi
log "base $(du -h "$BASE" | cut -f1) $BASE"
