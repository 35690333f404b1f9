#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine (as root), then run ALL tests:
# lint + types, the fast suite, the external-program tests (tcpdump, prometheus, chromium, tmux, gcc),
# the host-kernel tests in throwaway netns, and the VM tier (Debian's kernel under QEMU with strongSwan).
#
#   bash scripts/test.sh            # everything (what CI runs)
#   SKIP_INSTALL=1 bash scripts/test.sh -m "not vm"   # re-run quickly on a prepared machine
#
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export DEBIAN_FRONTEND=noninteractive

if [ -z "${SKIP_INSTALL:-}" ]; then
  echo "== system packages"
  APT=(apt-get -y -q -o DPkg::Lock::Timeout=900)
  "${APT[@]}" update >/dev/null
  "${APT[@]}" install --no-install-recommends \
      iproute2 tcpdump prometheus prometheus-alertmanager chromium tmux systemd util-linux libcap2-bin procps \
      python3-venv iputils-ping gcc libc6-dev linux-libc-dev >/dev/null
  echo "== VM harness (Debian kernel, QEMU, strongSwan, virtme-ng)"
  bash scripts/vm-setup.sh
  echo "== container engine and Debian base image (podman, runc, mmdebstrap)"
  bash scripts/container-setup.sh
  echo "== systemd boot image (mmdebstrap Debian root filesystem with systemd, for QEMU)"
  bash scripts/systemd-vm-setup.sh
  echo "== python environment"
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
fi

echo "== ruff"
.venv/bin/ruff check monitor bench tests
echo "== mypy (strict)"
.venv/bin/mypy
echo "== pytest (all tiers: unit, external, hostkernel, vm)"
mkdir -p artifacts
exec .venv/bin/pytest -p no:cacheprovider --durations=15 "$@"
