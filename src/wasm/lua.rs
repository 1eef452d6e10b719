//! `lua-load`: HAProxy Lua scripts, run by the Lua guest (guests/lua, Lua
//! 5.4 with HAProxy's Lua API) that is embedded in this binary. The scripts
//! of a configuration share one extension, namespace `lua`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::io::AllowRule;
use super::{Settings, WasmExtension};
use crate::config::model::{Global, Isolation, OnError};
use crate::sample::map::MapStore;

/// The Lua guest, built by build.rs from guests/lua (empty when the build
/// machine could not build it).
static LUA_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/moonbox_lua.wasm"));

/// Whether this binary carries the Lua guest.
pub fn available() -> bool {
    !LUA_GUEST.is_empty()
}

/// Memory of a Lua instance beyond `tune.lua.maxmem` (the interpreter and
/// the API layer).
const OVERHEAD: u64 = 32 << 20;
/// Lua's memory when `tune.lua.maxmem` is 0 (HAProxy: unlimited).
const DEFAULT_LUA_MEMORY: u64 = 96 << 20;

fn tune_ms(g: &Global, name: &str, default: Duration) -> anyhow::Result<Duration> {
    match g.tune(name) {
        None => Ok(default),
        Some(v) => crate::config::parser::parse_time(v)
            .map_err(anyhow::Error::msg)
            .with_context(|| name.to_string()),
    }
}

/// The settings of the Lua extension of a configuration, or `None` when it
/// loads no Lua.
pub fn settings(
    g: &Global,
    workers: usize,
    maps: Option<Arc<MapStore>>,
) -> anyhow::Result<Option<Settings>> {
    if g.lua_loads.is_empty() {
        return Ok(None);
    }
    if !available() {
        bail!(
            "this proxy was built without the Lua guest; install clang-22, llvm-22 and wasi-libc, then rebuild"
        );
    }
    let mut args = Vec::new();
    let mut preopens: Vec<PathBuf> = Vec::new();
    let mut add_dir = |d: &Path| {
        if !preopens.iter().any(|p| p == d) {
            preopens.push(d.to_path_buf());
        }
    };
    for l in &g.lua_loads {
        let file = std::fs::canonicalize(&l.file)
            .with_context(|| format!("{}: cannot open", l.file.display()))?;
        if let Some(dir) = file.parent() {
            add_dir(dir);
        }
        args.push(format!("load={}", file.display()));
        for a in &l.args {
            args.push(format!("arg={a}"));
        }
    }
    for (path, kind) in &g.lua_prepend_path {
        if kind == "path" {
            args.push(format!("path={path}"));
            // The folder of the pattern (`/opt/lua/?.lua` -> `/opt/lua`).
            let dir = Path::new(path)
                .ancestors()
                .find(|a| !a.as_os_str().is_empty() && !a.to_string_lossy().contains('?'))
                .map(Path::to_path_buf);
            if let Some(d) = dir.and_then(|d| std::fs::canonicalize(d).ok()) {
                add_dir(&d);
            }
        }
    }
    for d in &g.lua_allow_read {
        let d = std::fs::canonicalize(d)
            .with_context(|| format!("lua-allow-read: {}: cannot open", d.display()))?;
        add_dir(&d);
    }
    let session = tune_ms(g, "tune.lua.session-timeout", Duration::from_secs(4))?;
    let service = tune_ms(g, "tune.lua.service-timeout", Duration::from_secs(4))?;
    let task = tune_ms(g, "tune.lua.task-timeout", Duration::from_secs(4))?;
    let burst = tune_ms(g, "tune.lua.burst-timeout", Duration::from_secs(1))?;
    for (name, d) in [
        ("session-timeout", session),
        ("service-timeout", service),
        ("task-timeout", task),
        ("burst-timeout", burst),
    ] {
        args.push(format!("{name}={}", d.as_millis()));
    }
    if let Some(v) = g.tune("tune.lua.forced-yield") {
        args.push(format!("forced-yield={v}"));
    }
    // In megabytes, as HAProxy counts it; 0 is unlimited.
    let maxmem = match g.tune("tune.lua.maxmem") {
        Some(v) => v
            .parse::<u64>()
            .map(|mb| mb << 20)
            .map_err(|_| anyhow::anyhow!("tune.lua.maxmem: '{v}' is not a number of megabytes"))?,
        None => 0,
    };
    args.push(format!("maxmem={maxmem}"));
    args.push(format!("nbthread={workers}"));
    if let Some(v) = g.tune("tune.lua.bool-sample-conversion") {
        args.push(format!("bool-sample-conversion={v}"));
    }
    if let Some(v) = g.tune("httpclient.ssl.verify") {
        args.push(format!("httpclient-verify={v}"));
    }
    let lua_memory = if maxmem == 0 {
        DEFAULT_LUA_MEMORY
    } else {
        maxmem
    };
    // The process environment, then `setenv`, as `os.getenv` sees it in
    // HAProxy.
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    for (k, v) in &g.setenv {
        env.retain(|(n, _)| n != k);
        env.push((k.clone(), v.clone()));
    }
    let per_thread = g.lua_loads.iter().any(|l| l.per_thread);
    let soft = session.max(service).max(task).max(burst);
    // `core.thread`: 0 in the shared state, 1..n per thread.
    let thread_arg: fn(usize) -> String = if per_thread {
        |slot| format!("thread={}", slot + 1)
    } else {
        |_| "thread=0".to_string()
    };
    Ok(Some(Settings {
        namespace: "lua".into(),
        // The guest's instruction hook enforces HAProxy's timeouts; fuel
        // and the per-call deadline are the backstop behind it.
        fuel: u64::MAX / 4,
        timeout: Duration::from_secs(3600),
        per_call: soft + Duration::from_secs(1),
        memory: (lua_memory + OVERHEAD).min(super::engine::MAX_MEMORY),
        instances: if per_thread { workers.max(1) } else { 1 },
        isolation: Isolation::Pooled,
        on_error: OnError::Continue,
        // HAProxy scripts connect where they like.
        allow_connect: vec![AllowRule::parse("*").map_err(anyhow::Error::msg)?],
        args,
        preopens,
        env,
        slot_arg: Some(thread_arg),
        // A task sees the globals that actions see, as in HAProxy.
        tasks_share: true,
        maps,
    }))
}

/// Loads the Lua extension of a configuration.
pub fn load(settings: Settings) -> anyhow::Result<WasmExtension> {
    WasmExtension::from_bytes(LUA_GUEST, Path::new("<lua guest>"), settings)
}
