#!/usr/bin/env bash
# Stops the processes testbed/up.sh started (by the PIDs it recorded), and only those:
# the newest first, so kube-apiserver goes before etcd. A process still running 10 s
# after SIGTERM gets SIGKILL.
#
#   testbed/down.sh STATE_DIR [NAME]   # NAME: stop only that one (e.g. kube-apiserver)
set -uo pipefail
state=${1:?usage: down.sh STATE_DIR [NAME]}
[[ -f $state/pids ]] || exit 0
mapfile -t entries < <(tac "$state/pids")
for entry in "${entries[@]}"; do
    read -r name pid <<<"$entry"
    [[ -n ${2:-} && $name != "$2" ]] && continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
done
if [[ -n ${2:-} ]]; then
    grep -v "^$2 " "$state/pids" > "$state/pids.new"
    mv "$state/pids.new" "$state/pids"
else
    rm -f "$state/pids"
fi
