#!/usr/bin/env bash
# Build the tiny test guest from Debian packages only: Debian's cloud kernel,
# busybox-static and qemu-guest-agent (with the libraries it links), in an
# initramfs whose /init keeps a counter running.
#
#   test/guest/build-guest.sh     build into $VMSNAP_GUEST_DIR (default <repo>/.cache/guest)
#
# Output: vmlinuz, initrd.img and stamp (kernel package, its version, and a
# hash of init.sh and this script). A second run finds the stamp and does
# nothing, without asking apt anything; editing either file rebuilds.
#
# The guest's /init is init.sh beside this script: it loads the virtio
# modules, fills and dirties RAM as the kernel command line asks
# (vmsnap.fill_mb, vmsnap.dirty_mb, vmsnap.tick_ms), prints VMSNAP-READY,
# then every tick prints "COUNTER n" on the serial console and writes it at
# offset 0 of every virtio disk. The counter lives in guest RAM only, so a
# revert of memory brings it back. When QEMU has a virtio-serial port named
# org.qemu.guest_agent.0, /init starts qemu-ga on it (the quiesce tests).
#
# Runs as root (apt-get download, and apt-get update when the package lists
# are missing). Needs only dpkg, apt, cpio, gzip and ldd (libc-bin); .ko.xz
# modules are unpacked with the busybox from the package.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${VMSNAP_GUEST_DIR:-$repo/.cache/guest}
init_src=$here/init.sh
stamp_tail="guest=$(cat "$init_src" "$here/build-guest.sh" | sha256sum | cut -c1-16)"

die() { echo "build-guest: $*" >&2; exit 1; }

# --- cache -----------------------------------------------------------------
if [[ -f "$out/stamp" && -f "$out/vmlinuz" && -f "$out/initrd.img" ]] \
    && [[ "$(cat "$out/stamp")" == *" $stamp_tail" ]]; then
  echo "guest: cached in $out"
  exit 0
fi

for tool in apt-get apt-cache dpkg-deb cpio gzip ldd; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y $(case $tool in dpkg-deb) echo dpkg ;; ldd) echo libc-bin ;; *) echo "$tool" ;; esac)"
done

# Everything is built here, next to $out (same file system), and moved into
# place only at the end: a failed build leaves no half-built guest.
mkdir -p "$(dirname "$out")"
work=$(mktemp -d "$out.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt-get download runs as the _apt user, which must be able to write here.
chmod 0777 "$work"
cd "$work"

# --- packages --------------------------------------------------------------
# The real kernel package behind the metapackage, e.g. linux-image-6.1.0-56-cloud-amd64.
kernel_package() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}'
}

# qemu-guest-agent and the shared libraries it loads, for the quiesce tests.
agent_pkgs=(qemu-guest-agent libglib2.0-0 libnuma1 libudev1 liburing2 libpcre2-8-0 libc6)

download() {
  local pkg
  pkg=$(kernel_package) || true
  [[ -n "$pkg" ]] || return 1
  apt-get download -q "$pkg" busybox-static "${agent_pkgs[@]}" >/dev/null 2>download.err
}

if ! download; then
  echo "build-guest: download failed, running apt-get update" >&2
  apt-get update -qq || die "apt-get update failed (are the Debian apt sources reachable?)"
  download || die "cannot download the kernel, busybox-static and ${agent_pkgs[*]}: $(cat download.err 2>/dev/null)
  (needs linux-image-cloud-amd64 in the apt sources: Debian main, amd64)"
fi

kernel_deb=$(echo linux-image-*.deb)
busybox_deb=$(echo busybox-static_*.deb)
[[ -f "$kernel_deb" && -f "$busybox_deb" ]] || die "apt-get download left no .deb files in $work"
kernel_pkg=$(dpkg-deb -f "$kernel_deb" Package)
kernel_ver=$(dpkg-deb -f "$kernel_deb" Version)
dpkg-deb -x "$kernel_deb" kernel
dpkg-deb -x "$busybox_deb" busybox
mkdir agent
for p in "${agent_pkgs[@]}"; do
  deb=$(ls "${p}"_*.deb 2>/dev/null | head -1)
  [[ -n "$deb" ]] || die "apt-get download left no $p package"
  dpkg-deb -x "$deb" agent
done

bb=$work/busybox/bin/busybox
[[ -x "$bb" ]] || die "$busybox_deb has no bin/busybox"
vmlinuz=$(echo kernel/boot/vmlinuz-*)
config=$(echo kernel/boot/config-*)
moddir=$(echo kernel/lib/modules/*)
[[ -f "$vmlinuz" && -f "$config" && -d "$moddir" ]] || die "$kernel_deb has no boot/vmlinuz-*, boot/config-* or lib/modules/*"

# --- initramfs tree ----------------------------------------------------------
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,mem,lib/modules}
cp "$bb" "$root/bin/busybox"
# A symlink per applet, where busybox itself would install it.
"$bb" --list-full | while read -r applet; do
  if [[ "$applet" == */* && ! -e "$root/$applet" ]]; then ln -s /bin/busybox "$root/$applet"; fi
