#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, builds,
# checks formatting and lints, runs the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
# The Lua guest's C toolchain (see guests/lua): clang-22 and llvm-ar-22 from
# Debian (bookworm-security), the wasi-libc headers.
command -v clang-22 >/dev/null || need_apt+=(clang-22)
command -v llvm-ar-22 >/dev/null || need_apt+=(llvm-22)
[ -d /usr/include/wasm32-wasi ] || need_apt+=(wasi-libc)
# Differential tests run the same Lua scripts under Debian's HAProxy.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
source scripts/apt-install.sh
apt_install "${need_apt[@]}"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# The Wasm guests the tests load (guests/, a separate workspace); the proxy
# embeds the Lua guest built here.
bash scripts/build-guests.sh
export MOONBOX_LUA_GUEST="${CARGO_TARGET_DIR:-$PWD/target}/wasm32-wasip2/release/moonbox_lua.wasm"
(cd guests && cargo fmt --all -- --check)
(cd guests && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}" cargo clippy --release --locked -- -D warnings)

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
