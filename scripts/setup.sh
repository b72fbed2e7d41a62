#!/usr/bin/env bash
# Install everything vmsnap's build and tests need on a Debian/Ubuntu machine
# with Node 20+: Debian packages (only the missing ones), npm ci, the build,
# and the cached test guest. Safe to run again: each step skips done work.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || pkgs+=("$2"); }
need qemu-img qemu-utils
need qemu-io qemu-utils
need qemu-system-x86_64 qemu-system-x86
need redis-server redis-server
need cpio cpio
need mkfs.btrfs btrfs-progs
need virsh libvirt-clients
need libvirtd libvirt-daemon
# libvirtd's QEMU driver is a loadable module from its own package.
[ -e /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so ] \
  || ls /usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so >/dev/null 2>&1 \
  || pkgs+=(libvirt-daemon-driver-qemu)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing ${pkgs[*]}; run as root or: sudo apt-get install -y ${pkgs[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${pkgs[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # npm 11 rejects lock files that omit other platforms' optional packages
  # (msgpackr-extract); fall back to npm install, which honours the lock's versions.
  npm ci --no-audit --no-fund --loglevel=error 2>/dev/null \
    || npm install --no-audit --no-fund --loglevel=error
fi
npm run build --silent

# The test guest: Debian kernel + busybox-static fetched with apt-get download.
if [ -z "${VMSNAP_SKIP_GUEST:-}" ] && [ -f test/guest/build-guest.sh ]; then
  bash test/guest/build-guest.sh >&2
fi
