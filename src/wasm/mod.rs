//! The Wasm extension runtime: components implementing `wit/ext.wit`,
//! run in isolated, limited instances behind the extension seam.
//!
//! - `engine`: the one wasmtime engine, its epoch ticker and the cache of
//!   compiled components.
//! - `instance`: one store and the driver of every guest call (fuel,
//!   deadlines, memory caps, faults).
//! - `io`: the waits of actions, services and tasks, performed by the host.
//! - `host/`: the imports, one file per WIT interface.
//!
//! This module knows nothing of HTTP routing; the proxy calls it only
//! through [`crate::ext::Extension`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use parking_lot::Mutex;

use crate::config::model::{ExtLoad, Isolation, OnError};
use crate::ext::{
    BoxFuture, ExtError, Extension, Facility, HttpApplet, Registration, TaskCtx, TcpApplet, Verdict,
};
use crate::proxy::state::World;
use crate::proxy::txn::Txn;
use crate::sample::Sample;

pub mod bindings;
pub mod engine;
pub mod host;
pub mod instance;
pub mod io;
pub mod lua;

use bindings::ExtensionPre;
use bindings::types::{IoResult, Step};
use engine::Runtime;
use host::types::{
    facility_to_wit, registrations_from_wit, sample_from_wit, sample_to_wit, verdict_from_wit,
};
use instance::{AppletRequest, Budget, Ctx, Fault, Inst, Point};
use io::{AllowRule, AppletSide, IoCtx};

/// Fuel of one invocation unless `ext-load ... fuel N` says otherwise:
/// about a few tens of milliseconds of guest code.
pub const DEFAULT_FUEL: u64 = 50_000_000;
/// Time of one invocation, waits included (HAProxy's `tune.lua.session-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4);
/// Linear memory of one instance.
pub const DEFAULT_MEMORY: u64 = 64 << 20;

static NEXT_INVOCATION: AtomicU64 = AtomicU64::new(1);

/// Limits and policy of one extension, from its `ext-load` line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    pub fuel: u64,
    pub timeout: Duration,
    pub memory: u64,
    pub instances: usize,
    pub isolation: Isolation,
    pub on_error: OnError,
    pub allow_connect: Vec<AllowRule>,
    pub args: Vec<String>,
    /// The longest one guest call may run (defaults to `timeout`).
    pub per_call: Duration,
    /// Folders whose files the guest may read while it loads.
    pub preopens: Vec<std::path::PathBuf>,
    /// The guest's environment (`os.getenv`).
    pub env: Vec<(String, String)>,
    /// An init argument that differs by pooled instance, made from the
    /// instance's position (the Lua guest's `core.thread`).
    pub slot_arg: Option<fn(usize) -> String>,
    /// Tasks run on the pooled instances, sharing their state, instead of
    /// on an instance of their own (Lua: one state for all, as in HAProxy).
    pub tasks_share: bool,
    /// The configuration's maps, which the extension may load more of while
    /// it initialises (Lua's `Map.new`).
    pub maps: Option<Arc<crate::sample::map::MapStore>>,
}

impl Settings {
    /// The settings of an `ext-load` line; `workers` is the default number
    /// of pooled instances (one per worker thread).
    pub fn from_load(l: &ExtLoad, workers: usize) -> anyhow::Result<Settings> {
        let memory = l.memory.unwrap_or(DEFAULT_MEMORY);
        if memory > engine::MAX_MEMORY {
            bail!(
                "memory {memory} is more than the largest allowed ({})",
                engine::MAX_MEMORY
            );
        }
        let allow_connect = l
            .allow_connect
            .iter()
            .map(|s| AllowRule::parse(s))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        let timeout = l.timeout.unwrap_or(DEFAULT_TIMEOUT);
        Ok(Settings {
            namespace: l.namespace.clone(),
            fuel: l.fuel.unwrap_or(DEFAULT_FUEL),
            timeout,
            per_call: timeout,
            preopens: Vec::new(),
            env: Vec::new(),
            slot_arg: None,
            tasks_share: false,
            maps: None,
            memory,
            instances: l.instances.map_or(workers.max(1), |n| n.max(1) as usize),
            isolation: l.isolation,
            on_error: l.on_error,
            allow_connect,
            args: l.args.clone(),
        })
    }
}

