#!/usr/bin/env bash
# Builds the test bed's tools once per version and caches them outside the repository:
# kube-apiserver, kubectl, kube-proxy, kubeadm, kubelet, kube-controller-manager and
# kube-scheduler from k8s.io/kubernetes, and etcd, as
# pinned by testbed/go/go.mod; and loadgen and nftprobe (testbed/go/cmd). Prints the
# directory holding the binaries. A tool added later is built alone into an existing cache.
#
#   testbed/build.sh            # build, or reuse the cache
#   KPROXY_TESTBED_CACHE=dir    # cache root (default ~/.cache/kproxy-testbed)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/go/go.mod")
root=${KPROXY_TESTBED_CACHE:-$HOME/.cache/kproxy-testbed}
bin=$root/$version/bin
# The cache key: the versions of what is built, and the Go toolchain.
cd "$here/go"
stamp="kubernetes $version, etcd $(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3), $(go env GOVERSION)"
# loadgen (the benchmark's object writer) and nftprobe (its kernel probe) are ours and
# small: always (re)built, from Go's build cache when unchanged.
mkdir -p "$bin"
go build -trimpath -o "$bin/loadgen" ./cmd/loadgen
go build -trimpath -o "$bin/nftprobe" ./cmd/nftprobe
tools=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy
    k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager
    k8s.io/kubernetes/cmd/kube-scheduler)
if [[ -f $bin/.stamp && $(cat "$bin/.stamp") == "$stamp" ]]; then
    missing=()
    for tool in "${tools[@]}"; do [[ -x $bin/${tool##*/} ]] || missing+=("$tool"); done
    ((${#missing[@]})) || { echo "$bin"; exit 0; }
    tools=("${missing[@]}")
else
    rm -f "$bin/etcd"
fi
minor=${version#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
start=$(date +%s)
for tool in "${tools[@]}"; do
    echo "testbed: building ${tool##*/} $version" >&2
    go build -trimpath -ldflags "$ldflags" -o "$bin/${tool##*/}" "$tool"
done
if [[ ! -x $bin/etcd ]]; then
    echo "testbed: building etcd" >&2
    go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
fi
echo "testbed: built in $(( $(date +%s) - start )) s; $(du -sh "$bin" | cut -f1) in $bin" >&2
echo "$stamp" > "$bin/.stamp"
echo "$bin"
