#!/usr/bin/env bash
# Side by side: upstream kube-proxy (nftables mode, built from source at the test bed's
# Kubernetes version) and kproxy, against one real kube-apiserver, one proxy at a time,
# each in its own network namespace with the same node identity. For every scenario it
# measures cold start (process start -> every ClusterIP in the kernel, polled from the
# kernel; median of 3), one endpoint change and one Service added (the API server's answer
# to the write -> rule in the kernel; median of 3), a
# full resync (a restart, from each proxy's own full-sync metric), peak RSS and CPU
# seconds; and new-connection latency through a ClusterIP at 100 and 30k Services.
#
#   testbed/versus.sh [SCENARIO...]     # default: 1000x2 10000x2 44000x1 5000x50 100x1 30000x1
#
#   KPROXY_VERSUS_TIMEOUT=1200     give up on a cold start after this many seconds
#   KPROXY_VERSUS_PROXIES="upstream kproxy"
#   KPROXY_VERSUS_COLD_SAMPLES=3   cold starts per proxy and scenario (each on a fresh node)
#   KPROXY_VERSUS_SAMPLES=3        samples of each change
#   KPROXY_VERSUS_BASELINE=REV     also runs kproxy built at git revision REV ("baseline"),
#                                  scenario by scenario in the same run, and reports it
#                                  against this tree (baseline ÷ this) in its own section;
#                                  with KPROXY_VERSUS_PROXIES="baseline kproxy" upstream is
#                                  skipped and the upstream section of the docs is kept
#
# Results: target/versus/results.tsv; the table goes into docs/benchmarks.md and the
# chart into docs/versus.svg (testbed/lib/versus-report.py). Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh >/dev/null
export KPROXY_TESTBED_BIN=${KPROXY_TESTBED_BIN:-$(testbed/build.sh)}
cargo build -q --release -p kproxy
export KPROXY=$PWD/target/release/kproxy
if [[ -n ${KPROXY_VERSUS_BASELINE:-} ]]; then
    # Built from its own worktree, into its own target directory, as benches/nft.sh does.
    rev=$(git rev-parse --short "$KPROXY_VERSUS_BASELINE")
    tree=target/versus-baseline/$rev
    [[ -d $tree ]] || git worktree add -q --detach "$tree" "$rev"
    echo "versus: building kproxy at $rev..." >&2
    (cd "$tree" && CARGO_TARGET_DIR="$PWD/../target-$rev" cargo build -q --release -p kproxy)
    export KPROXY_BASELINE=$PWD/target/versus-baseline/target-$rev/release/kproxy
    export KPROXY_VERSUS_BASELINE_REV=$rev
    export KPROXY_VERSUS_PROXIES=${KPROXY_VERSUS_PROXIES:-upstream baseline kproxy}
fi
scenarios=("$@")
((${#scenarios[@]})) || scenarios=(1000x2 10000x2 44000x1 5000x50 100x1 30000x1)
mkdir -p target/versus
results=$PWD/target/versus/results.tsv
: >"$results"
state=$(mktemp -d /tmp/kproxy-versus.XXXXXX)
trap 'cp "$state"/*.log target/versus/ 2>/dev/null; rm -rf "$state"' EXIT
started=$(date -u +%Y-%m-%dT%H:%MZ)
# As root, private network and mount namespaces without a user namespace: inside a user
# namespace the kernel refuses SO_SNDBUFFORCE, and upstream's nft then fails every
# transaction over the default socket buffer ("Message too long") and retries every 30 s
# forever, which would measure the sandbox rather than kube-proxy.
if (($(id -u) == 0)); then
    sandbox=(unshare -nm)
else
    echo "versus: not root; in a user namespace upstream kube-proxy fails big transactions" >&2
    sandbox=(unshare -rnm)
fi
"${sandbox[@]}" testbed/lib/versus-in-netns.sh "$state" "$results" "${scenarios[@]}"
command="testbed/versus.sh ${scenarios[*]}"
[[ -z ${KPROXY_VERSUS_BASELINE:-} ]] ||
    command="KPROXY_VERSUS_BASELINE=$KPROXY_VERSUS_BASELINE KPROXY_VERSUS_PROXIES=\"$KPROXY_VERSUS_PROXIES\" $command"
python3 testbed/lib/versus-report.py "$results" docs/benchmarks.md docs/versus.svg "$command" "$started"