/// A loaded Wasm extension.
pub struct WasmExtension {
    ns: Arc<str>,
    rt: Arc<Runtime>,
    pre: ExtensionPre<Ctx>,
    settings: Settings,
    regs: Vec<Registration>,
    /// Each registration's position in the guest's list, by extension point
    /// and name (the later of two with the same name).
    index: HashMap<Point, HashMap<String, u32>>,
    /// Pooled instances; a dead one is replaced on its next use.
    slots: Vec<Mutex<Arc<Inst>>>,
    next: AtomicUsize,
}

/// Where an instance comes from for one invocation.
enum Source {
    Slot,
    /// The transaction's own instance (`isolation per-request`).
    Txn,
    /// A fresh instance for this invocation only (tasks in per-request mode).
    Fresh,
}

impl WasmExtension {
    /// Compiles (or loads from the cache), instantiates and initialises the
    /// component in `file`. Errors say why the extension is refused.
    pub fn load(file: &Path, settings: Settings) -> anyhow::Result<WasmExtension> {
        let wasm =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        Self::from_bytes(&wasm, file, settings)
    }

    pub fn from_bytes(
        wasm: &[u8],
        file: &Path,
        settings: Settings,
    ) -> anyhow::Result<WasmExtension> {
        let rt = Runtime::get()?;
        let component = rt.component(wasm, file)?;
        let mut linker = wasmtime::component::Linker::<Ctx>::new(&rt.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        bindings::Extension::add_to_linker::<Ctx, wasmtime::component::HasSelf<Ctx>>(
            &mut linker,
            |c| c,
        )
        .map_err(anyhow::Error::from)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component does not fit the moonbox:ext@0.1.0 world")?;
        let pre = ExtensionPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component does not export moonbox:ext/guest@0.1.0")?;
        let mut ext = WasmExtension {
            ns: Arc::from(settings.namespace.as_str()),
            rt,
            pre,
            settings,
            regs: Vec::new(),
            index: HashMap::new(),
            slots: Vec::new(),
            next: AtomicUsize::new(0),
        };
        let (first, regs) = ext.instantiate(0)?;
        for (i, r) in regs.iter().enumerate() {
            let (point, name) = match r {
                Registration::Fetch { name } => (Point::Fetch, name),
                Registration::Converter { name } => (Point::Converter, name),
                Registration::Action { name, .. } => (Point::Action, name),
                Registration::Service { name, .. } => (Point::Service, name),
                Registration::Task { name } => (Point::Task, name),
                Registration::Init { name } => (Point::Init, name),
            };
            let i = u32::try_from(i).context("too many registrations")?;
            ext.index.entry(point).or_default().insert(name.clone(), i);
        }
        ext.regs = regs;
        let first = Arc::new(first);
        ext.slots.push(Mutex::new(first));
        if ext.settings.isolation == Isolation::Pooled {
            for slot in 1..ext.settings.instances {
                let (inst, _) = ext.instantiate(slot)?;
                ext.slots.push(Mutex::new(Arc::new(inst)));
            }
        }
        Ok(ext)
    }

    /// The guest's number for the registration `name` of `point`.
    fn registration(&self, point: Point, name: &str) -> Result<u32, ExtError> {
        self.index
            .get(&point)
            .and_then(|m| m.get(name))
            .copied()
            .ok_or_else(|| ExtError::Failed(format!("no {} '{name}'", point.name())))
    }

    /// The budget of a call that cannot wait (init, fetch, converter).
    fn budget(&self) -> Budget {
        Budget {
            fuel: self.settings.fuel,
            deadline: None,
            per_call: self.settings.per_call,
        }
    }

    /// A new instance, initialised with the extension's arguments; `slot`
    /// is its place in the pool.
    fn instantiate(&self, slot: usize) -> anyhow::Result<(Inst, Vec<Registration>)> {
        let inst = instance::drive_ready(Inst::new(
            &self.rt.engine,
            &self.pre,
            &self.ns,
            &self.settings,
        ))
        .ok_or_else(|| anyhow::anyhow!("instantiation blocked in WASI"))?
        .context("cannot instantiate")?;
        let mut args = self.settings.args.clone();
        args.extend(self.settings.slot_arg.map(|f| f(slot)));
        let called = inst.call(
            Point::Init,
            None,
            None,
            None,
            &self.budget(),
            move |b, s, _| Box::pin(async move { b.moonbox_ext_guest().call_init(s, &args).await }),
        );
        match called.result {
            Ok(Ok(regs)) => Ok((
                inst,
                registrations_from_wit(regs).map_err(anyhow::Error::msg)?,
            )),
            Ok(Err(msg)) => bail!("init refused: {msg}"),
            Err(f) => bail!("init failed: {f} (fuel used {})", called.fuel),
        }
    }

    /// The instance an invocation runs on. A task has an instance of its
    /// own, so that a fault in a request never stops a task, nor the
    /// reverse.
    fn pick(&self, point: Point, txn: Option<&mut Txn>) -> Result<(Arc<Inst>, Source), ExtError> {
        if point == Point::Task && !self.settings.tasks_share {
            let (fresh, _) = self
                .instantiate(0)
                .map_err(|e| ExtError::Trap(format!("cannot create an instance: {e:#}")))?;
            return Ok((Arc::new(fresh), Source::Fresh));
        }
        match (self.settings.isolation, txn) {
            (Isolation::Pooled, _) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
                let mut slot = self.slots[i].lock();
                if slot.dead().is_some() {
                    let (fresh, _) = self.instantiate(i).map_err(|e| {
                        ExtError::Trap(format!("cannot replace a failed instance: {e:#}"))
                    })?;
                    *slot = Arc::new(fresh);
                }
                Ok((Arc::clone(&slot), Source::Slot))
            }
            (Isolation::PerRequest, Some(txn)) => {
                let key = self.txn_key();
                if let Some(i) = txn
                    .privs
                    .get(&key)
                    .and_then(|b| b.downcast_ref::<Arc<Inst>>())
                    .filter(|i| i.dead().is_none())
                {
                    return Ok((Arc::clone(i), Source::Txn));
                }
                let (fresh, _) = self
                    .instantiate(0)
                    .map_err(|e| ExtError::Trap(format!("cannot create an instance: {e:#}")))?;
                let fresh = Arc::new(fresh);
                txn.privs.insert(key, Box::new(Arc::clone(&fresh)));
                Ok((fresh, Source::Txn))
            }
            (Isolation::PerRequest, None) => {
                let (fresh, _) = self
                    .instantiate(0)
                    .map_err(|e| ExtError::Trap(format!("cannot create an instance: {e:#}")))?;
                Ok((Arc::new(fresh), Source::Fresh))
            }
        }
    }

