#!/usr/bin/env bash
# The inside of scripts/example.sh: runs as root of a private user, network and mount
# namespace (this namespace is the node).
set -euo pipefail
KPROXY=${KPROXY:-target/debug/kproxy}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

mount -t tmpfs tmpfs /run && mkdir -p /run/netns
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 net.ipv4.icmp_ratelimit=0

# Pods on a bridge, as a CNI bridge plugin would wire them.
ip link add br0 type bridge && ip addr add 10.244.0.1/24 dev br0 && ip link set br0 up
for i in 1 2; do
  pod=pod$i ip=10.244.0.1$i
  ip netns add $pod && ip -n $pod link set lo up
  ip link add veth-$pod type veth peer name eth0 netns $pod
  ip link set veth-$pod master br0 up && ip link set veth-$pod type bridge_slave hairpin on
  ip -n $pod addr add $ip/24 dev eth0 && ip -n $pod link set eth0 up && ip -n $pod route add default via 10.244.0.1
  ip netns exec $pod socat TCP-LISTEN:8080,fork,reuseaddr "SYSTEM:echo $pod" >/dev/null 2>&1 & pids+=($!)
  ip netns exec $pod socat UDP-RECVFROM:5353,fork "SYSTEM:echo $pod" >/dev/null 2>&1 & pids+=($!)
done
# An external client reaching the node at 10.200.0.1.
ip netns add client && ip -n client link set lo up
ip link add eth0 type veth peer name eth0 netns client
ip addr add 10.200.0.1/24 dev eth0 && ip link set eth0 up
ip -n client addr add 10.200.0.2/24 dev eth0 && ip -n client link set eth0 up
ip -n client route add default via 10.200.0.1
ip route add default via 10.200.0.2
sleep 0.3

flags=(--manifests examples/cluster --hostname-override node-a --cluster-cidr 10.244.0.0/16)
echo "== kproxy sync ${flags[*]}"
"$KPROXY" sync "${flags[@]}"

tcp() { ip netns exec client socat -T3 - "TCP:$1,connect-timeout=3" </dev/null 2>/dev/null || echo "(no answer)"; }
udp() { echo q | ip netns exec client socat -T3 - "UDP:$1" 2>/dev/null || echo "(no answer)"; }
count() { sort | uniq -c | sed 's/^ */    /'; }

echo "== client -> web ClusterIP 10.96.0.10:80, 20 requests (two local pods)"
for _ in $(seq 20); do tcp 10.96.0.10:80; done | count
echo "== client -> echo NodePort 10.200.0.1:30007, 10 requests (externalTrafficPolicy: Local: only the local pod)"
for _ in $(seq 10); do tcp 10.200.0.1:30007; done | count
echo "== client -> dns ClusterIP 10.96.0.53:53/udp, 5 requests"
for _ in $(seq 5); do udp 10.96.0.53:53; done | count
echo "== client -> empty ClusterIP 10.96.0.99:80 (no endpoints: REJECT)"
ip netns exec client socat -T3 - TCP:10.96.0.99:80,connect-timeout=3 </dev/null 2>&1 | sed 's/^.*E /    /' || true
echo "== kproxy trace --from 10.200.0.2 --to 10.200.0.1:30007/tcp"
"$KPROXY" trace "${flags[@]}" --from 10.200.0.2 --to 10.200.0.1:30007/tcp | sed 's/^/    /'
echo "== kproxy cleanup"
"$KPROXY" cleanup
