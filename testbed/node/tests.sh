# The node tests, sourced by in-node.sh with its helpers (kc, ctr_, fail, pass, wait_for)
# once the node is Ready.

echo "== deploy/ for real"
kc apply -f deploy/rbac.yaml >/dev/null
# The API server's real address: on a fresh node nothing serves the kubernetes ClusterIP.
sed -e 's/API_SERVER_ADDRESS/127.0.0.1/' deploy/configmap.yaml | kc apply -f - >/dev/null
kc apply -f deploy/daemonset.yaml >/dev/null
kc -n kube-system rollout status ds/kproxy --timeout=120s >/dev/null || fail "the kproxy DaemonSet did not roll out"
kproxy_pod() { kc -n kube-system get pods -l app.kubernetes.io/name=kproxy -o jsonpath='{.items[0].metadata.name}'; }
pass "the kproxy DaemonSet's pod $(kproxy_pod) is Ready (liveness on /livez)"
logs() { kc -n kube-system logs "$(kproxy_pod)" "$@" 2>&1; }
started() { logs | grep -F "synced" >/dev/null; }
wait_for 30 started >/dev/null || fail "kubectl logs shows no sync: $(logs | tail -5)"
logs -c sysctls | grep -F "System initialized" >/dev/null || fail "the init container's log: $(logs -c sysctls | tail -5)"
pass "kubectl logs shows kproxy's start, and its init container's sysctls"

kc apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: kproxy-testbed/podserver:1
        imagePullPolicy: Never
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  clusterIP: 10.96.0.50
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
EOF
kc rollout status deploy/web --timeout=120s >/dev/null || fail "the web Deployment did not roll out"
web_pods=$(kc get pods -l app=web -o jsonpath='{.items[*].metadata.name}')
# Distinct answers to COUNT connections, from a pod (kubectl exec) or from the client.
from_pod() { kc exec deploy/web -- /podserver get "$1" "$2" 2>/dev/null | sort -u | tr '\n' ' ' | sed 's/ $//'; }
from_client() { # TARGET COUNT
    for _ in $(seq "$2"); do
        nsenter --net="$state/client.netns" socat -T2 - "TCP:$1,connect-timeout=2" </dev/null 2>/dev/null || echo error
    done | sort -u | tr '\n' ' ' | sed 's/ $//'
}
expected=$(tr ' ' '\n' <<<"$web_pods" | sort | tr '\n' ' ' | sed 's/ $//')
both_answer() { [[ $(from_pod 10.96.0.50:80 16) == "$expected" ]]; }
wait_for 20 both_answer >/dev/null || fail "ClusterIP from a pod: got '$(from_pod 10.96.0.50:80 16)', expected '$expected'"
pass "pods of a Deployment reach the ClusterIP: both endpoints answer ($expected)"
[[ $(from_pod $NODE_IP:30080 16) == "$expected" ]] || fail "NodePort from a pod: $(from_pod $NODE_IP:30080 16)"
[[ $(from_client $NODE_IP:30080 16) == "$expected" ]] || fail "NodePort from the client: $(from_client $NODE_IP:30080 16)"
pass "the NodePort answers from a pod and from an external client"

# Continuous traffic from the external client: one new connection every 100 ms to the
# NodePort and one to the ClusterIP (routed through the node), each answer logged.
traffic_start() { # LOG
    : >"$1"
    (
        while :; do
            for target in $NODE_IP:30080 10.96.0.50:80; do
                nsenter --net="$state/client.netns" socat -T2 - "TCP:$target,connect-timeout=2" </dev/null 2>/dev/null \
                    | grep . || echo "FAILED $target $(date +%T.%N)"
            done >>"$1"
            sleep 0.1
        done
    ) &
    traffic_pid=$!
}
traffic_stop() { # LOG WHAT : fails on any failed connection
    kill $traffic_pid 2>/dev/null && wait $traffic_pid 2>/dev/null || true
    local total failed
    total=$(wc -l <"$1")
    failed=$(grep -c FAILED "$1" || true)
    ((total > 20 && failed == 0)) || fail "$2: $failed of $total connections failed: $(grep FAILED "$1" | head -3)"
    echo "$total"
}
kproxy_running() { [[ $(kc -n kube-system get pods -l app.kubernetes.io/name=kproxy --field-selector=status.phase=Running -o name | wc -l) == 1 ]]; }
new_kproxy_synced() { # OLD_POD
    local pod
    pod=$(kproxy_pod)
    [[ -n $pod && $pod != "$1" ]] && kc -n kube-system logs "$pod" 2>/dev/null | grep -F "synced" >/dev/null
}

