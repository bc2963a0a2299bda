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
