#!/bin/busybox sh
# The VM's /init: mounts the basics, loads the modules, runs /test/run (carried by the
# per-run archive), prints its exit status as a marker line, and powers off.
/bin/busybox mkdir -p /usr/local/bin
/bin/busybox --install -s /usr/local/bin
ln -s /bin/busybox /sbin/modprobe   # the kernel autoloads modules through /sbin/modprobe
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
# /tmp stays the initramfs' own (already in RAM): the test binaries may live under it, at
# the paths they were built with (a clone in /tmp, say).
mkdir -p /tmp
mkdir -p /run/netns
while read -r ko; do
  insmod "/lib/modules/$(uname -r)/$ko" 2>/dev/null || true
done </etc/modules.order
ip link set lo up
echo "VM-KERNEL $(uname -r)"
rc=1
if [ -x /test/run ]; then
  /test/run
  rc=$?
fi
echo "VM-RESULT rc=$rc"
poweroff -f
