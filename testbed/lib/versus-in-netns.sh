#!/usr/bin/env bash
# The inside of testbed/versus.sh: runs as root of a private user, network and mount
# namespace. etcd and kube-apiserver run here; each proxy runs, one at a time, in its own
# network namespace (`vs-upstream`, `vs-kproxy`) with the same node identity, and reaches
# the API server over a bridge at 10.250.0.1.
#
#   versus-in-netns.sh STATE RESULTS.tsv SCENARIO...    # SCENARIO: SERVICESxENDPOINTS
set -euo pipefail
state=$1 results=$2
shift 2
here=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$KPROXY_TESTBED_BIN:$PATH
cd "$here"

NODE=vs-node NODE_IP=10.250.0.10
TIMEOUT=${KPROXY_VERSUS_TIMEOUT:-1200}
DATAPATH_SIZES=" ${KPROXY_VERSUS_DATAPATH:-100 30000} "
SAMPLES=${KPROXY_VERSUS_SAMPLES:-3}
COLD_SAMPLES=${KPROXY_VERSUS_COLD_SAMPLES:-3}
# The quiet before each change sample: two of both proxies' --min-sync-period (1 s), so
# each sample finds the proxy's sync rate limit rested, as a lone change would. A Service
# added is two writes (the Service, then its EndpointSlice), so two syncs; 1.2 s apart,
# a sample could wait for the second of them on the limit the sample before had drained.
QUIET=2.2
proxy_pid= server_pid=
cleanup() {
    for p in $proxy_pid $server_pid; do kill "$p" 2>/dev/null || true; done
    testbed/down.sh "$state"
}
trap cleanup EXIT
kc() { kubectl --kubeconfig "$state/admin.kubeconfig" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

mount -t tmpfs tmpfs /run && mkdir -p /run/netns
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1
KPROXY_TESTBED_BIND=0.0.0.0 testbed/up.sh "$state" 6443
ip link add vsbr type bridge && ip addr add 10.250.0.1/24 dev vsbr && ip link set vsbr up
kc create namespace bench >/dev/null
kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata: {name: $NODE}
EOF
kc patch node $NODE --subresource=status --type=merge \
    -p "{\"status\": {\"addresses\": [{\"type\": \"InternalIP\", \"address\": \"$NODE_IP\"}]}}" >/dev/null
# The data-path probe: one Service whose endpoint is a pod next to the proxy.
kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: probe, namespace: default}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: probe-1, namespace: default, labels: {kubernetes.io/service-name: probe}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.130.0.2], conditions: {ready: true}, nodeName: $NODE}]
EOF
# The proxies reach the API server over the bridge, not loopback: the admin kubeconfig with
# another address (the serving certificate names both).
sed 's|https://127.0.0.1:6443|https://10.250.0.1:6443|' "$state/admin.kubeconfig" >"$state/proxy.kubeconfig"

# A fresh node for one proxy: its netns on the bridge, and a pod behind a veth.
make_node() { # NETNS
    local ns=$1
    ip netns add "$ns" && ip -n "$ns" link set lo up
    ip link add "$ns-up" type veth peer name eth0 netns "$ns"
    ip link set "$ns-up" master vsbr up
    ip -n "$ns" addr add $NODE_IP/24 dev eth0 && ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 10.250.0.1
    ip netns add "$ns-pod" && ip -n "$ns-pod" link set lo up
    ip -n "$ns" link add pod type veth peer name eth0 netns "$ns-pod"
    ip -n "$ns" addr add 10.130.0.1/24 dev pod && ip -n "$ns" link set pod up
    ip -n "$ns-pod" addr add 10.130.0.2/24 dev eth0 && ip -n "$ns-pod" link set eth0 up
    ip -n "$ns-pod" route add default via 10.130.0.1
    ip netns exec "$ns-pod" python3 testbed/lib/connlat.py serve 8080 &
    server_pid=$!
    ip neigh flush dev vsbr
}
remove_node() { # NETNS
    kill $server_pid 2>/dev/null && wait $server_pid 2>/dev/null || true
    server_pid=
    ip netns del "$1-pod"
    ip netns del "$1"
    # The kernel tears the namespace down afterwards, and with it the bridge's end of the
    # node's veth; the next node of the same name needs that name free.
    local i
    for i in $(seq 300); do
        ip link show "$1-up" >/dev/null 2>&1 || return 0
        sleep 0.1
    done
    log "$1-up outlived its namespace by 30 s"
}

