//! Builds the Lua guest (guests/lua: Lua 5.4 and HAProxy's Lua API as a Wasm
//! component) so that the `proxy` binary carries it. `$MOONBOX_LUA_GUEST`
//! names an already built one instead. Without the toolchain it needs
//! (rustup's wasm32-wasip2 target, clang-22, llvm-22, wasi-libc), the proxy
//! is built without Lua and `lua-load` says so.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for p in [
        "guests/lua",
        "guests/sdk",
        "guests/Cargo.lock",
        "lua",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=MOONBOX_LUA_GUEST");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join("moonbox_lua.wasm");

    if let Some(prebuilt) = std::env::var_os("MOONBOX_LUA_GUEST") {
        println!("cargo:rerun-if-changed={}", Path::new(&prebuilt).display());
        std::fs::copy(&prebuilt, &out).unwrap_or_else(|e| {
            panic!("MOONBOX_LUA_GUEST={}: {e}", Path::new(&prebuilt).display())
        });
        return;
    }

    let target_dir = out_dir.join("guests-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--locked", "-p", "moonbox-lua"])
        .current_dir("guests")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status();
    let built = target_dir.join("wasm32-wasip2/release/moonbox_lua.wasm");
    match status {
        Ok(s) if s.success() && built.is_file() => {
            std::fs::copy(&built, &out).expect("copy the Lua guest");
        }
        _ => {
            println!(
                "cargo:warning=the Lua guest could not be built (see scripts/build-guests.sh for what it needs); this proxy will refuse lua-load"
            );
            std::fs::write(&out, []).expect("write an empty Lua guest");
        }
    }
}