    fn txn_key(&self) -> String {
        format!("wasm-instance:{}", self.ns)
    }

    /// Turns a fault into the error the caller sees, logging it with what a
    /// reader needs: extension, point, name, reason, fuel.
    fn fault(&self, point: Point, name: &str, fault: Fault, fuel: u64, src: &Source) -> ExtError {
        let replaced = match src {
            Source::Slot => "; instance replaced",
            Source::Txn | Source::Fresh => "; instance dropped",
        };
        tracing::error!(
            extension = &*self.ns,
            point = point.name(),
            name = %format_args!("{}.{name}", self.ns),
            reason = %fault,
            fuel,
            "extension failed{replaced}"
        );
        let msg = format!("{fault} (fuel used {fuel}){replaced}");
        match fault {
            Fault::Fuel | Fault::Timeout(_) => ExtError::Timeout(msg),
            _ => ExtError::Trap(msg),
        }
    }

    /// Runs a service (HTTP or TCP) over its applet.
    async fn service(
        &self,
        name: &str,
        txn: &mut Txn,
        side: AppletSide<'_>,
        request: Option<AppletRequest>,
    ) -> Result<(), ExtError> {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let io = IoCtx::new(&self.settings.allow_connect, side, deadline);
        let index = self.registration(Point::Service, name)?;
        let on = On {
            txn: Some(txn),
            world: None,
            applet: request,
        };
        self.invoke(Point::Service, name, on, io, move |b, s, id| {
            Box::pin(async move { b.moonbox_ext_guest().call_start_service(s, id, index).await })
        })
        .await
        .map(|_| ())
    }

    /// An invocation's time ran out while the host did its I/O.
    fn out_of_time(&self, doing: &str) -> ExtError {
        ExtError::Timeout(format!(
            "time limit of {:?} exceeded while {doing}",
            self.settings.timeout
        ))
    }

