# kproxy against the real kube-proxy (v1.37.2, built by testbed/build.sh), sourced by
# e2e-in-netns.sh with its helpers (kc, fail, pass, wait_for, start_kproxy, slice, …):
# the command line, kubeadm's file, the effective configuration, /configz and /metrics.
echo "== kube-proxy compatibility"
compat=testbed/lib/compat.py
diff <(kube-proxy --help 2>&1) bin/testdata/kube-proxy-help.txt >"$state/help.diff" \
    || fail "kube-proxy --help differs from bin/testdata/kube-proxy-help.txt: $(head -5 "$state/help.diff")"
pass "kube-proxy --help is the capture the flag tests read (bin/testdata/kube-proxy-help.txt)"
kubeadm config print init-defaults --component-configs KubeProxyConfiguration >"$state/kubeadm.yaml" 2>/dev/null
python3 $compat kubeadm "$state/kubeadm.yaml" bin/testdata/kubeadm-kube-proxy-config.yaml || fail "kubeadm's file changed"
pass "kubeadm's KubeProxyConfiguration is the capture the config tests read"

# The effective configuration, as both write it (--write-config-to validates, writes, exits).
kubeadm_file=bin/testdata/kubeadm-kube-proxy-config.yaml
sed 's/^mode: iptables$/mode: nftables/' $kubeadm_file >"$state/kubeadm-nft.yaml"
kube-proxy --write-config-to "$state/defaults.yaml" 2>/dev/null || fail "kube-proxy --write-config-to"
both() { # NAME ARGS... : writes NAME.up.yaml and NAME.kp.yaml
    local name=$1
    shift
    kube-proxy "$@" --write-config-to "$state/$name.up.yaml" 2>/dev/null || fail "kube-proxy $*"
    "$KPROXY" "$@" --write-config-to "$state/$name.kp.yaml" 2>/dev/null || fail "kproxy $*"
}
nft_flags=(--proxy-mode=nftables --cluster-cidr=10.244.0.0/16,fd00::/64 --nodeport-addresses=primary,localhost
    --masquerade-all --iptables-sync-period=10s --iptables-min-sync-period=2s --conntrack-max-per-core=0
    --bind-address=192.168.50.1 --oom-score-adj=-500 --detect-local-mode=NodeCIDR --hostname-override=Node-X)
both kubeadm-nft --config "$state/kubeadm-nft.yaml" --hostname-override=$NODE
both nft-flags "${nft_flags[@]}"
for name in kubeadm-nft nft-flags; do
    python3 $compat config "$state/$name.up.yaml" "$state/$name.kp.yaml" || fail "$name: the configurations differ"
done
pass "nftables mode: kube-proxy and kproxy write the same effective configuration (kubeadm's file; 11 flags)"
both kubeadm --config $kubeadm_file --hostname-override=$NODE
both defaults --config "$state/defaults.yaml"
both no-flags
for name in kubeadm defaults no-flags; do
    python3 $compat config "$state/$name.up.yaml" "$state/$name.kp.yaml" --mode-swapped \
        || fail "$name: the configurations differ beyond the documented mode swap"
done
pass "mode iptables/\"\": the configurations differ only as documented (kubeadm's file, kube-proxy's defaults, no flags)"

# Both daemons on this cluster: kproxy from a file now (restarted), kube-proxy in
# nftables mode beside it on other ports. Its tables do not disturb kproxy's; kproxy's
# start removed any it found before, and will again at its next start.
cat >"$state/kproxy.conf" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clientConnection: {kubeconfig: $state/kproxy.kubeconfig}
EOF
sed -e 's/10256/20256/; s/10249/20249/' -e "s|$state/kproxy.kubeconfig|$state/admin.kubeconfig|" \
    "$state/kproxy.conf" >"$state/kube-proxy.conf"
