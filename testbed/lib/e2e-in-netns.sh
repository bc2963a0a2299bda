#!/usr/bin/env bash
# The inside of testbed/e2e.sh: runs as root of a private user, network and mount
# namespace, which is the node. etcd, kube-apiserver and kproxy run here; the pods are
# network namespaces wired by the CNI bridge and host-local plugins; an external client
# reaches the node over a veth.
set -euo pipefail
state=${1:?usage: e2e-in-netns.sh STATE_DIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$KPROXY_TESTBED_BIN:$PATH
cd "$here"

NODE=e2e-node NODE_IP=192.168.50.1 CLIENT_IP=192.168.50.2 CLUSTER_IP=10.96.0.50 NODE_PORT=30080
pids=()
kproxy_pid=
cleanup() {
    for p in "${pids[@]}" $kproxy_pid; do kill "$p" 2>/dev/null || true; done
    testbed/down.sh "$state"
}
trap cleanup EXIT
kc() { kubectl --kubeconfig "$state/admin.kubeconfig" "$@"; }
fail() {
    echo "FAIL: $*" >&2
    echo "--- kproxy log (last 30 lines)" >&2
    tail -30 "$state/kproxy.log" >&2 || true
    if [[ -n ${KPROXY_E2E_DEBUG:-} ]]; then
        nft list ruleset >&2
        ip netns exec e2e-client socat -T2 - "TCP:$CLUSTER_IP:80,connect-timeout=2" </dev/null >&2 || true
    fi
    exit 1
}
pass() { echo "ok   $*"; }
source testbed/lib/wait.sh
# Whether our IPv4 table mentions TEXT. (Not `nft | grep -q`: grep -q exits at the first
# match, nft then dies of SIGPIPE, and pipefail turns the match into a failure.)
in_table() { nft list table ip kproxy | grep -F -- "$1" >/dev/null; }

mount -t tmpfs tmpfs /run && mkdir -p /run/netns
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.icmp_ratelimit=0

echo "== test bed"
testbed/up.sh "$state" 6443

# The node's uplink, with an external client behind it.
ip netns add e2e-client && ip -n e2e-client link set lo up
ip link add uplink type veth peer name eth0 netns e2e-client
ip addr add $NODE_IP/24 dev uplink && ip link set uplink up
ip -n e2e-client addr add $CLIENT_IP/24 dev eth0 && ip -n e2e-client link set eth0 up
ip -n e2e-client route add default via $NODE_IP
ip route add default via $CLIENT_IP

# Pods, wired as a kubelet would wire them: the CNI reference plugins, through the CNI
# protocol (bridge with hairpin mode, host-local IPAM; no iptables masquerade).
cni_dir=$state/cni && mkdir -p "$cni_dir"
cat > "$cni_dir/net.json" <<EOF
{"cniVersion": "1.0.0", "name": "e2e", "type": "bridge", "bridge": "cni0", "isGateway": true,
 "ipMasq": false, "hairpinMode": true,
 "ipam": {"type": "host-local", "dataDir": "$cni_dir/ipam", "ranges": [[{"subnet": "10.244.0.0/24"}]],
          "routes": [{"dst": "0.0.0.0/0"}]}}
EOF
echo '{"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}' > "$cni_dir/lo.json"
cni() { # COMMAND POD IFNAME CONF
    env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$2" CNI_IFNAME="$3" CNI_PATH=/usr/lib/cni \
        "/usr/lib/cni/$(jq -r .type "$4")" < "$4"
}
declare -A POD_IP
for i in 1 2 3; do
    pod=e2e-pod$i
    ip netns add $pod
    cni ADD $pod lo "$cni_dir/lo.json" >/dev/null
    POD_IP[$i]=$(cni ADD $pod eth0 "$cni_dir/net.json" | jq -r '.ips[0].address' | cut -d/ -f1)
    ip netns exec $pod socat TCP-LISTEN:8080,fork,reuseaddr "SYSTEM:echo pod$i" >/dev/null 2>&1 &
    pids+=($!)
done
pass "CNI wired 3 pods: ${POD_IP[*]}"

echo "== deploy/ against the API server"
kc apply -f deploy/rbac.yaml >/dev/null
kc apply --dry-run=server -f deploy/configmap.yaml -f deploy/daemonset.yaml >/dev/null \
    || fail "deploy/ was refused by the API server"
pass "deploy/ applied server-side (dry run)"
as_kproxy=(--as system:serviceaccount:kube-system:kproxy)
for check in "list services" "watch endpointslices.discovery.k8s.io" "list nodes" \
    "watch servicecidrs.networking.k8s.io" "create events.events.k8s.io"; do
    [[ $(kc auth can-i "${as_kproxy[@]}" $check 2>/dev/null) == yes ]] || fail "kproxy's ServiceAccount cannot $check"
done
for check in "create services" "get secrets" "update endpointslices.discovery.k8s.io" "delete nodes"; do
    [[ $(kc auth can-i "${as_kproxy[@]}" $check 2>/dev/null || true) == no ]] || fail "kproxy's ServiceAccount can $check"
done
pass "the ClusterRole allows what kproxy needs and no more"
token=$(kc -n kube-system create token kproxy --duration 2h)
cat > "$state/kproxy.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: "$state/pki/ca.crt"}
users:
- name: kproxy
  user: {token: "$token"}
contexts:
- name: kproxy
  context: {cluster: testbed, user: kproxy}
current-context: kproxy
EOF

kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: $NODE, labels: {topology.kubernetes.io/zone: zone-a}}
spec: {podCIDR: 10.244.0.0/24, podCIDRs: [10.244.0.0/24]}
EOF

