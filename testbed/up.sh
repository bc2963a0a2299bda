#!/usr/bin/env bash
# Starts etcd and kube-apiserver on loopback, with generated certificates, a
# service-account key and RBAC authorization, and writes an admin kubeconfig.
#
#   testbed/up.sh STATE_DIR [API_PORT]
#   testbed/up.sh STATE_DIR API_PORT apiserver   # restart only kube-apiserver
#
# KPROXY_TESTBED_BIND=0.0.0.0 makes kube-apiserver listen beyond loopback (the serving
# certificate also names 10.250.0.1, where testbed/versus.sh's proxies reach it).
#
# Run it inside the network namespace the test uses (e2e runs everything under
# `unshare -rnm`), so nothing listens on the host. The PIDs go to STATE_DIR/pids;
# testbed/down.sh STATE_DIR stops exactly those processes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${1:?usage: up.sh STATE_DIR [API_PORT]}
port=${2:-6443}
bin=${KPROXY_TESTBED_BIN:-$("$here/build.sh")}
mkdir -p "$state/pki" "$state/etcd" "$state/log"
state=$(cd "$state" && pwd)
pki=$state/pki

# Certificates: one CA; the API server's serving certificate for 127.0.0.1; an admin
# client certificate (group system:masters); the service-account signing key.
if [[ ! -f $pki/ca.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=kproxy-testbed-ca \
        -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
    issue() { # name subject [extfile]
        openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
        openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 30 \
            ${3:+-extfile "$3"} -out "$pki/$1.crt" 2>/dev/null
    }
    printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:10.250.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' \
        > "$pki/server.ext"
    issue apiserver /CN=kube-apiserver "$pki/server.ext"
    printf 'extendedKeyUsage=clientAuth\n' > "$pki/client.ext"
    issue admin "/O=system:masters/CN=kproxy-testbed-admin" "$pki/client.ext"
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi

ip link set lo up 2>/dev/null || true
etcd_port=$((port + 10000))
only=${3:-}
if [[ $only != apiserver ]]; then
    "$bin/etcd" --data-dir "$state/etcd" --name testbed \
        --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
        --initial-cluster "testbed=http://127.0.0.1:$((etcd_port + 1))" \
        --unsafe-no-fsync --quota-backend-bytes 8589934592 >"$state/log/etcd.log" 2>&1 &
    echo "etcd $!" > "$state/pids"
fi

start_apiserver() {
    "$bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$etcd_port" \
        --bind-address "${KPROXY_TESTBED_BIND:-127.0.0.1}" --advertise-address 127.0.0.1 --secure-port "$port" \
        --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
        --authorization-mode RBAC --enable-priority-and-fairness=false \
        --endpoint-reconciler-type none \
        ${KPROXY_TESTBED_APISERVER_FLAGS:-} >>"$state/log/kube-apiserver.log" 2>&1 &
    echo "kube-apiserver $!" >> "$state/pids"
}
start_apiserver

cat > "$state/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster: {server: "https://127.0.0.1:$port", certificate-authority: "$pki/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$pki/admin.crt", client-key: "$pki/admin.key"}
contexts:
- name: testbed
  context: {cluster: testbed, user: admin}
current-context: testbed
EOF

apiserver_pid=$(awk '$1 == "kube-apiserver" { print $2 }' "$state/pids" | tail -1)
for _ in $(seq 1 600); do
    kill -0 "$apiserver_pid" 2>/dev/null || break
    if "$bin/kubectl" --kubeconfig "$state/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1; then
        echo "testbed: kube-apiserver ready on https://127.0.0.1:$port" >&2
        exit 0
    fi
    sleep 0.1
done
echo "testbed: kube-apiserver did not become ready; the last lines of its log:" >&2
tail -20 "$state/log/kube-apiserver.log" >&2
exit 1
