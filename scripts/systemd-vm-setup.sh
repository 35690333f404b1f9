#!/usr/bin/env bash
# Set up the systemd boot test (tests/test_deploy_systemd_boot.py): a Debian root filesystem built from
# Debian's packages by mmdebstrap, with systemd as init and Debian's kernel + initramfs, booted under
# qemu-system-x86_64 (run as root; idempotent; ~4 min once, then cached).
#
# Layout ($MONITOR_VM_CACHE, default /opt/monitor-vm):
#   systemd/base.img        ext4 root filesystem (raw; the test boots a qcow2 overlay of it, never it)
#   systemd/vmlinuz         the rootfs's own kernel, and
#   systemd/initrd.img      its initramfs (initramfs-tools, MODULES=most: virtio and ext4 inside)
#   systemd/base.recipe     what was built; a changed recipe rebuilds
#
# The image holds nothing of the project: one generic unit, payload.service, mounts the second disk
# (/dev/vdb) at /payload and runs /payload/run.sh, which the test writes (the monitor's wheels, the shipped
# unit files, the checks). So the cache survives every change to the project.
set -euo pipefail

CACHE="${MONITOR_VM_CACHE:-/opt/monitor-vm}/systemd"
PKGS=(mmdebstrap qemu-system-x86 qemu-utils e2fsprogs)
INCLUDE=systemd,systemd-sysv,dbus,linux-image-amd64,initramfs-tools,kmod,iproute2,python3,python3-venv,e2fsprogs,procps
RECIPE="bookworm minbase $INCLUDE payload-v1"
APT=(apt-get -y -q -o DPkg::Lock::Timeout=900)

log() { echo "systemd-vm-setup: $*" >&2; }
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

mkdir -p "$CACHE"
if [ -s "$CACHE/base.img" ] && [ -s "$CACHE/vmlinuz" ] && [ -s "$CACHE/initrd.img" ] \
   && [ "$(cat "$CACHE/base.recipe" 2>/dev/null)" = "$RECIPE" ]; then
  log "cached: $CACHE/base.img"
  exit 0
fi

ROOTFS="$CACHE/rootfs.new"
if [ ! -x "$ROOTFS/lib/systemd/systemd" ] || [ "$(cat "$CACHE/rootfs.recipe" 2>/dev/null)" != "$INCLUDE" ]; then
  log "mmdebstrap $INCLUDE (Debian's mirror from this host's apt sources)"
  rm -rf "$ROOTFS"
  mmdebstrap --variant=minbase --include="$INCLUDE" bookworm "$ROOTFS" >&2
  echo "$INCLUDE" > "$CACHE/rootfs.recipe"
fi

# the generic payload runner, and a root filesystem that boots on the serial console
cat > "$ROOTFS/etc/systemd/system/payload.service" <<'UNIT'
[Unit]
Description=Test payload from the second disk (/dev/vdb): /payload/run.sh
After=local-fs.target systemd-sysusers.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for i in $(seq 1 100); do [ -b /dev/vdb ] && break; sleep 0.1; done; mkdir -p /payload && mount -o ro /dev/vdb /payload && exec /bin/sh /payload/run.sh'
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$ROOTFS/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/payload.service "$ROOTFS/etc/systemd/system/multi-user.target.wants/payload.service"
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$ROOTFS/etc/fstab"
echo "monitor-systemd-vm" > "$ROOTFS/etc/hostname"
: > "$ROOTFS/etc/machine-id"
cp -L "$ROOTFS"/boot/vmlinuz-* "$CACHE/vmlinuz.new"
cp -L "$ROOTFS"/boot/initrd.img-* "$CACHE/initrd.img.new"
chmod a+r "$CACHE/vmlinuz.new" "$CACHE/initrd.img.new"
rm -f "$CACHE/base.img.new"
mkfs.ext4 -q -F -L root -d "$ROOTFS" "$CACHE/base.img.new" 3G
mv "$CACHE/base.img.new" "$CACHE/base.img"
mv "$CACHE/vmlinuz.new" "$CACHE/vmlinuz"
mv "$CACHE/initrd.img.new" "$CACHE/initrd.img"
echo "$RECIPE" > "$CACHE/base.recipe"
rm -rf "$ROOTFS" "$CACHE/rootfs.recipe"
log "built $CACHE/base.img ($(du -h "$CACHE/base.img" | cut -f1) used)"
