//! One instance of an extension: its store, its limits, and the driver of
//! every guest call, which turns traps, fuel and time exhaustion, memory
//! caps and blocked WASI calls into [`Fault`]s.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::Extension as Bindings;
use super::engine::EPOCH_TICK;
use super::host::stdio::GuestOutput;
use crate::proxy::state::World;
use crate::proxy::txn::Txn;

/// What the host knows about the invocation being run, for the imports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Point {
    Init,
    Fetch,
    Converter,
    Action,
    Service,
    Task,
}

impl Point {
    pub fn name(self) -> &'static str {
        match self {
            Point::Init => "init",
            Point::Fetch => "fetch",
            Point::Converter => "converter",
            Point::Action => "action",
            Point::Service => "service",
            Point::Task => "task",
        }
    }
}

/// The request an HTTP service answers, as `applet.request` returns it.
pub type AppletRequest = super::bindings::moonbox::ext::applet::HttpRequest;

/// The store's data: WASI, limits, and what the current call may reach.
pub struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: Limits,
    /// The namespace, for logs.
    pub ns: Arc<str>,
    /// The transaction, lent for the duration of one call.
    pub txn: Option<Txn>,
    /// What stands in the caller's place while its transaction is lent,
    /// kept from call to call so that lending costs two moves.
    spare: Option<Txn>,
    /// The running proxy (proxies, maps); set before each call.
    pub world: Option<Arc<World>>,
    /// The configuration's maps while it loads (before the world exists).
    pub maps: Option<Arc<crate::sample::map::MapStore>>,
    /// The request of the service being run.
    pub applet: Option<AppletRequest>,
    /// What the service queued for its client during this call.
    pub applet_out: super::io::AppletOut,
    pub point: Point,
    /// Folders `files.read` may read from, at load only.
    pub readable: Arc<[std::path::PathBuf]>,
    /// Compiled patterns of `regex.captures`.
    pub regexes: std::collections::HashMap<(String, bool), regex::Regex>,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Memory and table caps of one instance. Passing one traps the call and
/// records why, so the fault names it.
pub struct Limits {
    memory: usize,
    pub exceeded: Option<usize>,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.exceeded = Some(desired);
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded (wanted {desired})",
                self.memory
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Why a call failed in a way that kills its instance.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Fault {
    #[error("fuel exhausted")]
    Fuel,
    #[error("time limit of {0:?} exceeded")]
    Timeout(Duration),
    #[error("memory limit of {limit} bytes exceeded")]
    Memory { limit: usize },
    #[error("trapped: {0}")]
    Trap(String),
    #[error(
        "blocked in a WASI call; waiting is only possible through moonbox's io (sleep, sockets, applets) in actions, services and tasks"
    )]
    Blocked,
    #[error("instance unavailable: {0}")]
    Unavailable(String),
}

/// What a call may use.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Fuel left; each call takes what it burns.
    pub fuel: u64,
    /// When the invocation must be over; `None` for calls that cannot wait
    /// (fetches, converters), which only have `per_call`.
    pub deadline: Option<Instant>,
    /// The longest one call may run, whatever the deadline.
    pub per_call: Duration,
}

/// A live instance: a store with its bindings. Calls lock it one at a time;
/// waiting invocations do not hold it.
pub struct Inst {
    inner: Mutex<Live>,
}

struct Live {
    store: Store<Ctx>,
    bindings: Bindings,
    dead: Option<Fault>,
}

/// Ties the lifetime of a call's future to data the caller borrows for
/// longer (`'n: 'a`), so that a call can take names and arguments by
/// reference.
pub type Outlives<'a, 'n> = std::marker::PhantomData<&'a &'n ()>;

/// The outcome of one guest call, with the fuel it burnt.
pub struct Called<R> {
    pub result: Result<R, Fault>,
    pub fuel: u64,
    /// What a service queued for its client (`applet.write`), to be sent
    /// before anything else is done with the result.
    pub out: super::io::AppletOut,
}

impl Inst {
    /// Instantiates `pre` in a new store.
    pub async fn new(
        engine: &wasmtime::Engine,
        pre: &super::bindings::ExtensionPre<Ctx>,
        ns: &Arc<str>,
        settings: &super::Settings,
    ) -> anyhow::Result<Inst> {
        let mut b = wasmtime_wasi::WasiCtx::builder();
        b.stdout(GuestOutput::new(Arc::clone(ns), false))
            .stderr(GuestOutput::new(Arc::clone(ns), true))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (k, v) in &settings.env {
            b.env(k, v);
        }
        let wasi = b.build();
        let memory = settings.memory;
        let ns = Arc::clone(ns);
        let ctx = Ctx {
            wasi,
            table: ResourceTable::new(),
            limits: Limits {
                memory: usize::try_from(memory).unwrap_or(usize::MAX),
                exceeded: None,
            },
            ns,
            txn: None,
            spare: None,
            world: None,
            maps: settings.maps.clone(),
            applet: None,
            applet_out: Default::default(),
            point: Point::Init,
            readable: Arc::from(settings.preopens.as_slice()),
            regexes: std::collections::HashMap::new(),
        };
        let mut store = Store::new(engine, ctx);
        store.limiter(|c| &mut c.limits);
        store.epoch_deadline_trap();
        store.set_fuel(u64::MAX).map_err(anyhow::Error::from)?;
        store.set_epoch_deadline(u64::MAX / 2);
        let bindings = pre
            .instantiate_async(&mut store)
            .await
            .map_err(anyhow::Error::from)?;
        Ok(Inst {
            inner: Mutex::new(Live {
                store,
                bindings,
                dead: None,
            }),
        })
    }

