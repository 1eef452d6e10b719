#!/usr/bin/env bash
# Builds the Wasm guests (guests/: the SDK, the example and test guests) into
# $CARGO_TARGET_DIR/wasm32-wasip2/release (default target/), where the
# example configurations and the tests find them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
cd guests
CARGO_TARGET_DIR="$target_dir" cargo build --release --locked "$@"
