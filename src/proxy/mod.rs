//! The running proxy: listeners, HTTP and TCP data paths, rule engine,
//! backends, balancing, health checks, stats, reload and graceful stop.
//!
//! A [`Proxy`] owns the listening sockets and the current *generation*: the
//! [`World`] built from one configuration. A reload builds a new generation,
//! keeps the listening sockets whose address is still bound, and lets the
//! connections of the old generation finish their current request.

pub mod balance;
pub mod check;
pub mod client_io;
pub mod http;
pub mod log;
pub mod rules;
pub mod state;
pub mod tcp;
pub mod timer;
pub mod txn;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::Loaded;
use crate::config::model::{BackendTarget, Mode};
use crate::ext::{Facility, TaskCtx};
use rules::Flow;
use state::{ProxyRt, World};
use txn::{Session, Txn};

static TXN_ID: AtomicU64 = AtomicU64::new(1);

/// A process-wide increasing transaction id.
pub fn next_txn_id() -> u64 {
    TXN_ID.fetch_add(1, Ordering::Relaxed)
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{loc}: cannot bind {addr}: {source}")]
    Bind {
        loc: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("init '{name}' failed: {reason}")]
    Init { name: String, reason: String },
}

/// Runs the extensions' init functions (`core.register_init`) once the
/// world exists, in order, before anything is served.
async fn run_inits(world: &Arc<World>) -> Result<(), StartError> {
    for i in world.ext.inits() {
        let ctx = TaskCtx {
            world: world.clone(),
        };
        i.ext
            .init(&i.name, ctx)
            .await
            .map_err(|e| StartError::Init {
                name: i.full.to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok(())
}

/// Builds the run-time world of a loaded configuration.
pub fn build_world(loaded: &Loaded) -> Arc<World> {
    let proxies = loaded
        .config
        .proxies
        .iter()
        .enumerate()
        .map(|(i, p)| Arc::new(ProxyRt::new(p.clone(), i as u32 + 1)))
        .collect();
    let mut world = World::new(proxies, loaded.maps.clone(), loaded.ext.clone());
    world.env = loaded.config.global.setenv.iter().cloned().collect();
    Arc::new(world)
}

/// The backend named by `use_backend` rules or `default_backend`; a
/// listen section is its own backend.
pub fn select_backend(fe: &Arc<ProxyRt>, txn: &mut Txn) -> Option<Arc<ProxyRt>> {
    for ub in &fe.config.use_backends {
        if let Some(c) = &ub.cond
            && !c.eval(txn)
        {
            continue;
        }
        let name = match &ub.target {
            BackendTarget::Name(n) => n.clone(),
            BackendTarget::Dynamic(f) => f.eval(txn),
        };
        match txn.world.backend(&name) {
            Some(b) if b.mode() == fe.mode() => return Some(b.clone()),
            _ => {
                // HAProxy falls back to the default backend when a dynamic
                // name does not exist.
                tracing::debug!(frontend = %fe.name, backend = %name, "use_backend names no usable backend");
            }
        }
    }
    if fe.config.default_backend.is_some() {
        return txn.world.default_backend(fe).cloned();
    }
    if fe.is_backend() {
        return Some(fe.clone());
    }
    None
}

/// Identifies a `bind` across reloads: its configured address and, when
/// several binds share it (port 0), which of them it is.
type BindKey = (SocketAddr, usize);

/// The bind keys of a world, in configuration order, with their frontend.
fn bind_keys(world: &World) -> Vec<(BindKey, usize, String)> {
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, p) in world.proxies.iter().enumerate() {
        if p.is_frontend() {
            for b in &p.config.binds {
                let n = seen.entry(b.addr).or_insert(0);
                out.push(((b.addr, *n), i, b.loc.to_string()));
                *n += 1;
            }
        }
    }
    out
}

/// One configuration generation and what runs for it.
struct Generation {
    world: Arc<World>,
    /// Frontend index by bind.
    binds: HashMap<BindKey, usize>,
    /// Set to true to ask this generation's connections to finish.
    drain: watch::Sender<bool>,
    /// Health checks and extension tasks.
    tasks: Vec<JoinHandle<()>>,
}

impl Generation {
    fn new(world: Arc<World>) -> Generation {
        let binds = bind_keys(&world)
            .into_iter()
            .map(|(k, i, _)| (k, i))
            .collect();
        let (drain, _) = watch::channel(false);
        Generation {
            world,
            binds,
            drain,
            tasks: Vec::new(),
        }
    }

    fn start_tasks(&mut self) {
        self.tasks.extend(check::spawn_all(&self.world));
        for t in self.world.ext.tasks() {
            let t = t.clone();
            let ctx = TaskCtx {
                world: self.world.clone(),
            };
            self.tasks.push(tokio::spawn(async move {
                if let Err(e) = t.ext.task(&t.name, ctx).await {
                    tracing::warn!("task '{}' failed: {e}", t.full);
                }
            }));
        }
    }

    fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.drain.send(true);
    }
}

struct Shared {
    current: ArcSwap<Generation>,
    /// Open client connections, for graceful stop.
    active: AtomicUsize,
    idle: Notify,
    /// Set to true when the proxy stops accepting.
    stopping: watch::Sender<bool>,
}

struct ListenerHandle {
    /// The bind as configured (port may be 0).
    configured: BindKey,
    local: SocketAddr,
    task: JoinHandle<()>,
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Mutex<Vec<ListenerHandle>>,
}

impl Proxy {
    /// Binds every frontend's addresses and starts serving.
    pub async fn start(loaded: &Loaded) -> Result<Proxy, StartError> {
        let world = build_world(loaded);
        run_inits(&world).await?;
        let mut gen_ = Generation::new(world);
        let (stopping, _) = watch::channel(false);
        let mut listeners = Vec::new();
        let mut bound = Vec::new();
        for (key, _, loc) in bind_keys(&gen_.world) {
            let addr = key.0;
            let l = bind(addr).map_err(|source| StartError::Bind { loc, addr, source })?;
            bound.push((key, l));
        }
        gen_.start_tasks();
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(gen_),
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            stopping,
        });
        for (addr, l) in bound {
            listeners.push(spawn_listener(&shared, addr, l));
        }
        for l in &listeners {
            tracing::info!("listening on {} ({})", l.local, l.configured.0);
        }
        Ok(Proxy {
            shared,
            listeners: Mutex::new(listeners),
        })
    }

    /// The addresses actually bound, with the frontend that serves each.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let g = self.shared.current.load();
        self.listeners
            .lock()
            .iter()
            .map(|l| {
                let name = g
                    .binds
                    .get(&l.configured)
                    .map(|&i| g.world.proxies[i].name.clone())
                    .unwrap_or_default();
                (name, l.local)
            })
            .collect()
    }

    /// The current world (for stats and tests).
    pub fn world(&self) -> Arc<World> {
        self.shared.current.load().world.clone()
    }

    /// Switches to a new configuration without dropping connections:
    /// listeners still configured keep their sockets, new ones are bound,
    /// removed ones stop accepting; connections of the old generation finish
    /// their current request and close.
    pub async fn reload(&self, loaded: &Loaded) -> Result<(), StartError> {
        let world = build_world(loaded);
        run_inits(&world).await?;
        let mut gen_ = Generation::new(world);
        let mut listeners = self.listeners.lock();
        // Bind new addresses first: a failure leaves the old generation intact.
        let mut fresh = Vec::new();
        for (key, _, loc) in bind_keys(&gen_.world) {
            if listeners.iter().any(|l| l.configured == key) {
                continue;
            }
            let addr = key.0;
            let l = bind(addr).map_err(|source| StartError::Bind { loc, addr, source })?;
            fresh.push((key, l));
        }
        gen_.start_tasks();
        let old = self.shared.current.swap(Arc::new(gen_));
        old.stop();
        let g = self.shared.current.load();
        listeners.retain(|l| {
            let keep = g.binds.contains_key(&l.configured);
            if !keep {
                tracing::info!("no longer listening on {}", l.local);
                l.task.abort();
            }
            keep
        });
        for (addr, l) in fresh {
            let h = spawn_listener(&self.shared, addr, l);
            tracing::info!("listening on {} ({})", h.local, h.configured.0);
            listeners.push(h);
        }
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish (up to `grace`), then
    /// returns.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shared.stopping.send(true);
        for l in self.listeners.lock().drain(..) {
            l.task.abort();
        }
        self.shared.current.load().stop();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.shared.idle.notified();
            if self.shared.active.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    "{} connection(s) still open after {:?}, closing them",
                    self.shared.active.load(Ordering::Acquire),
                    grace
                );
                break;
            }
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.set_nodelay(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

fn spawn_listener(
    shared: &Arc<Shared>,
    configured: BindKey,
    listener: TcpListener,
) -> ListenerHandle {
    let local = listener.local_addr().unwrap_or(configured.0);
    let shared2 = shared.clone();
    let task = tokio::spawn(async move {
        let mut stopping = shared2.stopping.subscribe();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stopping.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: wait a little.
                    tracing::warn!("accept on {local}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let g = shared2.current.load_full();
            let Some(&idx) = g.binds.get(&configured) else {
                continue;
            };
            let fe = g.world.proxies[idx].clone();
            let shared3 = shared2.clone();
            shared3.active.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(async move {
                let guard = ActiveGuard(shared3.clone());
                serve_connection(g, fe, stream, peer, local).await;
                drop(guard);
            });
        }
    });
    ListenerHandle {
        configured,
        local,
        task,
    }
}

struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

async fn serve_connection(
    g: Arc<Generation>,
    fe: Arc<ProxyRt>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let _fe_guard = fe.counters.open_session();
    let sess = Arc::new(Session::new(peer, local));
    let world = g.world.clone();
    let mut txn = Txn::new(world.clone(), sess.clone(), fe.clone(), next_txn_id());
    if !fe.config.tcp_request_connection.is_empty() {
        match rules::run(
            &fe.config.tcp_request_connection,
            Facility::TcpReq,
            &mut txn,
        )
        .await
        {
            Flow::Next => {}
            _ => {
                fe.counters.dreq.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    match fe.config.mode {
        Mode::Tcp => tcp::serve(txn, stream).await,
        Mode::Http => {
            drop(txn);
            serve_http(g, fe, sess, stream).await
        }
    }
}

async fn serve_http(g: Arc<Generation>, fe: Arc<ProxyRt>, sess: Arc<Session>, stream: TcpStream) {
    let mut drain = g.drain.subscribe();
    let world = g.world.clone();
    let (log_fe, log_sess) = (fe.clone(), sess.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let to = &fe.config.timeouts;
    let header_timeout = to
        .http_request
        .or(to.client)
        .unwrap_or(Duration::from_secs(30));
    builder
        .http1()
        .timer(timer::HyperTimer(world.timers.clone()))
        // A client's FIN ends its request only with `option abortonclose`.
        // (Otherwise hyper also stops looking for one mid-request, and the
        // request head's read buffer is reused for the next.)
        .half_close(!fe.config.options.abortonclose)
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .writev(false)
        .max_buf_size(BUFSIZE);
    builder
        .http2()
        .timer(timer::HyperTimer(world.timers.clone()))
        .max_header_list_size(BUFSIZE as u32);
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        // One span per request (shown with RUST_LOG=debug): every line an
        // extension or the proxy logs while serving it carries these fields.
        let span = tracing::debug_span!(
            "request",
            frontend = %fe.name,
            client = %sess.src,
            method = %req.method(),
            path = %req.uri().path(),
            txn = tracing::field::Empty,
        );
        tracing::Instrument::instrument(
            http::handle(world.clone(), fe.clone(), sess.clone(), req),
            span,
        )
    });
    // A second handle on the socket answers a request head that timed
    // out, after hyper has given the connection up.
    let answer = client_io::answer_handle(&stream);
    // hyper's header timeout starts with the first byte (before it, the
    // HTTP/2 preface is being looked for): a client that sends nothing
    // gets the same 408.
    let mut first = [0u8; 1];
    tokio::select! {
        r = g.world.timers.timeout(header_timeout, stream.peek(&mut first)) => match r {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => {
                request_timed_out(&g.world, &log_fe, &log_sess, answer.as_ref());
                return;
            }
        },
        _ = drain.wait_for(|d| *d) => return,
    }
    let (io, progress) = client_io::ClientIo::new(stream);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                let timed_out = e
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(|h| h.is_timeout());
                if timed_out && progress.owes_408() {
                    request_timed_out(&g.world, &log_fe, &log_sess, answer.as_ref());
                } else {
                    tracing::debug!("client connection: {e}");
                }
            }
            return;
        }
        _ = drain.wait_for(|d| *d) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!("client connection: {e}");
    }
}

/// Answers a request that did not arrive within `timeout http-request`
/// with HAProxy's 408, counted and logged as HAProxy logs it
/// (`<BADREQ>`, termination state `cR--`).
fn request_timed_out(
    world: &Arc<World>,
    fe: &Arc<ProxyRt>,
    sess: &Arc<Session>,
    answer: Option<&std::net::TcpStream>,
) {
    let sent = answer.map_or(0, client_io::send_408);
    fe.counters.count_status(408);
    tracing::debug!(frontend = %fe.name, client = %sess.src, "no complete request within 'timeout http-request': 408");
    if fe.config.options.httplog || fe.config.options.log {
        let txn = Txn::new(world.clone(), sess.clone(), fe.clone(), next_txn_id());
        let mut info = log::LogInfo::new();
        info.status = Some(408);
        info.bytes_out = sent as u64;
        info.term = *b"cR--";
        log::emit(&log::LogCtx::new(&txn, "<BADREQ>".to_string(), info).http_line());
    }
}

/// HAProxy's `tune.bufsize`: the largest request head accepted (beyond it
/// the client gets 431).
pub const BUFSIZE: usize = 16384;
