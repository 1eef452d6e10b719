//! Builds the setjmp/longjmp runtime Lua's error handling needs on wasm32
//! (Wasm exceptions) and an empty stand-in for the emulated-signal library
//! lua-src links on WASI.

fn main() {
    println!("cargo:rerun-if-changed=wasm-sjlj");
    let target = std::env::var("TARGET").unwrap_or_default();
    if !target.starts_with("wasm32") {
        return;
    }
    // Lua's C code recurses (the parser, pcall chains): 1 MiB of stack, not
    // the 128 KiB the other guests link with.
    println!("cargo:rustc-link-arg=-zstack-size=1048576");
    cc::Build::new()
        .file("wasm-sjlj/rt.c")
        .flag("-mexception-handling")
        .compile("setjmp");
    cc::Build::new()
        .file("wasm-sjlj/no_signal.c")
        .compile("wasi-emulated-signal");
}
