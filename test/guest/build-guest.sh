#!/bin/bash
# Build the tiny test guest from Debian packages only: Debian's cloud kernel
# and busybox-static, in an initramfs whose /init keeps a counter running.
#
#   test/guest/build-guest.sh            build into $VMSNAP_GUEST_DIR (default .cache/guest)
#
# The guest (see init.sh beside this script) loads the virtio modules, fills
# and dirties RAM as the kernel command line asks (vmsnap.fill_mb,
# vmsnap.dirty_mb, vmsnap.tick_ms), prints VMSNAP-READY, then every tick
# prints "COUNTER n" on the serial console and writes it at offset 0 of every
# virtio disk. The counter lives in guest RAM only, so a revert of memory
# brings it back. Cached: a second run with the same kernel does nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${VMSNAP_GUEST_DIR:-$repo/.cache/guest}

kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [[ -z "$kernel_pkg" ]]; then
  apt-get update -qq
  kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[[ -n "$kernel_pkg" ]] || { echo "build-guest: no linux-image-cloud-amd64 in the apt sources" >&2; exit 1; }
stamp="$kernel_pkg $(cat "$here/init.sh" "$here/build-guest.sh" | sha256sum | cut -c1-16)"

if [[ -f "$out/stamp" && -f "$out/vmlinuz" && -f "$out/initrd.img" && "$(cat "$out/stamp")" == "$stamp" ]]; then
  echo "guest: cached in $out ($kernel_pkg)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# apt's _apt user must be able to write here.
chmod 0777 "$work"
# qemu-guest-agent and the shared libraries it loads, for the quiesce tests.
agent_pkgs=(qemu-guest-agent libglib2.0-0 libnuma1 libudev1 liburing2 libpcre2-8-0 libc6)
if ! apt-get download -q "$kernel_pkg" busybox-static "${agent_pkgs[@]}" >/dev/null 2>apt.err; then
  apt-get update -qq
  apt-get download -q "$kernel_pkg" busybox-static "${agent_pkgs[@]}" >/dev/null
fi
dpkg-deb -x linux-image-*.deb kernel
dpkg-deb -x busybox-static_*.deb busybox
mkdir agent
for p in "${agent_pkgs[@]}"; do dpkg-deb -x "$(ls ${p}_*.deb | head -1)" agent; done

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,mem,lib/modules}
cp busybox/bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
moddir=$(echo kernel/lib/modules/*)
# No modules.dep in the package: the load order is spelled out in init.sh.
for m in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_pci_legacy_dev.ko \
         drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci.ko drivers/block/virtio_blk.ko \
         drivers/char/virtio_console.ko; do
  src="$moddir/kernel/$m"
  if [[ -f "$src" ]]; then
    cp "$src" "$root/lib/modules/"
  elif [[ -f "$src.xz" ]]; then
    xz -dc "$src.xz" > "$root/lib/modules/$(basename "$m")"
  elif ! grep -q "CONFIG_$(basename "$m" .ko | tr a-z A-Z)=y" kernel/boot/config-*; then
    echo "build-guest: $m is neither in the package nor built in" >&2; exit 1
  fi
done
install -m 0755 "$here/init.sh" "$root/init"
# The guest agent with exactly the libraries it links, from the downloaded packages.
mkdir -p "$root/lib/x86_64-linux-gnu" "$root/lib64"
cp agent/usr/sbin/qemu-ga "$root/bin/qemu-ga"
libpath="$work/agent/lib/x86_64-linux-gnu:$work/agent/usr/lib/x86_64-linux-gnu"
for lib in $(LD_LIBRARY_PATH="$libpath" ldd agent/usr/sbin/qemu-ga | awk '/=> \//{print $3}'); do
  case "$lib" in "$work"/agent/*) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
    *) echo "build-guest: qemu-ga needs $lib, which no downloaded package has" >&2; exit 1 ;; esac
done
cp -L agent/lib64/ld-linux-x86-64.so.2 "$root/lib64/" 2>/dev/null || cp -L agent/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > initrd.img

mkdir -p "$out.tmp"
cp kernel/boot/vmlinuz-* "$out.tmp/vmlinuz"
cp initrd.img "$out.tmp/initrd.img"
echo "$stamp" > "$out.tmp/stamp"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "guest: built in $out ($kernel_pkg)"