start_proxy() { # NETNS TABLE-OWNER
    local flags=(--kubeconfig "$state/proxy.kubeconfig" --hostname-override $NODE --cluster-cidr 10.128.0.0/9
        --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249)
    if [[ $2 == upstream ]]; then
        ip netns exec "$1" kube-proxy "${flags[@]}" --proxy-mode nftables --conntrack-max-per-core 0 --v 1 \
            >>"$state/$2.log" 2>&1 &
    elif [[ $2 == baseline ]]; then
        ip netns exec "$1" "$KPROXY_BASELINE" run "${flags[@]}" >>"$state/$2.log" 2>&1 &
    else
        ip netns exec "$1" "$KPROXY" run "${flags[@]}" >>"$state/$2.log" 2>&1 &
    fi
    proxy_pid=$!
}
stop_proxy() {
    kill $proxy_pid 2>/dev/null || true
    wait $proxy_pid 2>/dev/null || true
    proxy_pid=
}
# One API write by testbed/lib/apiwrite.py: sets `answered` (µs) to when the API server's
# answer arrived, and adds the write's own time (sent → answered, ms) to `writes`.
api_write() { # WRITE ARGS...
    local times sent
    times=$(python3 testbed/lib/apiwrite.py "$state" "$@")
    read -r sent answered <<<"$times"
    writes+=("$(awk -v d=$((answered - sent)) 'BEGIN { printf "%.1f", d / 1000 }')")
}
# The number of ClusterIPs the proxy has programmed: entries of upstream's service-ips
# map; entries of kproxy's to-cluster-endpoints set (kproxy keeps Services as data).
service_count() { # NETNS TABLE
    if [[ $2 == kube-proxy ]]; then
        ip netns exec "$1" nft list map ip "$2" service-ips 2>/dev/null | grep -c "goto" || true
    else
        { ip netns exec "$1" nft list set ip "$2" to-cluster-endpoints 2>/dev/null || true; } \
            | { grep -o ' \. tcp \. ' || true; } | wc -l
    fi
}
# A metric's value; for upstream's per-family series, the IPv4 one.
metric() { # NETNS NAME
    ip netns exec "$1" curl -s 127.0.0.1:10249/metrics 2>/dev/null \
        | awk -v n="$2" '$1 == n || (index($1, n "{") == 1 && $1 ~ /ip_family="IPv4"/) { print $2; exit }'
}
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
# Polls COMMAND until it succeeds; prints the milliseconds since START, or "timeout".
poll_since() { # START LIMIT_S COMMAND...
    local start=$1 limit=$2
    shift 2
    until "$@"; do
        if (($(now_ms) - start > limit * 1000)); then
            echo timeout
            return
        fi
        sleep 0.01
    done
    echo $(($(now_ms) - start))
}
# The kernel probes below ask for one object over netlink (testbed/go/cmd/nftprobe, a few
# ms at any size): `nft list` and `nft get` load the whole ruleset first, which takes
# seconds at 10k-44k Services.
probe() { ip netns exec "$1" nftprobe "${@:2}" 2>/dev/null; }
# The probe for "svc-0's endpoints include IP". Upstream (v1.37): the anonymous map its
# service chain DNATs through holds the endpoint. kproxy: svc-0 has N endpoints, in slots
# 0 … N-1 of cluster-endpoints-N, one of them IP:8080.
endpoint_probe() { # TABLE COUNT IP
    if [[ $1 == kube-proxy ]]; then
        echo dnat-map "$1" "$upstream_svc0_chain" "$3"
    else
        echo slots "$1" "cluster-endpoints-$2" 10.96.1.0 tcp 80 "$2" "$3:8080"
    fi
}
# Starts one nftprobe that repeats PROBE after every nf_tables commit until it succeeds.
# It is started before the API write, so its own start-up (10-60 ms) is not part of the
# figure.
expect() { # NETNS PROBE...
    ip netns exec "$1" nftprobe wait 60 "${@:2}" >"$state/seen" 2>/dev/null &
    expect_pid=$!
    sleep 0.3
}
# Milliseconds (one decimal) from START_US until the expected change was seen, or
# "timeout"; 0 when it was there before the API server's answer reached the writer (the
# answer and the watch events leave the API server at about the same time).
# Called in the script's own shell: `wait` needs the probe to be its child.
seen_after() { # START_US
    if wait "$expect_pid"; then
        seen_ms=$(awk -v seen="$(cat "$state/seen")" -v start="$1" \
            'BEGIN { d = seen - start; printf "%.1f", (d < 0 ? 0 : d) / 1000 }')
    else
        seen_ms=timeout
    fi
}
# The probe for "a Service's ClusterIP is programmed": upstream's service-ips map,
# kproxy's to-cluster-endpoints set.
element_probe() { # TABLE IP
    local map=service-ips
    [[ $1 == kproxy ]] && map=to-cluster-endpoints
    echo element "$1" $map "$2" tcp 80
}
healthy() { [[ $(ip netns exec "$1" curl -s -o /dev/null -w '%{http_code}' 127.0.0.1:10256/healthz) == 200 ]]; }
full_syncs_done() {
    local count
    count=$(metric "$1" kubeproxy_sync_full_proxy_rules_duration_seconds_count)
    [[ -n $count ]] && ((${count%.*} >= 1))
}
# The mean of the full syncs so far, in seconds, from the proxy's own histogram.
mean_full_sync() {
    local sum count
    sum=$(metric "$1" kubeproxy_sync_full_proxy_rules_duration_seconds_sum)
    count=$(metric "$1" kubeproxy_sync_full_proxy_rules_duration_seconds_count)
    awk -v s="$sum" -v c="$count" 'BEGIN { if (c > 0) printf "%.3f", s / c }'
}

