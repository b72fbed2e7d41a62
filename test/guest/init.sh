#!/bin/sh
# /init of the vmsnap test guest (busybox-static). See build-guest.sh.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# No modules.dep: load what loads, three passes settle the dependencies.
for pass in 1 2 3; do
  for m in /lib/modules/*.ko; do insmod $m 2>/dev/null && rm $m; done
done

fill=0; dirty=0; tick=200
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    vmsnap.fill_mb=*) fill=${arg#*=} ;;
    vmsnap.dirty_mb=*) dirty=${arg#*=} ;;
    vmsnap.tick_ms=*) tick=${arg#*=} ;;
  esac
done

# Never ask for more than fits: what is asked and does not fit is cut, not an OOM panic.
avail=$(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
room=$((avail - 48 - 8))
[ $dirty -gt $((room / 2)) ] && dirty=$((room / 2))
[ $fill -gt $((room - dirty)) ] && fill=$((room - dirty))
[ $fill -lt 0 ] && fill=0

# RAM: non-zero data (zero pages cost a migration nothing), made by doubling
# one random MiB up to an 8 MiB chunk, since /dev/urandom is slow under TCG.
mount -t tmpfs -o size=95% tmpfs /mem
dd if=/dev/urandom of=/mem/c1 bs=1M count=1 2>/dev/null
size=1
while [ $size -lt 8 ]; do
  cat /mem/c$size /mem/c$size > /mem/c$((size * 2)); rm /mem/c$size; size=$((size * 2))
done
chunk=/mem/c$size
repeat() { # repeat SIZE_MB: the chunk over and over on stdout
  i=0
  while [ $i -lt $1 ]; do cat $chunk; i=$((i + size)); done
}
[ "$fill" -gt 0 ] && repeat $fill > /mem/fill
if [ "$dirty" -gt 0 ]; then
  # Keep rewriting the same pages: every pass dirties them for a live migration.
  repeat $dirty > /mem/dirty
  (while true; do repeat $dirty | dd of=/mem/dirty bs=1M conv=notrunc 2>/dev/null; done) &
fi

# The guest agent, on the virtio-serial port QEMU names org.qemu.guest_agent.0.
mkdir -p /var/run /run
for port in /sys/class/virtio-ports/*; do
  [ -f "$port/name" ] && [ "$(cat "$port/name")" = org.qemu.guest_agent.0 ] && \
    /bin/qemu-ga -m virtio-serial -p "/dev/$(basename "$port")" -t /run -d
done

echo VMSNAP-READY
n=0
while true; do
  n=$((n + 1))
  echo "COUNTER $n"
  for d in /dev/vda /dev/vdb; do
    [ -b $d ] && echo "COUNTER $n" | dd of=$d bs=512 count=1 conv=sync,notrunc,fsync oflag=direct 2>/dev/null
  done
  usleep $((tick * 1000))
done
