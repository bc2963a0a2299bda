#!/usr/bin/env bash
# Runs kproxy's whole test suite: lints, unit, table and property tests, kernel and packet
# tests, a bounded fuzzing run (fuzz/run.sh), examples, the IPVS and old-kernel tests in a
# Debian VM (testbed/vm/run.sh), the e2e against a real kube-apiserver (built once by testbed/build.sh), and, as root, the
# node test: kproxy's image under a real kubelet and containerd (testbed/node/e2e.sh).
# Installs what it needs first (scripts/deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
echo "== tests"
cargo test --workspace --all-features
echo "== fuzz: each parser of outside input for 30 s with libFuzzer (fuzz/run.sh)"
fuzz/run.sh 30
echo "== embedding example"
cargo run -q -p proxy-core --features manifests --example print_backend -- examples/cluster >/dev/null
echo "== VM: IPVS and the nftables packet tests on Debian 12's kernel 6.1, in qemu (testbed/vm/)"
testbed/vm/run.sh
echo "== e2e: kproxy against a real kube-apiserver, pods wired by CNI (testbed/)"
testbed/e2e.sh
echo "== node: kproxy as a DaemonSet pod under kubelet and containerd, and the migration from kube-proxy (testbed/node/)"
if [[ $(id -u) == 0 ]]; then
    testbed/node/e2e.sh
else
    echo "node: needs root (kubelet and containerd); run scripts/test.sh as root to include it" >&2
fi
echo "all tests passed"
