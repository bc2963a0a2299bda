#!/usr/bin/env bash
# Builds kproxy's base image offline from Debian's packages: glibc, libgcc, libnftnl,
# libmnl, and iptables (iptables-nft and its libraries, with which kproxy removes
# kube-proxy's iptables-mode chains when it replaces it), unpacked into an empty image: no
# shell, no package manager. `/usr/local/bin/kube-proxy` is a link to kproxy, so that
# kube-proxy's DaemonSet command runs kproxy once its image is swapped.
#
#   deploy/base.sh [BUILDAH_FLAGS...]     # e.g. --root DIR --runroot DIR --storage-driver vfs
#
# KPROXY_BASE_NAME names the image (default localhost/kproxy-base:bookworm);
# KPROXY_BASE_ALIAS=0 leaves the kube-proxy link out and KPROXY_BASE_EXTRA adds packages
# (the test bed's kube-proxy image, whose nftables mode runs the nft binary).
set -euo pipefail
name=${KPROXY_BASE_NAME:-localhost/kproxy-base:bookworm}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# `apt-get download` warns that _apt cannot write here; the download itself succeeds.
apt-get download libc6 libgcc-s1 libnftnl11 libmnl0 iptables libxtables12 libip4tc2 libip6tc2 \
    libnetfilter-conntrack3 libnfnetlink0 ${KPROXY_BASE_EXTRA:-} >/dev/null 2>&1
mkdir rootfs
for deb in *.deb; do dpkg-deb -x "$deb" rootfs; done
# Documentation, locales, charset converters and the legacy iptables: not needed.
rm -rf rootfs/usr/share rootfs/usr/lib/x86_64-linux-gnu/gconv rootfs/usr/bin rootfs/sbin rootfs/etc/ethertypes
find rootfs/usr/sbin -name '*legacy*' -delete
# What Debian's alternatives would link: iptables-nft.
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-nft-multi "rootfs/usr/sbin/$tool"
done
mkdir -p rootfs/tmp rootfs/usr/local/bin rootfs/run
[[ ${KPROXY_BASE_ALIAS:-1} == 0 ]] || ln -s kproxy rootfs/usr/local/bin/kube-proxy
ctr=$(buildah "$@" from scratch)
buildah "$@" copy "$ctr" rootfs/ / >/dev/null
buildah "$@" config --env PATH=/usr/local/bin:/usr/sbin:/usr/bin "$ctr"
buildah "$@" commit -q "$ctr" "$name" >/dev/null
buildah "$@" rm "$ctr" >/dev/null
echo "$name"