start_kproxy() { # [EXTRA_FLAG...]
    "$KPROXY" run --kubeconfig "$state/kproxy.kubeconfig" --hostname-override $NODE \
        --cluster-cidr 10.244.0.0/16 --healthz-bind-address 127.0.0.1:10256 \
        --metrics-bind-address 127.0.0.1:10249 -v 2 "$@" >>"$state/kproxy.log" 2>&1 &
    kproxy_pid=$!
}
healthy() { [[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10256/healthz) == 200 ]]; }

echo "== kproxy run against the API server, as its ServiceAccount"
start_kproxy
wait_for 20 healthy >/dev/null || fail "kproxy did not become healthy"
pass "kproxy is healthy"

web_service() {
    kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  clusterIP: $CLUSTER_IP
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: $NODE_PORT, protocol: TCP}]
EOF
}
slice() { # POD_NUMBER... : the EndpointSlice of Service web, with those pods ready
    local endpoints="endpoints:" i
    (($#)) || endpoints+=" []"
    for i in "$@"; do
        endpoints+=$'\n'"- {addresses: [${POD_IP[$i]}], conditions: {ready: true}, nodeName: $NODE, zone: zone-a}"
    done
    kc apply -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
$endpoints
EOF
}
# One TCP request from the client; prints the answering pod, or nothing.
ask() { # FROM_NETNS IP:PORT
    ip netns exec "$1" socat -T2 - "TCP:$2,connect-timeout=2" </dev/null 2>/dev/null || true
}
answers() { # FROM_NETNS IP:PORT COUNT : the distinct answers, sorted, space-separated
    for _ in $(seq "$3"); do ask "$1" "$2"; done | sort -u | tr '\n' ' ' | sed 's/ $//'
}
answered_by() { [[ $(answers "$1" "$2" "$3") == "$4" ]]; }

web_service
slice 1 2
ms=$(wait_for 5 answered_by e2e-client $NODE_IP:$NODE_PORT 16 "pod1 pod2") \
    || fail "NodePort: expected pod1 and pod2, got '$(answers e2e-client $NODE_IP:$NODE_PORT 16)'"
pass "NodePort $NODE_IP:$NODE_PORT from the client reaches pod1 and pod2 (${ms} ms after the writes)"
answered_by e2e-pod3 $CLUSTER_IP:80 16 "pod1 pod2" \
    || fail "ClusterIP from pod3: got '$(answers e2e-pod3 $CLUSTER_IP:80 16)'"
pass "ClusterIP $CLUSTER_IP:80 from pod3 reaches pod1 and pod2"

# A Service today's API server would refuse, as an older one may have stored it: written
# straight into etcd (the API server reads it back like any other). kproxy skips it,
# records a Warning Event on it, and keeps serving the others.
legacy='{"kind": "Service", "apiVersion": "v1",
  "metadata": {"name": "legacy", "namespace": "default", "uid": "6d3c0f9e-0000-4000-8000-000000000001",
               "creationTimestamp": "2020-01-01T00:00:00Z"},
  "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.300", "clusterIPs": ["10.96.0.300"],
           "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
           "ports": [{"protocol": "TCP", "port": 80, "targetPort": 80}]}}'
curl -sf "http://127.0.0.1:16443/v3/kv/put" -d "{\"key\": \"$(printf /registry/services/specs/default/legacy | base64 -w0)\",
    \"value\": \"$(printf '%s' "$legacy" | base64 -w0)\"}" >/dev/null || fail "could not write to etcd"