# One cold start of PROXY on a fresh node, with the machine idle: sets cold (ms), status
# and count (ClusterIPs programmed) in the caller's scope, and leaves the proxy running.
cold_start() { # PROXY NETNS TABLE WANT LAST_IP
    local proxy=$1 ns=$2 table=$3 want=$4 last_ip=$5
    make_node "$ns"
    settle
    local t0 seen="" map=service-ips
    [[ $table == kproxy ]] && map=to-cluster-endpoints
    status=ok count=0
    t0=$(now_ms)
    start_proxy "$ns" "$proxy"
    # Every ClusterIP, checked by counting (slow at scale) only once the last Service
    # written and the probe Service are there: both proxies write their first full sync
    # in one transaction. One nftprobe process polls for those two every 10 ms and prints
    # when it saw them; starting a probe per poll would take CPU from the proxy.
    while :; do
        local left=$((TIMEOUT - ($(now_ms) - t0) / 1000))
        ((left > 30)) && left=30
        if ((left > 0)) && seen=$(probe "$ns" wait-elements "$left" "$table" $map tcp 80 "$last_ip" 10.96.0.10); then
            count=$(service_count "$ns" "$table")
            ((count >= want)) && break
            # Not all there yet (a sync in parts): poll again.
            continue
        fi
        if (($(now_ms) - t0 > TIMEOUT * 1000)); then
            status="timeout"
            seen=$(now_ms)
            count=$(service_count "$ns" "$table")
            break
        fi
        log "$proxy: still programming after $((($(now_ms) - t0) / 1000)) s"
    done
    cold=$((seen - t0))
}