    /// Runs a resumable invocation (action, service, task) to its end.
    async fn invoke(
        &self,
        point: Point,
        name: &str,
        on: On<'_>,
        mut io: IoCtx<'_>,
        start: impl for<'a> FnOnce(
            &'a bindings::Extension,
            &'a mut wasmtime::Store<Ctx>,
            u64,
        ) -> std::pin::Pin<
            Box<dyn Future<Output = wasmtime::Result<Step>> + Send + 'a>,
        >,
    ) -> Result<Option<Verdict>, ExtError> {
        let On {
            mut txn,
            world,
            applet: applet_req,
        } = on;
        let (inst, src) = self.pick(point, txn.as_deref_mut())?;
        let id = NEXT_INVOCATION.fetch_add(1, Ordering::Relaxed);
        let mut budget = self.budget();
        if point == Point::Task {
            // A task lives as long as the proxy; its limits apply per call.
            io.deadline = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        } else {
            let deadline = std::time::Instant::now() + self.settings.timeout;
            budget.deadline = Some(deadline);
            io.deadline = tokio::time::Instant::from_std(deadline);
        }
        let mut guard = CancelGuard {
            inst: Arc::clone(&inst),
            id,
            armed: false,
        };
        let mut used = 0u64;
        let mut called = inst.call(
            point,
            txn.as_deref_mut(),
            world.as_ref(),
            applet_req,
            &budget,
            |b, s, _| start(b, s, id),
        );
        loop {
            used += called.fuel;
            // What the call queued for the service's client goes first,
            // even when it then failed, as a wait before the failure would
            // have sent it.
            if !called.out.is_empty() {
                let out = std::mem::take(&mut called.out);
                let sent = tokio::time::timeout_at(io.deadline, io.send_queued(out)).await;
                let failed = match sent {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(ExtError::Failed(e)),
                    Err(_) => Some(self.out_of_time("sending")),
                };
                // A call that faulted reports its fault below.
                if let Some(e) = failed
                    && called.result.is_ok()
                {
                    // A guest left waiting is cancelled.
                    guard.armed = matches!(called.result, Ok(Step::Wait(_)));
                    return Err(e);
                }
            }
            if point == Point::Task {
                budget.fuel = self.settings.fuel;
            } else {
                budget.fuel = budget.fuel.saturating_sub(called.fuel);
            }
            let step = match called.result {
                Ok(step) => step,
                Err(f) => return Err(self.fault(point, name, f, used, &src)),
            };
            let result: IoResult = match step {
                Step::Done(v) => return Ok(Some(verdict_from_wit(v))),
                Step::Finished => return Ok(None),
                Step::Failed(msg) => return Err(ExtError::Failed(msg)),
                Step::Wait(req) => {
                    guard.armed = true;
                    let r = tokio::time::timeout_at(io.deadline, io.perform(req)).await;
                    match r {
                        Ok(r) => r,
                        Err(_) => return Err(self.out_of_time("waiting")),
                    }
                }
            };
            called = inst.call(
                point,
                txn.as_deref_mut(),
                world.as_ref(),
                None,
                &budget,
                |b, s, _| {
                    Box::pin(async move { b.moonbox_ext_guest().call_resume(s, id, &result).await })
                },
            );
            // A finished invocation needs no cancel; one that fails or
            // waits again is covered by the guard.
            if matches!(
                &called.result,
                Ok(Step::Done(_) | Step::Finished | Step::Failed(_))
            ) {
                guard.armed = false;
            }
        }
    }
}

/// What an invocation runs on: its transaction (none for tasks), the
/// running proxy, the request of a service.
struct On<'t> {
    txn: Option<&'t mut Txn>,
    world: Option<Arc<World>>,
    applet: Option<AppletRequest>,
}

/// Tells the guest to drop an invocation that will not be resumed (its
/// client went away, or its time ran out).
struct CancelGuard {
    inst: Arc<Inst>,
    id: u64,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.armed || self.inst.dead().is_some() {
            return;
        }
        let id = self.id;
        let budget = Budget {
            fuel: DEFAULT_FUEL,
            deadline: None,
            per_call: Duration::from_millis(100),
        };
        let _ = self
            .inst
            .call(Point::Action, None, None, None, &budget, move |b, s, _| {
                Box::pin(async move { b.moonbox_ext_guest().call_cancel(s, id).await })
            });
    }
}

fn applet_request(a: &HttpApplet) -> AppletRequest {
    AppletRequest {
        method: a.method.clone(),
        path: a.path.clone(),
        query: a.query.clone(),
        version: a.version.clone(),
        headers: a
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        length: a.length,
    }
}

impl Extension for WasmExtension {
    fn namespace(&self) -> &str {
        &self.ns
    }

    fn registrations(&self) -> Vec<Registration> {
        self.regs.clone()
    }

    fn on_error(&self) -> OnError {
        self.settings.on_error
    }

