#!/usr/bin/env bash
# Applies synthetic clusters to a real kernel through kproxy's nftables backend, in a
# throwaway network namespace per size, and prints a Markdown table.
#
#   benches/nft.sh                 # the sizes of issue 3
#   benches/nft.sh 1000x2 5000x50  # chosen sizes
#   benches/nft.sh 1000x10:maglev  # every Service with Maglev tables
#   benches/nft.sh 10x100x400:maglev
#                                  # SERVICESxENDPOINTSxPORTS: Services with 400 ports
#   KPROXY_NFT_CHANGES=N benches/nft.sh ...
#                                  # N partial syncs per kind of change (100)
#   KPROXY_NFT_BASELINE=REV benches/nft.sh ...
#                                  # also runs git revision REV's backend, size by size in
#                                  # the same run, and prints both with their ratio
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

baseline=${KPROXY_NFT_BASELINE:-}
if [ -n "$baseline" ]; then
  # The baseline is built from its own worktree, into its own target directory.
  rev=$(git rev-parse --short "$baseline")
  tree=target/nft-baseline/$rev
  [ -d "$tree" ] || git worktree add -q --detach "$tree" "$rev"
  echo "building baseline $rev..." >&2
  (cd "$tree" && CARGO_TARGET_DIR="$PWD/../target-$rev" cargo build -q --release -p kproxy-benches --example nft_sync)
  base_bin=target/nft-baseline/target-$rev/release/examples/nft_sync
fi

run() { # BIN SERVICES ENDPOINTS PORTS [maglev] -> key=value line
  local ports=; [ "$4" != 1 ] && ports=ports=$4
  unshare $ns -- "$1" "$2" "$3" "${KPROXY_NFT_CHANGES:-100}" ${5:-} $ports
}
row() { # LABEL LINE
  declare -A v=()
  for kv in $2; do v[${kv%%=*}]=${kv#*=}; done
  printf '| %s | %s | %s msgs, %s KiB | %s | %s / %s | %s / %s | %s / %s | %s | %s | %s |\n' \
    "$1" "${v[cold_full_ms]}" "${v[cold_messages]}" "$(( ${v[cold_bytes]} / 1024 ))" "${v[resync_ms]}" \
    "${v[endpoint_change_p50_ms]}" "${v[endpoint_change_p99_ms]}" "${v[service_change_p50_ms]}" \
    "${v[service_change_p99_ms]}" "${v[drift_detect_p50_ms]:-–}" "${v[drift_detect_p99_ms]:-–}" "${v[peak_rss_mib]}" \
    "${v[elements]:-–}" "${v[kernel_mib]:-–}"
}
ratio() { # KEY BASE NEW -> baseline ÷ this
  local b n
  b=$(tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"); n=$(tr ' ' '\n' <<<"$3" | sed -n "s/^$1=//p")
  awk -v b="$b" -v n="$n" 'BEGIN { if (n > 0) printf "%.1f×", b / n; else printf "–" }'
}

echo "| services × endpoints | cold full sync (ms) | transaction | full resync (ms) | one endpoint change p50 / p99 (ms) | one service added p50 / p99 (ms) | drift detected p50 / p99 (ms) | peak RSS (MiB) | elements | kernel slab (MiB) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for size in "${sizes[@]}"; do
  mode=; [ "${size%:maglev}" != "$size" ] && mode=maglev
  size=${size%:maglev}
  IFS=x read -r s e p <<<"$size"
  p=${p:-1}
  label="$s × $e"; [ "$p" != 1 ] && label="$label × $p ports"
  label="$label${mode:+, Maglev}"
  echo "running $size $mode..." >&2
  line=$(run "$bin" "$s" "$e" "$p" $mode)
  if [ -z "$baseline" ]; then
    row "$label" "$line"
    continue
  fi
  base=$(run "$base_bin" "$s" "$e" "$p" $mode)
  row "$label, baseline $rev" "$base"
  row "$label, this tree" "$line"
  printf '| %s, baseline ÷ this | %s | | %s | %s | %s | | %s | | |\n' "$label" \
    "$(ratio cold_full_ms "$base" "$line")" "$(ratio resync_ms "$base" "$line")" \
    "$(ratio endpoint_change_p50_ms "$base" "$line")" "$(ratio service_change_p50_ms "$base" "$line")" \
    "$(ratio peak_rss_mib "$base" "$line")"
done
