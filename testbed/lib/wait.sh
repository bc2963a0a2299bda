# Timing helpers shared by the test bed's harnesses (sourced).
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# Waits until COMMAND succeeds, up to SECONDS, polling every $WAIT_POLL seconds (5 ms by
# default); prints the milliseconds it took.
wait_for() { # SECONDS COMMAND...
    local deadline=$(($(now_ms) + $1 * 1000)) start
    start=$(now_ms)
    shift
    until "$@"; do
        (($(now_ms) < deadline)) || return 1
        sleep "${WAIT_POLL:-0.005}"
    done
    echo $(($(now_ms) - start))
}