    fn fetch(
        &self,
        name: &str,
        txn: &mut Txn,
        args: &[Sample],
    ) -> Result<Option<Sample>, ExtError> {
        let index = self.registration(Point::Fetch, name)?;
        let (inst, src) = self.pick(Point::Fetch, Some(txn))?;
        let args: Vec<_> = args.iter().cloned().map(sample_to_wit).collect();
        let called = inst.call(
            Point::Fetch,
            Some(txn),
            None,
            None,
            &self.budget(),
            move |b, s, _| {
                Box::pin(async move { b.moonbox_ext_guest().call_fetch(s, index, &args).await })
            },
        );
        match called.result {
            Ok(Ok(Some(s))) => sample_from_wit(s).map(Some).map_err(ExtError::Failed),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(msg)) => Err(ExtError::Failed(msg)),
            Err(f) => Err(self.fault(Point::Fetch, name, f, called.fuel, &src)),
        }
    }

    fn convert(
        &self,
        name: &str,
        txn: &mut Txn,
        input: Sample,
        args: &[Sample],
    ) -> Result<Option<Sample>, ExtError> {
        let index = self.registration(Point::Converter, name)?;
        let (inst, src) = self.pick(Point::Converter, Some(txn))?;
        let input = sample_to_wit(input);
        let args: Vec<_> = args.iter().cloned().map(sample_to_wit).collect();
        let called = inst.call(
            Point::Converter,
            Some(txn),
            None,
            None,
            &self.budget(),
            move |b, s, _| {
                Box::pin(async move {
                    b.moonbox_ext_guest()
                        .call_convert(s, index, &input, &args)
                        .await
                })
            },
        );
        match called.result {
            Ok(Ok(Some(s))) => sample_from_wit(s).map(Some).map_err(ExtError::Failed),
            Ok(Ok(None)) => Ok(None),
            Ok(Err(msg)) => Err(ExtError::Failed(msg)),
            Err(f) => Err(self.fault(Point::Converter, name, f, called.fuel, &src)),
        }
    }

    fn action<'a>(
        &'a self,
        name: &'a str,
        facility: Facility,
        txn: &'a mut Txn,
        args: &'a [String],
    ) -> BoxFuture<'a, Result<Verdict, ExtError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + self.settings.timeout;
            let io = IoCtx::new(&self.settings.allow_connect, AppletSide::None, deadline);
            let fac = facility_to_wit(facility);
            let index = self.registration(Point::Action, name)?;
            let args = args.to_vec();
            let v = self
                .invoke(
                    Point::Action,
                    name,
                    On {
                        txn: Some(txn),
                        world: None,
                        applet: None,
                    },
                    io,
                    move |b, s, id| {
                        Box::pin(async move {
                            b.moonbox_ext_guest()
                                .call_start_action(s, id, index, fac, &args)
                                .await
                        })
                    },
                )
                .await?;
            Ok(v.unwrap_or(Verdict::Continue))
        })
    }

    fn http_service<'a>(
        &'a self,
        name: &'a str,
        txn: &'a mut Txn,
        applet: &'a mut HttpApplet,
    ) -> BoxFuture<'a, Result<(), ExtError>> {
        let req = applet_request(applet);
        Box::pin(self.service(name, txn, AppletSide::Http(applet), Some(req)))
    }

    fn tcp_service<'a>(
        &'a self,
        name: &'a str,
        txn: &'a mut Txn,
        applet: &'a mut TcpApplet,
    ) -> BoxFuture<'a, Result<(), ExtError>> {
        Box::pin(self.service(name, txn, AppletSide::Tcp(applet), None))
    }

    fn task<'a>(&'a self, name: &'a str, ctx: TaskCtx) -> BoxFuture<'a, Result<(), ExtError>> {
        Box::pin(self.run_task(Point::Task, name, ctx))
    }

    /// An init function runs like a task that must end, under the
    /// extension's time limit, and may read files as `init` does.
    fn init<'a>(&'a self, name: &'a str, ctx: TaskCtx) -> BoxFuture<'a, Result<(), ExtError>> {
        Box::pin(self.run_task(Point::Init, name, ctx))
    }
}

impl WasmExtension {
    async fn run_task(&self, point: Point, name: &str, ctx: TaskCtx) -> Result<(), ExtError> {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let io = IoCtx::new(&self.settings.allow_connect, AppletSide::None, deadline);
        let index = self.registration(point, name)?;
        self.invoke(
            point,
            name,
            On {
                txn: None,
                world: Some(ctx.world),
                applet: None,
            },
            io,
            move |b, s, id| {
                Box::pin(async move { b.moonbox_ext_guest().call_start_task(s, id, index).await })
            },
        )
        .await
        .map(|_| ())
    }
}
