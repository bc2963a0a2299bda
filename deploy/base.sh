#!/usr/bin/env bash
# Builds kproxy's base image offline from Debian's packages: glibc, libgcc, libnftnl and
# libmnl unpacked into an empty image (no shell, no package manager), committed as
# localhost/kproxy-base:bookworm in buildah's storage.
#
#   deploy/base.sh [BUILDAH_FLAGS...]     # e.g. --root DIR --runroot DIR --storage-driver vfs
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download libc6 libgcc-s1 libnftnl11 libmnl0 >/dev/null
mkdir rootfs
for deb in *.deb; do dpkg-deb -x "$deb" rootfs; done
# Documentation, locales and charset converters: kproxy reads none of them.
rm -rf rootfs/usr/share rootfs/usr/lib/x86_64-linux-gnu/gconv rootfs/usr/bin rootfs/usr/sbin rootfs/sbin
mkdir -p rootfs/tmp rootfs/usr/local/bin
ctr=$(buildah "$@" from scratch)
buildah "$@" copy "$ctr" rootfs/ / >/dev/null
buildah "$@" config --label org.opencontainers.image.source=kproxy "$ctr"
buildah "$@" commit -q "$ctr" localhost/kproxy-base:bookworm >/dev/null
buildah "$@" rm "$ctr" >/dev/null
echo "localhost/kproxy-base:bookworm"
