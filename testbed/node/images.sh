#!/usr/bin/env bash
# Builds the node test's container images with buildah (private storage under
# ~/.cache/kproxy-node, vfs driver) and writes them as docker-archive tars for
# `ctr images import`; prints each image's size.
#   kproxy:0.1.0                   deploy/Dockerfile on deploy/base.sh's base (Debian packages)
#   registry.k8s.io/pause:3.10     the pod sandbox: testbed/go/cmd/pause, static
#   kproxy-testbed/podserver:1     the workload: testbed/go/cmd/podserver, static
#   kproxy-testbed/kube-proxy:v1.37.2   the test bed's kube-proxy on the same base, for the migration test
#
#   testbed/node/images.sh OUT_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:?usage: images.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=${KPROXY_TESTBED_BIN:-$("$root/testbed/build.sh")}
store=${KPROXY_NODE_CACHE:-$HOME/.cache/kproxy-node}/buildah
b=(buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs)
work=$(mktemp -d)
# buildah takes the CNI library's lock in /etc/cni/net.d and keeps a blob cache in
# /var/lib/containers/cache whatever its --root says: removed after, if it created them.
created=()
for path in /etc/cni /var/lib/containers; do [[ -e $path ]] || created+=("$path"); done
trap 'rm -rf "$work" "${created[@]}"' EXIT
cd "$root"

cargo build -q --profile dist -p kproxy
# The bases are rebuilt only when missing, or when deploy/base.sh changed.
base_id=$(cat deploy/base.sh testbed/node/images.sh | sha256sum | cut -c1-12)
for alias in 1 0; do
    base=localhost/kproxy-base:$base_id-$alias
    extra=
    [[ $alias == 1 ]] || extra="nftables libnftables1 libjansson4 libgmp10 libedit2 libbsd0 libmd0 libtinfo6"
    "${b[@]}" inspect "$base" >/dev/null 2>&1 \
        || KPROXY_BASE_NAME=$base KPROXY_BASE_ALIAS=$alias KPROXY_BASE_EXTRA=$extra deploy/base.sh "${b[@]:1}" >/dev/null
done
"${b[@]}" bud -q --layers=false --build-arg BASE=localhost/kproxy-base:$base_id-1 -f deploy/Dockerfile \
    -t localhost/kproxy:0.1.0 . >/dev/null

# An image of one static program, from scratch.
single() { # IMAGE BINARY [ENV]
    local ctr
    ctr=$("${b[@]}" from scratch)
    "${b[@]}" copy "$ctr" "$2" /"$(basename "$2")" >/dev/null
    "${b[@]}" config --entrypoint "[\"/$(basename "$2")\"]" ${3:+--env "$3"} "$ctr"
    "${b[@]}" commit -q "$ctr" "$1" >/dev/null
    "${b[@]}" rm "$ctr" >/dev/null
}
(cd testbed/go && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/pause" ./cmd/pause \
    && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/podserver" ./cmd/podserver)
single localhost/pause:3.10 "$work/pause"
single localhost/podserver:1 "$work/podserver"
# kube-proxy links only glibc; its iptables mode needs the iptables tools: the same base,
# without the kube-proxy link.
ctr=$("${b[@]}" from localhost/kproxy-base:$base_id-0)
"${b[@]}" copy "$ctr" "$bin/kube-proxy" /usr/local/bin/kube-proxy >/dev/null
"${b[@]}" commit -q "$ctr" localhost/kube-proxy:v1.37.2 >/dev/null
"${b[@]}" rm "$ctr" >/dev/null

for pair in "localhost/kproxy:0.1.0 kproxy.tar docker.io/library/kproxy:0.1.0" \
    "localhost/pause:3.10 pause.tar registry.k8s.io/pause:3.10" \
    "localhost/podserver:1 podserver.tar docker.io/kproxy-testbed/podserver:1" \
    "localhost/kube-proxy:v1.37.2 kube-proxy.tar docker.io/kproxy-testbed/kube-proxy:v1.37.2"; do
    read -r image file name <<<"$pair"
    rm -f "$out/$file"
    "${b[@]}" push -q "$image" "docker-archive:$out/$file:$name" >/dev/null
    echo "$name $(du -m "$out/$file" | cut -f1) MB"
done