legacy_events() {
    kc get events.v1.events.k8s.io -o json \
        | jq -r '.items[] | select(.regarding.name == "legacy" and .reportingController == "kproxy") | "\(.type) \(.reason) \(.reportingController) \(.note)"'
}
has_legacy_event() { [[ $(legacy_events) == "Warning InvalidService kproxy "*'"10.96.0.300"'* ]]; }
ms=$(wait_for 5 has_legacy_event) || fail "no Warning Event for the invalid Service: '$(legacy_events)'"
pass "an invalid Service (clusterIP 10.96.0.300, stored by an older API server) gets a Warning Event (${ms} ms)"
! in_table 10.96.0.300 || fail "the invalid Service reached the ruleset"
answered_by e2e-client $NODE_IP:$NODE_PORT 16 "pod1 pod2" || fail "the invalid Service disturbed web"
pass "the invalid Service is skipped and web keeps working"

slice 1 2 3
ms=$(wait_for 5 answered_by e2e-client $NODE_IP:$NODE_PORT 24 "pod1 pod2 pod3") || fail "scale up: pod3 never answered"
pass "scaled up to 3 endpoints: traffic follows (${ms} ms)"
slice 3
ms=$(wait_for 5 answered_by e2e-client $CLUSTER_IP:80 20 "pod3") || fail "scale down: pod1 or pod2 still answer"
answered_by e2e-client $CLUSTER_IP:80 30 "pod3" || fail "a removed endpoint answered again"
pass "scaled down to pod3: only pod3 answers, 30 of 30 (${ms} ms)"

slice
# What a connection attempt from the client says (socat's error, when it fails).
attempt() { ip netns exec e2e-client socat -T"$2" - "TCP:$1,connect-timeout=$2" </dev/null 2>&1 || true; }
refused() { attempt "$1" 2 | grep -F "Connection refused" >/dev/null; }
ms=$(wait_for 5 refused $CLUSTER_IP:80) || fail "no endpoints: expected REJECT (connection refused)"
pass "no endpoints: REJECT, connection refused (${ms} ms)"

# An unallocated ClusterIP inside the ServiceCIDR the API server publishes: dropped, as
# upstream's "Drop traffic to unallocated ClusterIPs" rule does (a deleted Service's
# ClusterIP becomes unallocated).
kc delete service web >/dev/null
timed_out() { attempt "$1" 1 | grep -F "timed out" >/dev/null; }
dropped() { in_table "ip daddr 10.96.0.0/16 drop" && timed_out "$1"; }
ms=$(wait_for 5 dropped $CLUSTER_IP:80) || fail "deleted Service: expected DROP of its unallocated ClusterIP"
pass "deleted Service: its ClusterIP is unallocated and dropped, from the ServiceCIDR watch (${ms} ms)"

outage=${KPROXY_E2E_OUTAGE_SECONDS:-60}
echo "== API server down for $outage s"
web_service
slice 1 2
wait_for 5 answered_by e2e-client $NODE_IP:$NODE_PORT 16 "pod1 pod2" >/dev/null || fail "web is not back"
# Traffic: one new connection every 100 ms, each answer logged.
traffic() { # LOG
    while :; do
        echo "$(ask e2e-client $NODE_IP:$NODE_PORT)" >>"$1"
        sleep 0.1
    done
}
traffic "$state/outage.log" &
traffic_pid=$!
before=$(nft list table ip kproxy)
# An unrelated write moves the resource version on, so that kproxy's watches, when they
# reconnect, are too old for the restarted API server's cache: 410 Gone, and a relist.
kc create configmap e2e-bump --from-literal=at="$(date +%s%N)" >/dev/null
relists_before=$(grep -c "relisting" "$state/kproxy.log" || true)
testbed/down.sh "$state" kube-apiserver
sleep "$outage"
testbed/up.sh "$state" 6443 apiserver
relisted() { (($(grep -c "relisting" "$state/kproxy.log" || true) >= relists_before + 2)); }
wait_for 60 relisted >/dev/null || fail "kproxy did not relist after the API server came back"
sleep 1.5
kill $traffic_pid && wait $traffic_pid 2>/dev/null || true
total=$(wc -l <"$state/outage.log")
lost=$(grep -vc "^pod" "$state/outage.log" || true)
((total > outage * 5 && lost == 0)) || fail "during the outage, $lost of $total requests failed"
pass "API server down $outage s: $total requests, none failed"
[[ $(nft list table ip kproxy) == "$before" ]] || fail "the relist changed the ruleset"
pass "the watch expiry and relist (410 Gone) left the ruleset unchanged"
grep -q "too old resource version" "$state/kproxy.log" || fail "the watches did not expire (410 Gone)"
pass "kproxy's watches expired (410 Gone) and it relisted"
[[ $(legacy_events | wc -l) == 1 ]] || fail "the relist repeated the invalid Service's Event: $(legacy_events)"
pass "the relist did not repeat the invalid Service's Event"
gone() { ! in_table "${POD_IP[2]}"; }
start=$(now_ms)
slice 1
wait_for 2 gone >/dev/null || fail "a change after the API server's return was not applied within 2 s"
pass "a change after the API server's return reached the kernel in $(($(now_ms) - start)) ms"

