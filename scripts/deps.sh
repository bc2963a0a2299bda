#!/usr/bin/env bash
# Installs the system packages kproxy's build and tests need (Debian/Ubuntu), when missing.
# Idempotent; runs apt-get only if something is absent. Needs root (or sudo) to install.
set -euo pipefail

packages=(pkg-config libnftnl-dev libmnl-dev nftables iptables iproute2 conntrack socat jq procps util-linux python3-yaml
  containernetworking-plugins openssl curl
  # the node test (testbed/node/): the container runtime, and buildah for the images
  containerd runc buildah
  # the IPVS VM (testbed/vm/): qemu, the guest's busybox and tools, initramfs packing
  qemu-system-x86 ipvsadm busybox-static cpio kmod binutils dash)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
command -v go >/dev/null || { echo "go not found: the test bed builds kube-apiserver with Go >= 1.26 (https://go.dev/dl)" >&2; exit 1; }
