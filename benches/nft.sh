#!/usr/bin/env bash
# Applies synthetic clusters to a real kernel through kproxy's nftables backend, in a
# throwaway network namespace per size, and prints a Markdown table.
#
#   benches/nft.sh                 # the sizes of issue 3
#   benches/nft.sh 1000x2 5000x50  # chosen sizes
#
# Needs root for batches above net.core.wmem_max (a few hundred KB): as root it uses a
# plain network namespace (unshare -n); otherwise a user namespace (unshare -rn).
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000x1 1000x2 10000x1 10000x2 44000x1 44000x2 5000x50)
cargo build -q --release -p kproxy-benches --example nft_sync
bin=target/release/examples/nft_sync
ns=-rn; [ "$(id -u)" = 0 ] && ns=-n
echo "| services × endpoints | cold full sync (ms) | transaction | full resync (ms) | one endpoint change p50 / p99 (ms) | one service added p50 / p99 (ms) | peak RSS (MiB) |"
echo "|---|---|---|---|---|---|---|"
for size in "${sizes[@]}"; do
  s=${size%x*} e=${size#*x}
  echo "running $size..." >&2
  line=$(unshare $ns -- "$bin" "$s" "$e" 100)
  declare -A v=()
  for kv in $line; do v[${kv%%=*}]=${kv#*=}; done
  printf '| %s × %s | %s | %s msgs, %s KiB | %s | %s / %s | %s / %s | %s |\n' \
    "$s" "$e" "${v[cold_full_ms]}" "${v[cold_messages]}" "$(( ${v[cold_bytes]} / 1024 ))" "${v[resync_ms]}" \
    "${v[endpoint_change_p50_ms]}" "${v[endpoint_change_p99_ms]}" "${v[service_change_p50_ms]}" "${v[service_change_p99_ms]}" \
    "${v[peak_rss_mib]}"
done
