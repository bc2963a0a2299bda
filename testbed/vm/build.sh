#!/usr/bin/env bash
# Builds (once) what the IPVS VM boots: Debian 12's kernel, taken from its package, and a
# base initramfs with the kernel modules, busybox and the network tools the tests call.
# Everything lands in a cache keyed by this script and init.sh; later runs reuse it.
#
#   testbed/vm/build.sh      prints the cache directory (holding vmlinuz and base.cpio.gz)
#
# Needs: apt-get download (Debian's archive), dpkg, depmod/modprobe (kmod), cpio,
# busybox-static, and the tools copied in (installed by scripts/deps.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KVER=${KPROXY_VM_KERNEL:-6.1.0-56-amd64}
key=$(cat "$here/build.sh" "$here/init.sh" | sha256sum | cut -c1-12)
cache=${KPROXY_VM_CACHE:-$HOME/.cache/kproxy-vm}/$KVER-$key
if [ -s "$cache/base.cpio.gz" ] && [ -s "$cache/vmlinuz" ]; then
  echo "$cache"
  exit 0
fi
work=$(mktemp -d /tmp/kproxy-vm-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"   # apt-get download drops privileges to _apt
mkdir -p "$cache"

echo "vm: fetching linux-image-$KVER" >&2
(cd "$work" && apt-get download -q "linux-image-$KVER" >&2)
dpkg -x "$work"/linux-image-"$KVER"_*.deb "$work/deb"
depmod -b "$work/deb" "$KVER"

root=$work/root
mkdir -p "$root"/{bin,sbin,proc,sys,dev,run,tmp,etc,root,usr/bin,usr/sbin,lib/modules/$KVER}
modules=(ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_sh ip_vs_mh nf_conntrack nf_conntrack_netlink veth dummy bridge
  br_netfilter nf_tables nft_chain_nat nft_masq nft_nat nft_numgen nft_ct nft_fib_ipv4 nft_fib_ipv6 nft_fib_inet
  nft_reject_ipv4 nft_reject_ipv6 nft_reject_inet nft_hash crc32c_generic)
for m in "${modules[@]}"; do
  modprobe -d "$work/deb" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | awk '!seen[$0]++' >"$work/modules.txt"
while read -r ko; do
  rel=${ko#"$work/deb/lib/modules/$KVER/"}
  mkdir -p "$root/lib/modules/$KVER/$(dirname "$rel")"
  cp "$ko" "$root/lib/modules/$KVER/$rel"
done <"$work/modules.txt"
cp "$work/deb/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$KVER/"
depmod -b "$root" "$KVER"
# The load order the guest uses: dependencies first, as modprobe --show-depends gave them.
sed "s|^$work/deb/lib/modules/$KVER/||" "$work/modules.txt" >"$root/etc/modules.order"

cp /bin/busybox "$root/bin/busybox"
# Real tools, each with the shared libraries it links (the guest has no other userland).
# dash is /bin/sh: busybox's shell would run its own `ip` applet before iproute2's.
tools=(/usr/bin/dash /usr/sbin/ip /usr/bin/ss /usr/bin/socat /usr/sbin/nft /usr/sbin/conntrack /usr/sbin/ipvsadm
  /usr/bin/unshare /usr/sbin/sysctl /usr/bin/timeout)
for t in "${tools[@]}"; do
  cp "$t" "$root$t"
  ldd "$t" | grep -oE '/[^ ]+' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
ln -sf /usr/bin/dash "$root/bin/sh"
# nft names protocols through /etc/protocols (`meta l4proto tcp`, not `6`).
cp /etc/protocols /etc/services "$root/etc/"
cp "$here/init.sh" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$cache/base.cpio.gz"
cp "$work/deb/boot/vmlinuz-$KVER" "$cache/vmlinuz"
echo "vm: built $cache ($(du -sh "$cache" | cut -f1))" >&2
echo "$cache"
