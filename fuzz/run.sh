#!/usr/bin/env bash
# Fuzzes kproxy's parsers of outside input with libFuzzer (cargo-fuzz, on the nightly
# toolchain, both installed here when missing): each target for SECONDS (default 30), from
# its committed corpus (fuzz/corpus/TARGET) and what earlier runs found (fuzz/grown/,
# not committed). Prints a Markdown row per target: executions and coverage (libFuzzer's
# `cov`, the code edges reached). Stops at the first crash, with the input left in
# fuzz/artifacts/TARGET/: make it a regression test, fix it, run again.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#   fuzz/run.sh --minimize      # folds fuzz/grown/ into fuzz/corpus/ (cargo fuzz cmin), to commit
#
# The build is cached outside the tree (~/.cache/kproxy-fuzz), as the test bed's is.
set -euo pipefail
cd "$(dirname "$0")"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
target_dir=${KPROXY_FUZZ_TARGET:-$HOME/.cache/kproxy-fuzz/target}
fuzz=(cargo +nightly fuzz)
"${fuzz[@]}" build -O --target-dir "$target_dir" >/dev/null 2>&1 || "${fuzz[@]}" build -O --target-dir "$target_dir"

if [ "${1:-}" = --minimize ]; then
  for t in $("${fuzz[@]}" list); do
    mkdir -p grown/$t && cp -n grown/$t/* corpus/$t/ 2>/dev/null || true
    "${fuzz[@]}" cmin -O --target-dir "$target_dir" "$t" "corpus/$t" >/dev/null 2>&1
    echo "$t: $(ls corpus/$t | wc -l) inputs"
  done
  exit 0
fi

seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("${fuzz[@]}" list)
echo "| target | seconds | executions | coverage (edges) | corpus |"
echo "|---|---|---|---|---|"
for t in "${targets[@]}"; do
  mkdir -p "grown/$t"
  log=$(mktemp)
  if ! "${fuzz[@]}" run -O --target-dir "$target_dir" "$t" "grown/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $t failed; its input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '| %s | %s | %s | %s | %s |\n' "$t" "$seconds" "$execs" "$cov" "$corpus"
  rm -f "$log"
done