echo "== kproxy pod deleted, then the DaemonSet restarted, under continuous traffic"
traffic_start "$state/delete.log"
sleep 1
old=$(kproxy_pod)
kc -n kube-system delete pod "$old" --wait=true >/dev/null
ms=$(wait_for 60 new_kproxy_synced "$old") || fail "no new kproxy pod synced after the delete"
sleep 1
n=$(traffic_stop "$state/delete.log" "kubectl delete pod")
pass "kubectl delete pod: the new kproxy pod synced after $ms ms; $n connections, none failed"
traffic_start "$state/rollout.log"
sleep 1
old=$(kproxy_pod)
kc -n kube-system rollout restart ds/kproxy >/dev/null
kc -n kube-system rollout status ds/kproxy --timeout=120s >/dev/null || fail "rollout restart did not finish"
wait_for 60 new_kproxy_synced "$old" >/dev/null || fail "the restarted kproxy did not sync"
sleep 1
n=$(traffic_stop "$state/rollout.log" "kubectl rollout restart")
pass "kubectl rollout restart ds/kproxy: $n connections, none failed"

echo "== the node reboots: every container gone, no rules in the kernel"
kill "$kubelet_pid" && wait "$kubelet_pid" 2>/dev/null || true
for task in $(ctr_ tasks ls -q); do ctr_ tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true; done
sleep 0.5
for task in $(ctr_ tasks ls -q); do ctr_ tasks rm -f "$task" >/dev/null 2>&1 || true; done
nft flush ruleset
ip link del cni0 2>/dev/null || true
start=$(now_ms)
kubelet --config "$state/kubelet.yaml" --kubeconfig "$state/admin.kubeconfig" --hostname-override $NODE \
    --node-ip $NODE_IP --root-dir "$state/kubelet" --cert-dir "$state/kubelet/pki" \
    >>"$state/log/kubelet.log" 2>&1 &
kubelet_pid=$!
services_back() { [[ $(from_client $NODE_IP:30080 4 | grep -c error) == 0 && -n $(from_client 10.96.0.50:80 1) ]]; }
ms=$(wait_for 180 services_back) || fail "Services did not come back after the reboot"
pass "after the reboot, kubelet restarted every pod and Services answered again in $ms ms"

