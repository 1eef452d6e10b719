# Sourced by the bench scripts: the anchor's directory, its nginx upstream,
# and waiting for a proxy to answer.
ANCHOR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../shared/bench/haproxy-anchor" && pwd)"

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/apt-install.sh"

# start_nginx DIR: the anchor's nginx on :18080, run from DIR, stopped when
# the script exits. Installs nginx and wrk where they are missing: without
# the upstream every proxy would only measure its 503s.
start_nginx() {
    local need=()
    command -v nginx >/dev/null || need+=(nginx)
    command -v wrk >/dev/null || need+=(wrk)
    apt_install "${need[@]}"
    mkdir -p "$1/tmp"
    nginx -p "$1/" -e "$1/nginx-error.log" -c "$ANCHOR/nginx.conf" &
    NGINX=$!
    trap 'kill $NGINX 2>/dev/null; wait $NGINX 2>/dev/null' EXIT
    sleep 1
}

# wait_for URL [TRIES]: until URL answers, trying every 0.2 s (50 times).
wait_for() {
    for _ in $(seq "${2:-50}"); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.2
    done
    return 1
}
