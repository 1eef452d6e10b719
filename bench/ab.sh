#!/usr/bin/env bash
# Compares proxy binaries on the anchor's s1 (plain proxying), alternating
# them round by round so that a busy machine weighs on each alike:
#
#   bash bench/ab.sh /tmp/proxy-before target/release/proxy
#
# Needs nginx and wrk (the anchor's run.sh installs them). Prints req/s and
# the 99th percentile of each 6 s run, after a 2 s warm-up.
set -u
ANCHOR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../shared/bench/haproxy-anchor" && pwd)"
RUN="${RUN:-/tmp/moonbox-ab}"
ROUNDS="${ROUNDS:-3}"
mkdir -p "$RUN/tmp"
nginx -p "$RUN/" -e "$RUN/nginx-error.log" -c "$ANCHOR/nginx.conf" &
NGINX=$!
trap 'kill $NGINX 2>/dev/null; wait $NGINX 2>/dev/null' EXIT
sleep 1
for round in $(seq "$ROUNDS"); do
    for bin in "$@"; do
        ANCHOR_DIR="$ANCHOR" HAP_THREADS=1 "$bin" -q -f "$ANCHOR/haproxy.cfg" >"$RUN/proxy.log" 2>&1 &
        pid=$!
        for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18101/ && break; sleep 0.1; done
        wrk -t1 -c50 -d2s http://127.0.0.1:18101/ >/dev/null
        r=$(wrk -t1 -c50 -d6s --latency http://127.0.0.1:18101/ | grep -E "Requests/sec| 99%" | tr -s ' ' | paste -sd' ')
        echo "round $round  $bin  $r"
        kill "$pid"
        wait "$pid" 2>/dev/null
    done
done