# --- Migration: the node runs kube-proxy; the runbook (docs/migrate.md) swaps its image.
kube_proxy_ready() { # IMAGE : the DaemonSet's one pod runs IMAGE and is Ready
    [[ $(kc -n kube-system get pods -l k8s-app=kube-proxy \
        -o jsonpath='{range .items[*]}{.spec.containers[0].image} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}') == "$1 True" ]]
}
no_kube_proxy_leftovers() {
    ! nft list tables | grep -F kube-proxy >/dev/null && ! iptables-save | grep -E '^:KUBE-(SERVICES|SVC-|SEP-|NODEPORTS|POSTROUTING|MARK-MASQ|FORWARD|EXTERNAL-SERVICES|PROXY-FIREWALL)' >/dev/null
}
no_kproxy_rules() { ! nft list tables | grep -F kproxy >/dev/null; }
kproxy_synced_as() { # DAEMONSET LABEL
    local pod
    pod=$(kc -n kube-system get pods -l "$2" -o jsonpath='{.items[0].metadata.name}')
    kc -n kube-system logs "$pod" 2>/dev/null | grep -F "synced" >/dev/null
}
migrate() { # MODE
    local mode=$1 start ms n
    echo "== migration: kube-proxy ($mode mode) -> kproxy -> kube-proxy, under continuous traffic"
    sed -e "s/MODE/$mode/; s/API_SERVER/127.0.0.1/" testbed/node/kube-proxy.yaml | kc apply -f - >/dev/null
    kc -n kube-system rollout restart ds/kube-proxy >/dev/null 2>&1 || true
    kc -n kube-system rollout status ds/kube-proxy --timeout=120s >/dev/null || fail "kube-proxy did not roll out"
    wait_for 60 kube_proxy_ready kproxy-testbed/kube-proxy:v1.37.2 >/dev/null || fail "kube-proxy is not Ready"
    # kproxy leaves; the node is kube-proxy's alone.
    kc delete -f deploy/daemonset.yaml --ignore-not-found --wait=true >/dev/null
    nft list tables | grep -F kproxy >/dev/null && { nft delete table ip kproxy; nft delete table ip6 kproxy; }
    kube_proxy_serves() { [[ $(from_client $NODE_IP:30080 16) == "$expected" ]]; }
    wait_for 60 kube_proxy_serves >/dev/null || fail "kube-proxy ($mode) does not serve the NodePort: $(from_client $NODE_IP:30080 8)"
    if [[ $mode == iptables ]]; then
        iptables-save | grep -F ":KUBE-SERVICES" >/dev/null || fail "kube-proxy made no iptables chains"
    fi
    pass "kube-proxy v1.37.2 in $mode mode serves the node alone"

    # The runbook: swap the image; nothing else changes.
    traffic_start "$state/migrate-$mode.log"
    sleep 1
    start=$(now_ms)
    kc -n kube-system set image ds/kube-proxy kube-proxy=kproxy:0.1.0 >/dev/null
    wait_for 120 kube_proxy_ready kproxy:0.1.0 >/dev/null || fail "kproxy did not replace kube-proxy"
    wait_for 60 kproxy_synced_as kube-proxy k8s-app=kube-proxy >/dev/null || fail "kproxy (as kube-proxy) did not sync"
    wait_for 30 no_kube_proxy_leftovers >/dev/null || fail "kube-proxy's rules are still there: $(nft list tables | tr '\n' ' ')"
    ms=$(($(now_ms) - start))
    sleep 1
    n=$(traffic_stop "$state/migrate-$mode.log" "kube-proxy ($mode) -> kproxy")
    pass "kube-proxy ($mode) -> kproxy by image swap: $n connections, none failed; switched and kube-proxy's rules gone in $ms ms"

    # Rollback: the image back, then kproxy's rules removed (kube-proxy does not know them).
    traffic_start "$state/rollback-$mode.log"
    sleep 1
    start=$(now_ms)
    kc -n kube-system set image ds/kube-proxy kube-proxy=kproxy-testbed/kube-proxy:v1.37.2 >/dev/null
    wait_for 120 kube_proxy_ready kproxy-testbed/kube-proxy:v1.37.2 >/dev/null || fail "kube-proxy did not come back"
    sleep 2
    kc -n kube-system delete pod kproxy-cleanup --ignore-not-found >/dev/null
    kc apply -f - >/dev/null <<POD
apiVersion: v1
kind: Pod
metadata: {name: kproxy-cleanup, namespace: kube-system}
spec:
  nodeName: $NODE
  hostNetwork: true
  restartPolicy: Never
  containers:
  - name: cleanup
    image: kproxy:0.1.0
    imagePullPolicy: IfNotPresent
    command: [/usr/local/bin/kproxy, cleanup]
    securityContext: {capabilities: {add: [NET_ADMIN]}}
POD
    cleaned() { [[ $(kc -n kube-system get pod kproxy-cleanup -o jsonpath='{.status.phase}') == Succeeded ]]; }
    wait_for 60 cleaned >/dev/null || fail "the cleanup pod did not succeed: $(kc -n kube-system logs kproxy-cleanup 2>&1 | tail -3)"
    no_kproxy_rules || fail "kproxy's tables are still there after the rollback"
    ms=$(($(now_ms) - start))
    sleep 1
    n=$(traffic_stop "$state/rollback-$mode.log" "kproxy -> kube-proxy ($mode)")
    pass "rollback to kube-proxy ($mode), then kproxy cleanup: $n connections, none failed, in $ms ms"
    kc -n kube-system delete pod kproxy-cleanup >/dev/null
}
migrate nftables
migrate iptables