echo "== localhost NodePorts, with the port on 127.0.0.1 held by another process"
socat TCP-LISTEN:$NODE_PORT,bind=127.0.0.1,fork,reuseaddr SYSTEM:"echo squatter" &
squatter_pid=$!
pids+=($squatter_pid)
kill $kproxy_pid && wait $kproxy_pid 2>/dev/null || true
start_kproxy --nodeport-addresses "$NODE_IP/32,localhost"
wait_for 20 healthy >/dev/null || fail "kproxy with localhost NodePorts did not become healthy"
conflict_events() {
    kc get events.v1.events.k8s.io -o json \
        | jq -r '.items[] | select(.regarding.name == "web" and .reason == "LocalhostNodePortConflict") | "\(.type) \(.reportingController) \(.note)"'
}
has_conflict_event() { [[ $(conflict_events) == "Warning kproxy "*"127.0.0.1:$NODE_PORT"* ]]; }
ms=$(wait_for 10 has_conflict_event) || fail "no Warning Event for the taken localhost NodePort: '$(conflict_events)'"
pass "a localhost NodePort held by another process gets a Warning Event on its Service (${ms} ms): $(conflict_events | head -1)"
answered_by e2e-client $NODE_IP:$NODE_PORT 8 "pod1" || fail "the conflict disturbed the kernel's NodePort"
pass "the conflict fails that listener alone: the NodePort on $NODE_IP still reaches pod1"
kill $squatter_pid && wait $squatter_pid 2>/dev/null || true
slice 1 2 3
local_answer() { socat -T2 - "TCP:127.0.0.1:$NODE_PORT,connect-timeout=2" </dev/null 2>/dev/null || true; }
served_locally() { [[ $(local_answer) == pod* ]]; }
ms=$(wait_for 10 served_locally) || fail "127.0.0.1:$NODE_PORT not served after the port was freed: '$(local_answer)'"
pass "once the port is free, the next sync serves 127.0.0.1:$NODE_PORT (${ms} ms)"

echo "== kproxy restart under continuous traffic"
slice 1 2
wait_for 5 answered_by e2e-client $NODE_IP:$NODE_PORT 16 "pod1 pod2" >/dev/null || fail "web is not back"
traffic "$state/restart.log" &
traffic_pid=$!
sleep 1
kill $kproxy_pid && wait $kproxy_pid 2>/dev/null || true
sleep 1
start_kproxy
wait_for 20 healthy >/dev/null || fail "kproxy did not become healthy after its restart"
sleep 1
kill $traffic_pid && wait $traffic_pid 2>/dev/null || true
total=$(wc -l <"$state/restart.log")
lost=$(grep -vc "^pod" "$state/restart.log" || true)
((total > 20 && lost == 0)) || fail "across the restart, $lost of $total requests failed"
pass "kproxy restarted under traffic: $total requests, none failed"

echo "== network programming latency: EndpointSlice written -> rule in the kernel"
samples=() acked=()
present() { in_table "$extra"; }
for n in $(seq 1 "${KPROXY_E2E_LATENCY_SAMPLES:-40}"); do
    extra=10.244.0.$((100 + n))
    start=$(now_ms)
    kc patch endpointslice web-1 --type=json \
        -p "[{\"op\": \"add\", \"path\": \"/endpoints/-\", \"value\": {\"addresses\": [\"$extra\"], \"conditions\": {\"ready\": true}}}]" \
        >/dev/null
    written=$(now_ms)
    wait_for 10 present >/dev/null || fail "endpoint $extra never reached the kernel"
    done_at=$(now_ms)
    echo "$extra written $written in-kernel $done_at" >>"$state/latency.log"
    samples+=($((done_at - start)))
    acked+=($((done_at - written)))
    # Past the --min-sync-period, so that each sample starts with a sync token available.
    sleep 1.1
done
percentiles() { # MS... : prints "p50 P p99 Q max M"
    local sorted count
    mapfile -t sorted < <(printf '%s\n' "$@" | sort -n)
    count=${#sorted[@]}
    echo "p50 ${sorted[$((count / 2))]} ms, p99 ${sorted[$(((count * 99 + 99) / 100 - 1))]} ms, max ${sorted[-1]} ms"
}
pass "network programming latency over ${#samples[@]} changes, from kubectl's start: $(percentiles "${samples[@]}")"
pass "network programming latency over ${#acked[@]} changes, from the write's acknowledgement: $(percentiles "${acked[@]}")"
if [[ -n ${KPROXY_E2E_DEBUG:-} ]]; then
    cat "$state/latency.log"
    grep -E "synced|relist" "$state/kproxy.log" | tail -40
fi

source testbed/lib/compat.sh
echo "e2e: all passed"
