#!/usr/bin/env bash
# CPU time per proxied request on the anchor's s1 (plain proxying), user and
# system, from /proc/PID/stat, alternating the binaries round by round:
#
#   bash bench/cpu.sh /usr/sbin/haproxy target/release/proxy
#
# Less noisy than req/s on a shared machine: what the proxy spends per
# request does not depend on how much of the machine it got. Needs nginx
# and wrk (the anchor's run.sh installs them).
set -u
ANCHOR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../shared/bench/haproxy-anchor" && pwd)"
RUN="${RUN:-/tmp/moonbox-cpu}"
ROUNDS="${ROUNDS:-3}"
mkdir -p "$RUN/tmp"
nginx -p "$RUN/" -e "$RUN/nginx-error.log" -c "$ANCHOR/nginx.conf" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null; wait $NGINX 2>/dev/null' EXIT
sleep 1
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15, $14, $15}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        ANCHOR_DIR="$ANCHOR" HAP_THREADS=1 "$bin" -q -f "$ANCHOR/haproxy.cfg" >"$RUN/proxy.log" 2>&1 &
        pid=$!
        for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18101/ && break; sleep 0.1; done
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
