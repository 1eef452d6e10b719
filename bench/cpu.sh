#!/usr/bin/env bash
# Compares proxy binaries on the anchor's s1 (plain proxying), alternating
# them round by round so that a busy machine weighs on each alike:
#
#   bash bench/cpu.sh /usr/sbin/haproxy target/release/proxy
#
# Prints each 6 s run's req/s and p99 (after a 2 s warm-up), and the
# proxy's user and system CPU time per request, from /proc/PID/stat: less
# noisy than req/s on a shared machine, as what a proxy spends per request
# does not depend on how much of the machine it got. CFG names another
# configuration with s1 on port 18101 (default: the anchor's).
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUN="${RUN:-/tmp/moonbox-cpu}"
ROUNDS="${ROUNDS:-3}"
CFG="${CFG:-$ANCHOR/haproxy.cfg}"
start_nginx "$RUN"
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15, $14, $15}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        ANCHOR_DIR="$ANCHOR" HAP_THREADS=1 "$bin" -q -f "$CFG" >"$RUN/proxy.log" 2>&1 &
        pid=$!
        wait_for http://127.0.0.1:18101/
        wrk -t1 -c50 -d2s http://127.0.0.1:18101/ >/dev/null
        read -r _ u0 s0 < <(cpu "$pid")
        out=$(wrk -t1 -c50 -d6s --latency http://127.0.0.1:18101/)
        read -r _ u1 s1 < <(cpu "$pid")
        reqs=$(echo "$out" | awk '/requests in/{print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
        p99=$(echo "$out" | awk '$1=="99%"{print $2}')
        awk -v r="$round" -v b="$bin" -v n="$reqs" -v rps="$rps" -v p99="$p99" \
            -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$TCK" 'BEGIN {
            us = 1e6 / t / n
            printf "round %s  %-28s %9.0f req/s  p99 %-7s user %.2f us  sys %.2f us  total %.2f us per request\n",
                r, b, rps, p99, u * us, s * us, (u + s) * us }'
        kill "$pid"
        wait "$pid" 2>/dev/null
    done
done
