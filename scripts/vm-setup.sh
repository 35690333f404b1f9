#!/usr/bin/env bash
# Set up the VM test harness used by tests/vm (run as root; idempotent).
#
# Installs the guest-side tools (qemu, strongSwan, tcpdump ...), unpacks Debian's current stock kernel
# (which has ESP/XFRM modules; the host kernel may not) into a cache dir without installing it, and creates
# a venv with virtme-ng. Prints the kernel image path on the last line of stdout.
#
# Layout (MONITOR_VM_CACHE, default /opt/monitor-vm):
#   $MONITOR_VM_CACHE/kroot/boot/vmlinuz-<ver>     kernel image
#   $MONITOR_VM_CACHE/kroot/lib/modules/<ver>/     modules, depmod'ed (virtme-ng links them into the guest)
#   $MONITOR_VM_CACHE/vng/bin/vng                  virtme-ng
#   $MONITOR_VM_CACHE/kernel                       one line: path of the kernel image
# The cache must NOT live under /var/tmp, /var/cache or /var/log (empty tmpfs mounts inside the guest).
set -euo pipefail

CACHE="${MONITOR_VM_CACHE:-/opt/monitor-vm}"
case "$CACHE" in
  /var/tmp*|/var/cache*|/var/log*) echo "vm-setup: MONITOR_VM_CACHE=$CACHE is hidden inside the guest" >&2; exit 2;;
esac
KROOT="$CACHE/kroot"
VNG="$CACHE/vng"
PKGS=(qemu-system-x86 kmod busybox-static strongswan-charon strongswan-swanctl
      libstrongswan-standard-plugins iputils-ping tcpdump iproute2 python3-venv curl jq)
APT=(apt-get -y -q -o DPkg::Lock::Timeout=900)

log() { echo "vm-setup: $*" >&2; }

if [ "$(id -u)" != 0 ]; then log "must run as root"; exit 2; fi
export DEBIAN_FRONTEND=noninteractive

# 1. packages (apt-get update once first: apt-cache needs it on a fresh machine)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ! -s "$CACHE/kernel" ]; then
  log "apt-get update"
  "${APT[@]}" update >&2
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  "${APT[@]}" install --no-install-recommends "${missing[@]}" >&2
fi

# 2. kernel: resolve the current stock kernel package at run time
mkdir -p "$CACHE"
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null \
       | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1 || true)
if [ -z "$KPKG" ]; then
  # offline re-run: keep whatever is already unpacked
  if [ -s "$CACHE/kernel" ] && [ -f "$(cat "$CACHE/kernel")" ]; then
    log "cannot resolve linux-image-amd64; keeping $(cat "$CACHE/kernel")"
    cat "$CACHE/kernel"; exit 0
  fi
  log "cannot resolve linux-image-amd64 (apt-cache depends gave nothing)"; exit 1
fi
KVER=${KPKG#linux-image-}
VMLINUZ="$KROOT/boot/vmlinuz-$KVER"
if [ ! -f "$VMLINUZ" ] || [ ! -f "$KROOT/lib/modules/$KVER/modules.dep" ]; then
  log "downloading $KPKG"
  tmp=$(mktemp -d "$CACHE/dl.XXXXXX"); chmod 755 "$tmp"  # _apt must be able to write there
  (cd "$tmp" && apt-get download "$KPKG" >&2)
  rm -rf "$KROOT.new"
  mkdir -p "$KROOT.new"
  dpkg -x "$tmp"/"$KPKG"_*.deb "$KROOT.new"
  rm -rf "$tmp"
  # Debian's /lib may be a usrmerge'd layout in the package: normalise to kroot/lib/modules
  if [ ! -d "$KROOT.new/lib/modules/$KVER" ] && [ -d "$KROOT.new/usr/lib/modules/$KVER" ]; then
    mkdir -p "$KROOT.new/lib/modules"
    mv "$KROOT.new/usr/lib/modules/$KVER" "$KROOT.new/lib/modules/"
  fi
  depmod -b "$KROOT.new" "$KVER"
  # keep older unpacked kernels out of the way: replace atomically
  rm -rf "$KROOT.old"; [ -d "$KROOT" ] && mv "$KROOT" "$KROOT.old"
  mv "$KROOT.new" "$KROOT"; rm -rf "$KROOT.old"
fi
for m in esp4 xfrm_user nlmon veth; do
  if ! grep -q "/$m\.ko" "$KROOT/lib/modules/$KVER/modules.dep" \
     && ! grep -q "/$m\.ko" "$KROOT/lib/modules/$KVER/modules.builtin" 2>/dev/null; then
    log "kernel $KVER lacks module $m"; exit 1
  fi
done
# vmlinuz in Debian's package is mode 0600; qemu runs as root anyway, but make it readable for non-root users
chmod a+r "$VMLINUZ" || true

# 3. virtme-ng venv
if [ ! -x "$VNG/bin/vng" ] || ! "$VNG/bin/vng" --version >/dev/null 2>&1; then
  log "creating virtme-ng venv in $VNG"
  rm -rf "$VNG"
  python3 -m venv "$VNG"
  "$VNG/bin/pip" install -q --disable-pip-version-check virtme-ng >&2
fi

# 4. libreswan for scenario `libreswan`: its package conflicts with strongSwan's (Conflicts: strongswan-libcharon,
#    strongswan-starter), so it is not installed: its library dependencies are, and the package itself is unpacked
#    (dpkg -x) into $CACHE/libreswan, whose binaries the scenario runs from there (tests/vm/scenarios/libreswan.sh).
LS="$CACHE/libreswan"
LS_DEPS=(libnss3-tools libnss3 libnspr4 libevent-core-2.1-7 libevent-pthreads-2.1-7 libldns3 libunbound8
         libcurl3-nss libcap-ng0 libldap-2.5-0 libaudit1 dns-root-data)
ls_missing=()
for p in "${LS_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || ls_missing+=("$p")
done
if [ ${#ls_missing[@]} -gt 0 ]; then
  log "installing libreswan's dependencies ${ls_missing[*]}"
  "${APT[@]}" install --no-install-recommends "${ls_missing[@]}" >&2
fi
if [ ! -x "$LS/usr/libexec/ipsec/pluto" ]; then
  log "unpacking libreswan into $LS"
  tmp=$(mktemp -d "$CACHE/dl.XXXXXX"); chmod 755 "$tmp"
  (cd "$tmp" && apt-get download libreswan >&2)
  rm -rf "$LS.new"; mkdir -p "$LS.new"
  dpkg -x "$tmp"/libreswan_*.deb "$LS.new"
  rm -rf "$tmp" "$LS"; mv "$LS.new" "$LS"
fi

echo "$VMLINUZ" > "$CACHE/kernel"
log "kernel $KVER, vng $("$VNG/bin/vng" --version 2>&1 | head -n1)"
echo "$VMLINUZ"
