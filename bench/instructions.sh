#!/usr/bin/env bash
# User-space instructions per proxied request (valgrind's callgrind) on a
# plain-proxy configuration like the anchor's s1:
#
#   bash bench/instructions.sh /usr/sbin/haproxy target/release/proxy
#
# Counts, not seconds: they move by a few percent between runs of the same
# binary, whatever else the machine does. The anchor's own config loads Lua, whose Wasm engine
# reserves more address space than valgrind allows, so bench/moonbox-s1.cfg
# is used. Each binary serves 3 s of warm-up, then is measured for 5 s.
# CACHE=1 also simulates the caches and prints first-level misses per
# request (instruction reads, data reads, data writes).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/lib.sh"
RUN="${RUN:-/tmp/moonbox-instructions}"
start_nginx "$RUN"
for bin in "$@"; do
    out="$RUN/callgrind.$(basename "$bin")"
    rm -f "$out".*
    sim=()
    [ "${CACHE:-0}" = 1 ] && sim=(--cache-sim=yes)
    HAP_THREADS=1 valgrind --tool=callgrind "${sim[@]}" --callgrind-out-file="$out.%p" "$bin" -q -f "$HERE/moonbox-s1.cfg" >"$RUN/proxy.log" 2>&1 &
    pid=$!
    # Slow to start under valgrind.
    wait_for http://127.0.0.1:18101/ 150
    wrk -t1 -c50 -d3s http://127.0.0.1:18101/ >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    reqs=$(wrk -t1 -c50 -d5s http://127.0.0.1:18101/ | awk '/requests in/{print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    dump=$(ls -t "$out.$pid".* | head -1)
    ir=$(awk '/^summary:/{print $2}' "$dump")
    echo "$bin: $reqs requests, $((ir / reqs)) instructions per request ($dump)"
    if [ "${CACHE:-0}" = 1 ]; then
        awk -v n="$reqs" '/^summary:/ {
            printf "  L1 misses per request: instructions %d, data reads %d, data writes %d\n", $5 / n, $6 / n, $7 / n }' "$dump"
    fi
    kill "$pid"
    wait "$pid" 2>/dev/null
done
