#!/usr/bin/env bash
# Runs kproxy's whole test suite: lints, unit, table and property tests, examples.
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
echo "== embedding example"
cargo run -q -p proxy-core --features manifests --example print_backend -- examples/cluster >/dev/null
echo "all tests passed"
