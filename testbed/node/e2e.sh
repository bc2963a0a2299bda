#!/usr/bin/env bash
# kproxy as a DaemonSet pod on a real node: kubelet and containerd (Debian's, with runc)
# beside the test bed's kube-apiserver, kube-controller-manager and kube-scheduler, pods
# wired by the CNI bridge plugin, images built here (testbed/node/images.sh).
#
# Everything runs in network namespaces this script creates (kpn-PID-node, kpn-PID-client)
# and in a private mount namespace, with state under a temporary directory; processes are
# stopped by PID, the namespaces and the cgroups the runtime made are removed.
#
#   testbed/node/e2e.sh        # as root
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ $(id -u) == 0 ]] || { echo "testbed/node/e2e.sh needs root (kubelet, containerd)" >&2; exit 1; }
export KPROXY_TESTBED_BIN=${KPROXY_TESTBED_BIN:-$(testbed/build.sh)}
# The cgroups runc makes for pods, and the few host paths kubelet and containerd write
# whatever their flags say (kubelet's /var/log/containers links and device-plugin socket,
# the CNI library's lock, which buildah takes too): removed afterwards if they were not there before.
cgroups_before=$(ls -d /sys/fs/cgroup/*/k8s.io 2>/dev/null || true)
fixed_paths=(/var/log/containers /var/log/pods /var/lib/kubelet /etc/cni)
created=()
for path in "${fixed_paths[@]}"; do [[ -e $path ]] || created+=("$path"); done
state=$(mktemp -d /tmp/kproxy-node.XXXXXX)
export NODE_NS=kpn-$$-node CLIENT_NS=kpn-$$-client
cleanup() {
    ip netns del "$NODE_NS" 2>/dev/null || true
    ip netns del "$CLIENT_NS" 2>/dev/null || true
    if [[ -z $cgroups_before ]]; then
        # Leaf first: only empty directories go (rmdir refuses the others).
        find /sys/fs/cgroup/*/k8s.io -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
    for path in "${created[@]}"; do rm -rf "$path"; done
    rm -rf "$state"
}
trap cleanup EXIT
testbed/node/images.sh "$state/images"
ip netns add "$NODE_NS"
ip netns add "$CLIENT_NS"
ip -n "$NODE_NS" link add uplink type veth peer name eth0 netns "$CLIENT_NS"
unshare -m --propagation private nsenter --net="/var/run/netns/$NODE_NS" testbed/node/in-node.sh "$state"
