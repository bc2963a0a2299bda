#!/usr/bin/env bash
# The inside of testbed/node/e2e.sh: root in the node's network namespace and a private
# mount namespace. Starts the control plane, containerd and kubelet, then runs the tests.
set -euo pipefail
state=${1:?usage: in-node.sh STATE_DIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$KPROXY_TESTBED_BIN:$PATH
cd "$here"
NODE=kproxy-node NODE_IP=192.168.60.1 CLIENT_IP=192.168.60.2 POD_CIDR=10.244.0.0/24
pids=() kubelet_pid= containerd_pid=
ctr_() { ctr --address "$state/containerd.sock" -n k8s.io "$@"; }
cleanup() {
    # kubelet first, so that it restarts nothing; then every container, through the
    # runtime (their shims exit with their last task); then the rest.
    [[ -z $kubelet_pid ]] || { kill "$kubelet_pid" 2>/dev/null; wait "$kubelet_pid" 2>/dev/null; } || true
    if [[ -n $containerd_pid ]]; then
        for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true; done
        sleep 0.5
        for task in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks rm -f "$task" >/dev/null 2>&1 || true; done
        kill "$containerd_pid" 2>/dev/null || true
        wait "$containerd_pid" 2>/dev/null || true
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    testbed/down.sh "$state"
    grep -E " $state/" /proc/self/mounts | cut -d' ' -f2 | sort -r | xargs -r umount -l 2>/dev/null || true
}
trap cleanup EXIT
kc() { kubectl --kubeconfig "$state/admin.kubeconfig" "$@"; }
fail() {
    echo "FAIL: $*" >&2
    for log in kubelet containerd kube-controller-manager; do
        echo "--- $log (last 15 lines)" >&2
        tail -15 "$state/log/$log.log" >&2 || true
    done
    kc get pods -A -o wide >&2 || true
    echo "--- kube-proxy pods (last 20 lines)" >&2
    kc -n kube-system logs -l k8s-app=kube-proxy --tail 40 >&2 2>/dev/null || true
    if [[ -n ${KPROXY_NODE_DEBUG:-} ]]; then
        echo "KPROXY_NODE_DEBUG: holding the node for 300 s; admin kubeconfig: $state/admin.kubeconfig" >&2
        sleep 300
    fi
    exit 1
}
pass() { echo "ok   $*"; }
# kubectl and the kubelet are slower than nft: poll every 200 ms.
source testbed/lib/wait.sh
WAIT_POLL=0.2

# The client's namespace stays reachable once /run is private to this node.
touch "$state/client.netns" && mount --bind "/run/netns/$CLIENT_NS" "$state/client.netns"
mount -t tmpfs tmpfs /run && mkdir -p /run/netns
ip link set lo up
ip addr add $NODE_IP/24 dev uplink && ip link set uplink up
in_client() { nsenter --net="$state/client.netns" "$@"; }
in_client ip link set lo up
in_client ip addr add $CLIENT_IP/24 dev eth0 && in_client ip link set eth0 up
in_client ip route add default via $NODE_IP
ip route add default via $CLIENT_IP
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0

echo "== control plane"
# kubectl logs and exec: the API server reaches the kubelet at its InternalIP (no DNS
# here), with the admin client certificate the kubelet trusts.
KPROXY_TESTBED_APISERVER_FLAGS="--kubelet-client-certificate $state/pki/admin.crt --kubelet-client-key $state/pki/admin.key --kubelet-preferred-address-types InternalIP" \
    testbed/up.sh "$state" 6443 >/dev/null
mkdir -p "$state/log"
kube-controller-manager --kubeconfig "$state/admin.kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 10257 --root-ca-file "$state/pki/ca.crt" \
    --service-account-private-key-file "$state/pki/sa.key" --use-service-account-credentials=false \
    --controllers '*,-nodeipam' >"$state/log/kube-controller-manager.log" 2>&1 &
pids+=($!)
kube-scheduler --kubeconfig "$state/admin.kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 10259 >"$state/log/kube-scheduler.log" 2>&1 &
pids+=($!)

echo "== containerd and kubelet"
mkdir -p "$state/cni/net.d" "$state/containerd"
cat >"$state/cni/net.d/10-bridge.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$state/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
EOF
cat >"$state/containerd.toml" <<EOF
version = 2
root = "$state/containerd/root"
state = "$state/containerd/state"
[grpc]
  address = "$state/containerd.sock"
[ttrpc]
  address = "$state/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$state/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  # No CAP_SYS_RESOURCE here: runc must not lower oom_score_adj below ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
containerd --config "$state/containerd.toml" >"$state/log/containerd.log" 2>&1 &
containerd_pid=$!
wait_for 20 test -S "$state/containerd.sock" >/dev/null || fail "containerd did not start"
for image in "$state"/images/*.tar; do ctr_ images import "$image" >/dev/null || fail "importing $image"; done
pass "containerd $(containerd --version | cut -d' ' -f3) up; images imported: $(ctr_ images ls -q | grep -v sha256 | tr '\n' ' ')"

cat >"$state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
failSwapOn: false
containerRuntimeEndpoint: unix://$state/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $state/pki/ca.crt}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
serializeImagePulls: false
evictionHard: {memory.available: 1Mi, nodefs.available: 1%, imagefs.available: 1%}
podLogsDir: $state/pod-logs
imageGCHighThresholdPercent: 100
resolvConf: ""
EOF
kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: $NODE}
spec: {podCIDR: $POD_CIDR, podCIDRs: [$POD_CIDR]}
EOF
kubelet --config "$state/kubelet.yaml" --kubeconfig "$state/admin.kubeconfig" --hostname-override $NODE \
    --node-ip $NODE_IP --root-dir "$state/kubelet" --cert-dir "$state/kubelet/pki" \
    >"$state/log/kubelet.log" 2>&1 &
kubelet_pid=$!
node_ready() { [[ $(kc get node $NODE -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]; }
ms=$(wait_for 90 node_ready) || fail "the node did not become Ready"
pass "kubelet $(kubelet --version | cut -d' ' -f2) registered $NODE, Ready in $ms ms"

source testbed/node/tests.sh
echo "node e2e: all passed"
