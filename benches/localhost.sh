#!/usr/bin/env bash
# The localhost NodePort relay against the direct path, from the node to one pod, with
# real sockets in a throwaway node (user, network and mount namespaces of its own):
#   - one bulk TCP flow (iperf3, RUNS runs of SECS seconds each);
#   - the TCP connection rate (connect, read one byte, close; SECS seconds per run).
# Prints the medians and their ratio, with the CPU model.
#
#   benches/localhost.sh            # RUNS=5 SECS=5
#   RUNS=3 SECS=3 benches/localhost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SECS=${SECS:-5}
if [ -z "${KPROXY_BENCH_NODE:-}" ]; then
  command -v iperf3 >/dev/null || { apt-get install -y -q iperf3 >/dev/null; }
  cargo build -q --release -p kproxy
  exec unshare -rnm env KPROXY_BENCH_NODE=1 RUNS="$RUNS" SECS="$SECS" "$0"
fi

pids=()
dir=$(mktemp -d)
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; ip netns del pod 2>/dev/null || true; rm -rf "$dir"' EXIT
mount -t tmpfs tmpfs /run && mkdir -p /run/netns
ip link set lo up
# Thousands of short connections a second leave ports in TIME_WAIT on the side that closes
# first; without reuse the client runs out of ports after about 28,000 of them (the
# default is reuse on loopback only, which would favour the relay's client side).
sysctl -qw net.ipv4.tcp_tw_reuse=1
ip netns add pod
ip -n pod link set lo up
ip link add veth-pod type veth peer name eth0 netns pod
ip addr add 10.244.0.1/24 dev veth-pod && ip link set veth-pod up
ip -n pod addr add 10.244.0.11/24 dev eth0 && ip -n pod link set eth0 up
ip -n pod route add default via 10.244.0.1

ip netns exec pod iperf3 -s -p 5201 >/dev/null 2>&1 & pids+=($!)
# A server that answers each connection with one byte and closes it.
ip netns exec pod python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(4096)
while True:
    c, _ = s.accept(); c.send(b"x"); c.close()
' & pids+=($!)

cat > "$dir/cluster.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {namespace: default, name: bench}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  ports:
    - {name: iperf, port: 5201, nodePort: 30201}
    - {name: rate, port: 7000, nodePort: 30700}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: default, name: bench-1, labels: {kubernetes.io/service-name: bench}}
addressType: IPv4
ports: [{name: iperf, port: 5201}, {name: rate, port: 7000}]
endpoints: [{addresses: [10.244.0.11], nodeName: node-a}]
YAML
target/release/kproxy run --manifests "$dir" --hostname-override node-a --cluster-cidr 10.244.0.0/16 \
  --nodeport-addresses localhost >"$dir/kproxy.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/30700) 2>/dev/null && break
  sleep 0.1
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
gbits() { # HOST PORT
  iperf3 -c "$1" -p "$2" -t "$SECS" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'
}
rate() { # HOST PORT
  python3 - "$1" "$2" "$SECS" <<'PY'
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n, end = 0, time.monotonic() + secs
while time.monotonic() < end:
    s = socket.create_connection((host, port)); s.recv(1); s.close(); n += 1
print(n / secs)
PY
}
declare -A results
for what in direct relay; do
  if [ $what = direct ]; then host=10.244.0.11; bulk=5201; short=7000; else host=127.0.0.1; bulk=30201; short=30700; fi
  results[$what-bulk]=$(for _ in $(seq "$RUNS"); do gbits $host $bulk; done | median)
  results[$what-rate]=$(for _ in $(seq "$RUNS"); do rate $host $short; done | median)
done
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo "CPU: $cpu ($(nproc) CPUs); median of $RUNS runs of ${SECS}s"
echo
echo "| path | bulk TCP, Gbit/s | connections/s |"
echo "|---|---|---|"
printf '| pod IP directly | %.2f | %.0f |\n' "${results[direct-bulk]}" "${results[direct-rate]}"
printf '| 127.0.0.1:NodePort (relay) | %.2f | %.0f |\n' "${results[relay-bulk]}" "${results[relay-rate]}"
printf '| ratio | %.2f× | %.2f× |\n' "$(echo "${results[relay-bulk]} / ${results[direct-bulk]}" | bc -l)" \
  "$(echo "${results[relay-rate]} / ${results[direct-rate]}" | bc -l)"