kill $kproxy_pid && wait $kproxy_pid 2>/dev/null || true
"$KPROXY" --config "$state/kproxy.conf" --hostname-override=$NODE >>"$state/kproxy.log" 2>&1 &
kproxy_pid=$!
wait_for 20 healthy >/dev/null || fail "kproxy with --config did not become healthy"
# Its first commit, then its removal of kube-proxy's leftovers, before kube-proxy starts.
synced() { curl -s http://127.0.0.1:10249/metrics | grep -F kubeproxy_sync_proxy_rules_last_timestamp_seconds >/dev/null; }
wait_for 20 synced >/dev/null || fail "kproxy with --config did not sync"
sleep 1
kube-proxy --config "$state/kube-proxy.conf" --hostname-override=$NODE >"$state/kube-proxy.log" 2>&1 &
upstream_pid=$!
pids+=($upstream_pid)
up_healthy() { [[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:20256/healthz) == 200 ]]; }
wait_for 60 up_healthy >/dev/null || fail "kube-proxy did not become healthy: $(tail -5 "$state/kube-proxy.log")"
# The invalid Service stored by an older API server (see above) breaks kube-proxy's whole
# IPv4 transaction (an element with a <nil> address); kproxy skipped just that Service.
sleep 1
if grep -F "nftables sync failed" "$state/kube-proxy.log" >/dev/null; then
    pass "note: kube-proxy v1.37.2's IPv4 sync fails on the invalid Service kproxy skips (nftables syntax error)"
fi
kc delete service legacy >/dev/null || fail "could not delete the invalid Service"
# The same changes for both: an endpoint in, an endpoint out.
slice 1 2 3
sleep 2.5
slice 1 2
sleep 2.5
curl -sf http://127.0.0.1:20249/configz >"$state/configz.up.json" || fail "kube-proxy's /configz"
curl -sf http://127.0.0.1:10249/configz >"$state/configz.kp.json" || fail "kproxy's /configz"
sed -i 's/20256/10256/; s/20249/10249/; s|admin.kubeconfig|kproxy.kubeconfig|' "$state/configz.up.json"
python3 $compat config "$state/configz.up.json" "$state/configz.kp.json" || fail "/configz differs"
pass "/configz: the same configuration from the same file, from both daemons"
[[ $(curl -s http://127.0.0.1:10249/proxyMode) == "$(curl -s http://127.0.0.1:20249/proxyMode)" ]] \
    || fail "/proxyMode differs"
curl -sf http://127.0.0.1:20249/metrics >"$state/metrics.up.txt" || fail "kube-proxy's /metrics"
curl -sf http://127.0.0.1:10249/metrics >"$state/metrics.kp.txt" || fail "kproxy's /metrics"
compared=$(python3 $compat metrics "$state/metrics.up.txt" "$state/metrics.kp.txt") || fail "/metrics differ"
pass "/metrics: kproxy has kube-proxy's $(wc -w <<<"$compared") kubeproxy_* families with their types and labels"
for path in /healthz /livez; do
    up=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:20256$path)
    kp=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:10256$path)
    [[ $up == "$kp" ]] || fail "$path: kube-proxy $up, kproxy $kp"
    keys() { curl -s "$1" | jq -c 'keys'; }
    [[ $(keys http://127.0.0.1:20256$path) == "$(keys http://127.0.0.1:10256$path)" ]] || fail "$path bodies differ"
done
pass "/healthz and /livez: the same codes and fields"

# kube-proxy leaves; kproxy's next start removes its tables, after kproxy's own commit.
kill $upstream_pid && wait $upstream_pid 2>/dev/null || true
nft list table ip kube-proxy >/dev/null 2>&1 \
    || fail "kube-proxy left no table to clean up: $(nft list tables | tr '\n' ' '); $(tail -5 "$state/kube-proxy.log")"
kill $kproxy_pid && wait $kproxy_pid 2>/dev/null || true
start_kproxy
no_leftovers() { ! nft list table ip kube-proxy >/dev/null 2>&1 && ! nft list table ip6 kube-proxy >/dev/null 2>&1; }
ms=$(wait_for 20 no_leftovers) || fail "kproxy did not remove kube-proxy's tables"
wait_for 20 healthy >/dev/null || fail "kproxy is not healthy after removing kube-proxy's tables"
pass "kproxy removed kube-proxy's nftables tables at start (${ms} ms), after its own commit"
