#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests need, builds,
# checks formatting and lints, runs the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never

need_apt=()
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
    else
        echo "missing packages: ${need_apt[*]} (install them, or run as root)" >&2
        exit 1
    fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
