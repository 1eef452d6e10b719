//! The one wasmtime engine of the process: Cranelift, fuel, epoch
//! interruption, the pooling allocator, and the on-disk cache of compiled
//! components.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Ticks without a guest call after which the epoch thread sleeps until
/// the next call: an idle proxy, or one whose traffic calls no extension,
/// is not woken every tick.
const IDLE_TICKS: u32 = 50;

/// The epoch thread's view of guest calls.
struct Ticker {
    /// Guest calls under way (each one's deadline counts in ticks).
    calls: AtomicUsize,
    /// The epoch thread is pausing, or paused.
    paused: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

static TICKER: Ticker = Ticker {
    calls: AtomicUsize::new(0),
    paused: AtomicBool::new(false),
    thread: OnceLock::new(),
};

impl Ticker {
    /// Sleeps until a call starts. A call counted before `paused` is set
    /// is seen here; one counted after sees `paused` and wakes the thread
    /// (an unpark that comes first makes the park return at once).
    fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        while self.calls.load(Ordering::SeqCst) == 0 {
            std::thread::park();
        }
        self.paused.store(false, Ordering::SeqCst);
    }
}

/// A guest call under way: the epoch advances while one is held.
pub struct Running(());

/// Marks the start of a guest call, waking the epoch thread if it paused.
pub fn running() -> Running {
    TICKER.calls.fetch_add(1, Ordering::SeqCst);
    if TICKER.paused.load(Ordering::SeqCst)
        && let Some(t) = TICKER.thread.get()
    {
        t.unpark();
    }
    Running(())
}

impl Drop for Running {
    fn drop(&mut self) {
        TICKER.calls.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The largest linear memory any extension may have (`ext-load ... memory`).
pub const MAX_MEMORY: u64 = 1 << 30;

/// Instances of all extensions alive at once (pooled, per-request and the
/// spares being initialised). Past it, instantiation fails with a clear
/// error and the invocation gets its extension point's failure policy.
pub const MAX_INSTANCES: u32 = 512;

/// The shared engine and where compiled components are cached.
pub struct Runtime {
    pub engine: Engine,
    cache_dir: Option<PathBuf>,
}

static RUNTIME: OnceLock<Result<Arc<Runtime>, String>> = OnceLock::new();

impl Runtime {
    /// The process-wide runtime, created on first use with its epoch ticker.
    pub fn get() -> anyhow::Result<Arc<Runtime>> {
        RUNTIME
            .get_or_init(|| Runtime::new().map(Arc::new).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow::anyhow!("cannot start the Wasm runtime: {e}"))
    }

    fn new() -> anyhow::Result<Runtime> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * 8)
            .total_memories(MAX_INSTANCES)
            .total_tables(MAX_INSTANCES * 4)
            .total_stacks(MAX_INSTANCES)
            .max_memory_size(MAX_MEMORY as usize)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            // Keep fiber stacks mapped between calls: faulting them back
            // in costs more than a short call itself.
            .async_stack_keep_resident(256 << 10)
            // Zero the first pages of a freed memory (a small guest's stack
            // top and data, see guests/.cargo/config.toml) and of its
            // tables rather than unmapping them: a fresh per-request
            // instance would fault each page back in.
            .linear_memory_keep_resident(192 << 10)
            .table_keep_resident(64 << 10);
        let mut config = Config::new();
        // `MOONBOX_WASM_PROFILER=perfmap` names guest functions for `perf`.
        if std::env::var("MOONBOX_WASM_PROFILER").as_deref() == Ok("perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        config
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot configure wasmtime")?;
        let weak = engine.weak();
        let ticker = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                let mut idle = 0;
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                    idle = if TICKER.calls.load(Ordering::SeqCst) == 0 {
                        idle + 1
                    } else {
                        0
                    };
                    if idle >= IDLE_TICKS {
                        TICKER.pause();
                        idle = 0;
                    }
                }
            })
            .context("cannot start the epoch thread")?;
        // Only this function sets it, and it runs once.
        let _ = TICKER.thread.set(ticker.thread().clone());
        Ok(Runtime {
            engine,
            cache_dir: cache_dir(),
        })
    }

    /// Compiles a component, or loads it from the cache when these exact
    /// bytes were compiled before by a compatible engine.
    pub fn component(&self, wasm: &[u8], what: &Path) -> anyhow::Result<Component> {
        let Some(dir) = &self.cache_dir else {
            return self.compile(wasm, what);
        };
        let path = dir.join(format!("{}.cwasm", self.cache_key(wasm)));
        if path.is_file() {
            match load_cached(&self.engine, &path) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(file = %what.display(), cache = %path.display(), "cached component unusable, recompiling: {e:#}")
                }
            }
        }
        let component = self.compile(wasm, what)?;
        if let Err(e) = store_cached(&component, dir, &path) {
            tracing::warn!(cache = %path.display(), "cannot cache the compiled component: {e:#}");
        }
        Ok(component)
    }

    fn compile(&self, wasm: &[u8], what: &Path) -> anyhow::Result<Component> {
        let started = std::time::Instant::now();
        let c = Component::new(&self.engine, wasm)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{}: not a valid Wasm component", what.display()))?;
        tracing::info!("compiled {} in {:.2?}", what.display(), started.elapsed());
        Ok(c)
    }

    fn cache_key(&self, wasm: &[u8]) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let mut d = Sha256::new();
        d.update(h.finish().to_le_bytes());
        d.update(wasm);
        let digest = d.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `$MOONBOX_CACHE_DIR`, else `$XDG_CACHE_HOME/moonbox/components`, else
/// `~/.cache/moonbox/components`; none (no cache) when nothing fits.
fn cache_dir() -> Option<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("MOONBOX_CACHE_DIR") {
        if d.is_empty() {
            return None;
        }
        PathBuf::from(d)
    } else if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        PathBuf::from(x).join("moonbox/components")
    } else {
        PathBuf::from(std::env::var_os("HOME")?).join(".cache/moonbox/components")
    };
    dir.is_absolute().then_some(dir)
}

#[allow(unsafe_code)]
fn load_cached(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: the file was written by `store_cached` from `serialize()` of a
    // component compiled by this same engine configuration (its name is the
    // hash of the engine's compatibility hash and of the source bytes), and
    // it is written once, under a temporary name then renamed, so it is not
    // changed while mapped. wasmtime checks the version and configuration
    // recorded in it and refuses, with an error, an artifact that does not
    // match. The cache directory belongs to the user running the proxy.
    unsafe { Component::deserialize_file(engine, path) }.map_err(anyhow::Error::from)
}

fn store_cached(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bytes = component.serialize().map_err(anyhow::Error::from)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    Ok(())
}