run_proxy() { # PROXY SERVICES ENDPOINTS
    local proxy=$1 n=$2 e=$3 ns=vs-$1 table
    [[ $proxy == upstream ]] && table=kube-proxy || table=kproxy
    local want=$((n + 1)) # the bench Services and the probe
    local last_ip
    last_ip=$(kc -n bench get service "svc-$((n - 1))" -o jsonpath='{.spec.clusterIP}')
    # The cold start, COLD_SAMPLES times on fresh nodes (both proxies' cold starts vary by
    # a fifth from run to run); the last proxy started goes on to the changes.
    log "$proxy: cold start with $n Services x $e endpoints"
    local cold status count colds=() k
    for k in $(seq 1 "$COLD_SAMPLES"); do
        cold_start "$proxy" "$ns" "$table" "$want" "$last_ip"
        log "$proxy: cold start $status in $cold ms ($count of $want)"
        colds+=("$cold")
        [[ $status == ok ]] && ((k < COLD_SAMPLES)) || break
        stop_proxy
        remove_node "$ns"
    done
    if [[ $status == ok ]] && ((${#colds[@]} > 1)); then
        cold=$(median "${colds[@]}")
        log "$proxy: cold start median $cold ms (${colds[*]})"
    fi
    local ep_ms="" add_ms="" resync="" p50="" p99="" rss="" cpu="" write_ms="" writes=() answered
    if [[ $status == ok ]]; then
        # One endpoint change: an extra endpoint for svc-0, found where the proxy keeps
        # svc-0's endpoints.
        local where samples=() i ip
        upstream_svc0_chain=$(probe "$ns" chains "$table" | grep -m1 -F -- "-bench/svc-0/tcp/http" || true)
        for i in $(seq 1 "$SAMPLES"); do
            sleep $QUIET
            ip=10.127.$((RANDOM % 250)).$i
            # svc-0's endpoint count after this patch (earlier runs may have added some).
            where=$(($(kc -n bench get endpointslice svc-0-1 -o json | jq '.endpoints | length') + 1))
            # shellcheck disable=SC2046 # the probe's words
            expect "$ns" $(endpoint_probe $table "$where" "$ip")
            api_write endpoint "$ip"
            seen_after "$answered"
            samples+=("$seen_ms")
        done
        ep_ms=$(median "${samples[@]}")
        write_ms=$(median "${writes[@]}")
        log "$proxy: one endpoint change: ${samples[*]} ms (median $ep_ms) after the API server's answer;" \
            "the writes themselves took ${writes[*]} ms"
        # One Service added.
        samples=()
        for i in $(seq 1 "$SAMPLES"); do
            sleep $QUIET
            ip=10.96.0.$((100 + i))
            # shellcheck disable=SC2046
            expect "$ns" $(element_probe $table "$ip")
            api_write service "$i" "$ip" "$NODE"
            seen_after "$answered"
            samples+=("$seen_ms")
        done
        add_ms=$(median "${samples[@]}")
        log "$proxy: one Service added: ${samples[*]} ms (median $add_ms)"
        kc -n bench delete service added-1 added-2 added-3 --ignore-not-found >/dev/null
        kc -n bench delete endpointslice added-1-1 added-2-1 added-3-1 --ignore-not-found >/dev/null
        if [[ $DATAPATH_SIZES == *" $n "* ]]; then
            read -r p50 p99 < <(ip netns exec "$ns" python3 testbed/lib/connlat.py measure 10.96.0.10:80 2000)
            log "$proxy: new connections through a ClusterIP among $n Services: p50 $p50 us, p99 $p99 us"
        fi
    fi
    rss=$(awk '/VmHWM/ { print $2 }' /proc/$proxy_pid/status)
    # CPU of the process and of the children it has waited for (upstream's nft runs).
    cpu=$(awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15 + $16 + $17) / hz }' /proc/$proxy_pid/stat)
    log "$proxy: peak RSS $((rss / 1024)) MiB, $cpu CPU seconds so far"
    stop_proxy
    if [[ $status == ok ]]; then
        # A full resync over the rules already there: a restart, timed by the proxy's own
        # full-sync metric.
        start_proxy "$ns" "$proxy"
        local r
        r=$(poll_since "$(now_ms)" "$TIMEOUT" full_syncs_done "$ns")
        [[ $r != timeout ]] && resync=$(mean_full_sync "$ns")
        log "$proxy: full resync after a restart: ${resync:-timeout} s (metric)"
        stop_proxy
    fi
    remove_node "$ns"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$e" "$proxy" "$status" "$cold" \
        "${ep_ms:-}" "${add_ms:-}" "${resync:-}" "$rss" "$cpu" "${p50:-}" "${p99:-}" "${write_ms:-}" >>"$results"
}

# Waits, up to 30 s, until the machine is idle: under 10% of its CPU time busy over half a
# second. Removing the namespace of the proxy measured before frees its whole ruleset in a
# kernel worker, after `ip netns del` has returned (seconds at 10k-44k Services), and the
# API server is still busy with what it served; a cold start measured meanwhile shared
# the CPU with them (kproxy's 10k cold start took 1.05 s after upstream's namespace went,
# 0.76 s in a run where it happened to start later).
settle() {
    local i busy
    for i in $(seq 60); do
        busy=$({
            head -1 /proc/stat
            sleep 0.5
            head -1 /proc/stat
        } | awk '{ idle = $5 + $6; total = 0; for (f = 2; f <= 9; f++) total += $f }
                 NR == 1 { idle0 = idle; total0 = total }
                 NR == 2 { printf "%d", 100 * (1 - (idle - idle0) / (total - total0)) }')
        if ((busy < 10)); then
            ((i > 1)) && log "waited $((i / 2)) s for the machine to settle"
            return
        fi
    done
    log "the machine stayed busy (${busy}% of CPU time); measuring anyway"
}

# Whether the API server's watch cache of RESOURCE (a collection path in the bench
# namespace) holds COUNT objects: a list at resourceVersion 0 is served from it.
cached() { # PATH COUNT
    [[ $(kc get --raw "$1?resourceVersion=0" | jq '.items | length') == "$2" ]]
}

for scenario in "$@"; do
    n=${scenario%x*} e=${scenario#*x}
    log "== $n Services x $e endpoints"
    loadgen -delete >&2
    loadgen -services "$n" -endpoints "$e" -node $NODE >&2
    # loadgen writes 128 objects per etcd transaction, so they share a revision, which no
    # API write does. A watch started while the cache is taking such a revision in begins
    # in its middle and never receives the rest of it (seen: 155 Services lost by a proxy
    # started at once). Real clusters cannot produce this; wait until the caches are full.
    until cached /api/v1/namespaces/bench/services "$n" \
        && cached /apis/discovery.k8s.io/v1/namespaces/bench/endpointslices "$n"; do
        sleep 0.5
    done
    for proxy in ${KPROXY_VERSUS_PROXIES:-upstream kproxy}; do
        run_proxy "$proxy" "$n" "$e"
    done
done
