#!/usr/bin/env bash
# Runs kproxy's core on the bundled example cluster (examples/cluster) through the
# embedding example, which prints the full sync and then an incremental one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo run -q -p proxy-core --features manifests --example print_backend -- examples/cluster
