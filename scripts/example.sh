#!/usr/bin/env bash
# Runs kproxy's main job on the bundled example cluster (examples/cluster), for real:
# inside a throwaway network namespace it builds a node with two pods on a bridge and an
# external client, starts a tiny server in each pod, runs `kproxy sync`, and shows traffic
# being balanced. Nothing outside that namespace is touched; it is gone when this exits.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build -q -p kproxy
exec unshare -rnm -- bash scripts/lib/example-in-netns.sh
