#!/usr/bin/env bash
# kproxy end to end against a real kube-apiserver (testbed/build.sh builds it), with pods
# wired by the CNI reference plugins. Everything runs in a private user, network and
# mount namespace: the API server, etcd and kproxy listen on that namespace's loopback,
# and the host's network is never touched.
#
#   testbed/e2e.sh            # builds what is missing, then runs testbed/lib/e2e-in-netns.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export KPROXY_TESTBED_BIN=${KPROXY_TESTBED_BIN:-$(testbed/build.sh)}
cargo build -q -p kproxy
export KPROXY=${KPROXY:-$PWD/target/debug/kproxy}
state=$(mktemp -d /tmp/kproxy-e2e.XXXXXX)
trap 'rm -rf "$state"' EXIT
unshare -rnm testbed/lib/e2e-in-netns.sh "$state"