    /// Whether a call killed this instance.
    pub fn dead(&self) -> Option<Fault> {
        self.inner.lock().dead.clone()
    }

    /// Runs one guest call with `txn` lent to the store, under the budget.
    /// The call must not wait: a guest that blocks in WASI is stopped.
    pub fn call<'n, R>(
        &self,
        point: Point,
        txn: Option<&mut Txn>,
        world: Option<&Arc<World>>,
        applet: Option<AppletRequest>,
        budget: &Budget,
        f: impl for<'a> FnOnce(
            &'a Bindings,
            &'a mut Store<Ctx>,
            Outlives<'a, 'n>,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
    ) -> Called<R> {
        let mut live = self.inner.lock();
        if let Some(f) = &live.dead {
            return Called {
                result: Err(Fault::Unavailable(f.to_string())),
                fuel: 0,
                out: Default::default(),
            };
        }
        let slice = match budget.deadline {
            None => budget.per_call,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Called {
                        result: Err(Fault::Timeout(budget.per_call)),
                        fuel: 0,
                        out: Default::default(),
                    };
                }
                left.min(budget.per_call)
            }
        };
        let ticks = slice.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64 + 1;
        let Live {
            store,
            bindings,
            dead,
        } = &mut *live;
        {
            let ctx = store.data_mut();
            ctx.point = point;
            ctx.world = world
                .cloned()
                .or_else(|| txn.as_ref().map(|t| Arc::clone(&t.world)));
            ctx.applet = applet;
            ctx.limits.exceeded = None;
        }
        let mut txn = txn;
        if let Some(t) = txn.as_deref_mut() {
            let ctx = store.data_mut();
            let stand_in = ctx.spare.take().unwrap_or_else(|| t.placeholder());
            ctx.txn = Some(std::mem::replace(t, stand_in));
        }
        let fuel_before = budget.fuel.max(1);
        let result = match store.set_fuel(fuel_before) {
            Ok(()) => {
                let _running = super::engine::running();
                store.set_epoch_deadline(ticks);
                drive_ready(f(bindings, store, std::marker::PhantomData))
            }
            Err(e) => Some(Err(e)),
        };
        let fuel_left = store.get_fuel().unwrap_or(0);
        let ctx = store.data_mut();
        if let Some(t) = txn
            && let Some(back) = ctx.txn.take()
        {
            ctx.spare = Some(std::mem::replace(t, back));
        }
        ctx.applet = None;
        let out = std::mem::take(&mut ctx.applet_out);
        let exceeded = ctx.limits.exceeded.take();
        let result = match result {
            Some(Ok(r)) => Ok(r),
            None => Err(Fault::Blocked),
            Some(Err(e)) => Err(classify(e, exceeded, slice, ctx.limits.memory)),
        };
        if let Err(f) = &result {
            *dead = Some(f.clone());
        }
        Called {
            result,
            fuel: fuel_before.saturating_sub(fuel_left),
            out,
        }
    }
}

fn classify(e: wasmtime::Error, exceeded: Option<usize>, slice: Duration, limit: usize) -> Fault {
    if exceeded.is_some() {
        return Fault::Memory { limit };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Fault::Fuel,
        Some(Trap::Interrupt) => Fault::Timeout(slice),
        Some(Trap::StackOverflow) => Fault::Trap("stack overflow".into()),
        Some(t) => Fault::Trap(t.to_string()),
        None => Fault::Trap(format!("{e:#}")),
    }
}

/// How many times a pending guest call is polled again before it counts as
/// blocked.
const SPURIOUS_POLLS: usize = 10_000;

/// Polls a guest call to its end. Our imports never wait and WASI output
/// goes to the log at once, so a call that stays pending is a guest blocked
/// in WASI (a sleep, a read): it is dropped, which kills its instance, and
/// `None` is returned.
pub fn drive_ready<T>(fut: impl Future<Output = T>) -> Option<T> {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    // wasmtime itself may suspend a call for a moment (an incremental
    // garbage collection of the exception objects that Lua's error
    // handling throws yields between steps); such a call is ready again at
    // once. A guest waiting on WASI stays pending.
    for _ in 0..SPURIOUS_POLLS {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
    }
    None
}