done
install -m 0755 "$init_src" "$root/init"

# --- guest agent -------------------------------------------------------------------
# qemu-ga with exactly the libraries it links, all from the downloaded packages.
mkdir -p "$root/lib/x86_64-linux-gnu" "$root/lib64"
cp agent/usr/sbin/qemu-ga "$root/bin/qemu-ga"
libpath="$work/agent/lib/x86_64-linux-gnu:$work/agent/usr/lib/x86_64-linux-gnu"
libs=$(LD_LIBRARY_PATH="$libpath" ldd agent/usr/sbin/qemu-ga | awk '/=> \//{print $3}')
for lib in $libs; do
  case "$lib" in
    "$work"/agent/*) cp -L "$lib" "$root/lib/x86_64-linux-gnu/" ;;
    *) die "qemu-ga needs $lib, which no downloaded package has: add its package to agent_pkgs" ;;
  esac
done
cp -L agent/lib64/ld-linux-x86-64.so.2 "$root/lib64/" 2>/dev/null \
  || cp -L agent/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/"

# --- kernel modules ------------------------------------------------------------
# The drivers the guest needs: virtio-pci (the transport), virtio-blk (the
# disks) and virtio-console (the guest agent's virtio-serial port). Built
# into the kernel (=y) they need nothing; as modules (=m) they go into the
# initramfs with everything they depend on, named NN-name.ko in load order,
# which /init's `insmod /lib/modules/*.ko` follows.

# The file of module $1 (underscores and dashes are the same in module names).
module_file() {
  local f
  f=$(find "$moddir/kernel" \( -name "$1.ko" -o -name "$1.ko.xz" -o -name "${1//_/-}.ko" -o -name "${1//_/-}.ko.xz" \) -print -quit)
  [[ -n "$f" ]] || die "module $1 is not in $kernel_deb (built in? see $(basename "$config"))"
  echo "$f"
}

# The module $1's file, uncompressed, in the staging dir (busybox insmod takes plain .ko only).
staged() {
  local src dst
  src=$(module_file "$1")
  dst=$work/staged/$1.ko
  mkdir -p "$work/staged"
  if [[ ! -f "$dst" ]]; then
    case "$src" in
      *.ko) cp "$src" "$dst" ;;
      *.ko.xz) "$bb" unxz -c "$src" > "$dst" ;;
      *) die "cannot unpack $src" ;;
    esac
  fi
  echo "$dst"
}

# The direct dependencies of module $1: from modules.dep when the package has
# one, else from the module's own modinfo (depends=), which is what depmod
# writes into modules.dep.
module_deps() {
  local file line
  if [[ -f "$moddir/modules.dep" ]]; then
    file=$(module_file "$1")
    line=$(grep -m1 "^${file#"$moddir"/}:" "$moddir/modules.dep" || true)
    for dep in ${line#*:}; do
      dep=${dep##*/}; dep=${dep%.xz}; echo "${dep%.ko}"
    done
  else
    tr '\0' '\n' < "$(staged "$1")" | sed -n 's/^depends=//p' | tr ',' '\n' | sed '/^$/d'
  fi
}

order=()
# Depth first: a module's dependencies come before it, each module once.
add_module() {
  local m=${1//-/_} dep deps
  [[ " ${order[*]} " == *" $m "* ]] && return 0
  deps=$(module_deps "$m") # a failure here stops the build (set -e), unlike inside `for ... in $(...)`
  for dep in $deps; do add_module "$dep"; done
  order+=("$m")
}

need_driver() { # need_driver CONFIG_SYMBOL module
  case "$(grep -E "^$1=" "$config" || true)" in
    "$1=y") echo "build-guest: $2 is built into the kernel" >&2 ;;
    "$1=m") add_module "$2" ;;
    *) die "the kernel has no $1 (neither built in nor a module), which the guest needs" ;;
  esac
}
need_driver CONFIG_VIRTIO_PCI virtio_pci
need_driver CONFIG_VIRTIO_BLK virtio_blk
need_driver CONFIG_VIRTIO_CONSOLE virtio_console

i=0
for m in "${order[@]}"; do
  i=$((i + 1))
  cp "$(staged "$m")" "$root/lib/modules/$(printf '%02d' "$i")-$m.ko"
done
echo "build-guest: modules in load order: ${order[*]:-(none)}" >&2

# --- output ---------------------------------------------------------------------
mkdir "$work/out"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -1) > "$work/out/initrd.img"
cp "$vmlinuz" "$work/out/vmlinuz"
echo "$kernel_pkg $kernel_ver $stamp_tail" > "$work/out/stamp"
chmod 0755 "$work/out"
rm -rf "$out"
mv "$work/out" "$out"
echo "guest: built in $out ($kernel_pkg $kernel_ver)"
