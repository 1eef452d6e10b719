#!/usr/bin/env bash
# Builds `proxy` with profile-guided optimisation, for deployment:
#
#   bash scripts/build-pgo.sh        # prints the path of the binary
#
# An instrumented build serves a training load (bench/pgo-train.cfg:
# plain proxying, a native `return`, a Lua action, fetch, converter and
# service) under wrk; the profile it records then guides the final build,
# which lays out the hot code of hyper, tokio and the proxy together. On
# the anchor's s1 this takes user CPU per request from about 4.9 µs (the
# release build) to 3.8 µs (bench/README.md). Two release builds with
# whole-program LTO: about 17 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PATH="$HOME/.cargo/bin:$PATH"
# The profile's format is LLVM's: merge it with the llvm-profdata of the
# LLVM that rustc is built on.
LLVM_MAJOR=$(rustc -vV | awk '/^LLVM version:/ { split($3, v, "."); print v[1] }')
PROFDATA="llvm-profdata-$LLVM_MAJOR"
# What the Lua guest's build needs (as scripts/test-all.sh), then the load
# generator and the profile merger.
need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
command -v clang-22 >/dev/null || need_apt+=(clang-22)
command -v llvm-ar-22 >/dev/null || need_apt+=(llvm-22)
[ -d /usr/include/wasm32-wasi ] || need_apt+=(wasi-libc)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v "$PROFDATA" >/dev/null || need_apt+=("llvm-$LLVM_MAJOR")
source scripts/apt-install.sh
apt_install "${need_apt[@]}"

bash scripts/build-guests.sh
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export MOONBOX_LUA_GUEST="$TARGET_DIR/wasm32-wasip2/release/moonbox_lua.wasm"
PGO="$TARGET_DIR/pgo"
HOST=$(rustc -vV | awk '/^host:/ { print $2 }')
# With --target, RUSTFLAGS reach the proxy's code and not build scripts.
build() {
    RUSTFLAGS="$1" CARGO_TARGET_DIR="$PGO/$2" \
        cargo build --release --locked --target "$HOST" --bin proxy
}

rm -rf "$PGO/profiles"
mkdir -p "$PGO/profiles"
build "-Cprofile-generate=$PGO/profiles" instrumented

"$PGO/instrumented/$HOST/release/proxy" -q -f bench/pgo-train.cfg &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.0.1:19181/ && break
    sleep 0.2
done
for port in 19181 19182 19183 19184 19185 19180; do
    wrk -t1 -c50 -d4s -H "x-raw: a b/c?d=e&f" "http://127.0.0.1:$port/" | grep -E "Requests/sec|Non-2xx" |
        sed "s/^/port $port: /"
done
# The profile is written when the process exits.
kill -TERM "$pid"
wait "$pid"
trap - EXIT
"$PROFDATA" merge -o "$PGO/merged.profdata" "$PGO"/profiles/*.profraw

build "-Cprofile-use=$PGO/merged.profdata -Cllvm-args=-pgo-warn-missing-function=false" optimised
cp "$PGO/optimised/$HOST/release/proxy" "$PGO/proxy"
echo "$PGO/proxy"
