//! Runtime state of proxies and servers: what the stats page shows, what
//! balancing and health checks change, and what extensions read
//! (`core.backends`, `Server:get_stats()`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::RwLock;

use crate::config::model::{Mode, ProxyConfig, ServerConfig};
use crate::sample::Vars;
use crate::sample::map::MapStore;

/// Traffic counters shared by proxies and servers (HAProxy's stats columns).
#[derive(Debug, Default)]
pub struct Counters {
    /// Woken when a session ends: a server's is its backend's queue.
    pub freed: Arc<tokio::sync::Notify>,
    /// Requests waiting in the queue now, and the most seen.
    pub qcur: AtomicU64,
    pub qmax: AtomicU64,
    /// Current sessions.
    pub scur: AtomicU64,
    /// Highest `scur` seen.
    pub smax: AtomicU64,
    /// Total sessions.
    pub stot: AtomicU64,
    /// Bytes in (from clients) and out (to clients).
    pub bin: AtomicU64,
    pub bout: AtomicU64,
    /// HTTP requests seen.
    pub req_tot: AtomicU64,
    /// Responses by status class: 1xx..5xx, other.
    pub hrsp: [AtomicU64; 6],
    /// Requests denied by rules.
    pub dreq: AtomicU64,
    /// Connection errors to servers, response errors.
    pub econ: AtomicU64,
    pub eresp: AtomicU64,
    /// Failed health checks.
    pub chkfail: AtomicU64,
    /// Transitions UP -> DOWN.
    pub chkdown: AtomicU64,
}

impl Counters {
    /// Counts a new session; returns a guard that decrements `scur` on drop.
    pub fn open_session(self: &Arc<Self>) -> SessionGuard {
        let cur = self.scur.fetch_add(1, Ordering::Relaxed) + 1;
        self.smax.fetch_max(cur, Ordering::Relaxed);
        self.stot.fetch_add(1, Ordering::Relaxed);
        SessionGuard(Arc::clone(self))
    }

    pub fn count_status(&self, status: u16) {
        let idx = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.hrsp[idx].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Decrements a `scur` counter when the session ends.
#[derive(Debug)]
pub struct SessionGuard(Arc<Counters>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.scur.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

/// The operational state of a server, as `Server:get_stats().status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// Health checks pass.
    Up = 0,
    /// Health checks fail.
    Down = 1,
    /// Put in maintenance (`disabled` or by an extension).
    Maint = 2,
    /// Not checked: assumed usable.
    NoCheck = 3,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Up => "UP",
            ServerState::Down => "DOWN",
            ServerState::Maint => "MAINT",
            ServerState::NoCheck => "no check",
        }
    }
    fn from_u8(v: u8) -> ServerState {
        match v {
            0 => ServerState::Up,
            1 => ServerState::Down,
            2 => ServerState::Maint,
            _ => ServerState::NoCheck,
        }
    }
}

/// A server of a backend at run time.
#[derive(Debug)]
pub struct ServerRt {
    pub name: String,
    pub addr: SocketAddr,
    pub config: ServerConfig,
    pub weight: AtomicU32,
    pub maxconn: AtomicU32,
    state: AtomicU8,
    /// Consecutive check results, for rise/fall.
    pub check_ok_streak: AtomicU32,
    pub check_fail_streak: AtomicU32,
    pub counters: Arc<Counters>,
    /// Unix time of the last state change.
    pub last_change: AtomicU64,
    /// Position within its backend (HAProxy's `puid`).
    pub puid: u32,
    /// Idle HTTP connections to this server.
    pub pool: Arc<super::upstream::Pool>,
}

impl ServerRt {
    pub fn new(config: ServerConfig, puid: u32) -> ServerRt {
        Self::with_queue(config, puid, Arc::default())
    }

    /// A server whose ending sessions wake `queue` (its backend's).
    pub fn with_queue(
        config: ServerConfig,
        puid: u32,
        queue: Arc<tokio::sync::Notify>,
    ) -> ServerRt {
        let state = if config.disabled {
            ServerState::Maint
        } else if config.check {
            // HAProxy starts checked servers UP and lets the checks bring them down.
            ServerState::Up
        } else {
            ServerState::NoCheck
        };
        ServerRt {
            name: config.name.clone(),
            addr: config.addr,
            weight: AtomicU32::new(config.weight),
            maxconn: AtomicU32::new(config.maxconn.unwrap_or(0)),
            state: AtomicU8::new(state as u8),
            check_ok_streak: AtomicU32::new(0),
            check_fail_streak: AtomicU32::new(0),
            counters: Arc::new(Counters {
                freed: queue,
                ..Counters::default()
            }),
            last_change: AtomicU64::new(unix_now()),
            puid,
            pool: Arc::new(super::upstream::Pool::default()),
            config,
        }
    }

    pub fn state(&self) -> ServerState {
        ServerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Changes the state; returns the previous one.
    pub fn set_state(&self, s: ServerState) -> ServerState {
        let prev = ServerState::from_u8(self.state.swap(s as u8, Ordering::AcqRel));
        if prev != s {
            self.last_change.store(unix_now(), Ordering::Relaxed);
        }
        prev
    }

    /// Whether the balancer may send traffic here.
    pub fn usable(&self) -> bool {
        matches!(self.state(), ServerState::Up | ServerState::NoCheck)
            && self.weight.load(Ordering::Relaxed) > 0
    }

    /// The server's line of HAProxy's stats (`show stat`), as name/value
    /// pairs: what `Server:get_stats()` returns.
    pub fn stats(&self, proxy: &ProxyRt) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("pxname", proxy.name.clone()),
            ("svname", self.name.clone()),
            ("iid", proxy.uuid.to_string()),
            ("sid", self.puid.to_string()),
            ("type", "2".to_string()),
            ("addr", self.addr.to_string()),
            ("status", self.state().as_str().to_string()),
            ("weight", self.weight.load(Ordering::Relaxed).to_string()),
            ("act", u8::from(!self.config.backup).to_string()),
            ("bck", u8::from(self.config.backup).to_string()),
            (
                "check_status",
                if self.config.check { "L4OK" } else { "" }.to_string(),
            ),
            (
                "lastchg",
                (unix_now().saturating_sub(self.last_change.load(Ordering::Relaxed))).to_string(),
            ),
            ("slim", self.maxconn.load(Ordering::Relaxed).to_string()),
            ("qcur", "0".to_string()),
            ("qmax", "0".to_string()),
        ];
        v.extend(counter_stats(&self.counters));
        v
    }

    /// Opens a session on this server if it stays within `maxconn`.
    pub fn try_reserve(&self) -> Option<SessionGuard> {
        let max = self.maxconn.load(Ordering::Relaxed) as u64;
        let cur = self.counters.scur.fetch_add(1, Ordering::Relaxed) + 1;
        if max != 0 && cur > max {
            self.counters.scur.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.counters.smax.fetch_max(cur, Ordering::Relaxed);
        self.counters.stot.fetch_add(1, Ordering::Relaxed);
        Some(SessionGuard(Arc::clone(&self.counters)))
    }

    /// Whether a new connection stays within `maxconn` (0 = unlimited).
    pub fn has_room(&self) -> bool {
        let max = self.maxconn.load(Ordering::Relaxed) as u64;
        max == 0 || Counters::get(&self.counters.scur) < max
    }
}

/// A proxy (frontend, backend or listen) at run time.
#[derive(Debug)]
pub struct ProxyRt {
    pub name: String,
    pub config: Arc<ProxyConfig>,
    pub servers: Vec<Arc<ServerRt>>,
    pub counters: Arc<Counters>,
    /// Round-robin cursor.
    pub rr: AtomicU64,
    pub uuid: u32,
}

impl ProxyRt {
    /// Builds the run-time proxy from its configuration.
    pub fn new(config: Arc<ProxyConfig>, uuid: u32) -> ProxyRt {
        let queue: Arc<tokio::sync::Notify> = Arc::default();
        let servers = config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Arc::new(ServerRt::with_queue(
                    s.clone(),
                    i as u32 + 1,
                    Arc::clone(&queue),
                ))
            })
            .collect();
        ProxyRt {
            name: config.name.clone(),
            servers,
            counters: Arc::new(Counters {
                freed: queue,
                ..Counters::default()
            }),
            rr: AtomicU64::new(0),
            uuid,
            config,
        }
    }
}

impl ProxyRt {
    pub fn is_frontend(&self) -> bool {
        self.config.is_frontend()
    }
    pub fn is_backend(&self) -> bool {
        self.config.is_backend()
    }
    pub fn mode(&self) -> Mode {
        self.config.mode
    }
    /// Number of usable servers (HAProxy's `nbsrv`).
    pub fn nbsrv(&self) -> usize {
        self.servers.iter().filter(|s| s.usable()).count()
    }
    pub fn server(&self, name: &str) -> Option<&Arc<ServerRt>> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The proxy's line of HAProxy's stats (FRONTEND or BACKEND): what
    /// `Proxy:get_stats()` returns.
    pub fn stats(&self) -> Vec<(&'static str, String)> {
        // A listen section reports as a backend (its servers' summary).
        let backend = self.is_backend();
        let mut v = vec![
            ("pxname", self.name.clone()),
            (
                "svname",
                if backend { "BACKEND" } else { "FRONTEND" }.to_string(),
            ),
            ("iid", self.uuid.to_string()),
            ("type", if backend { "1" } else { "0" }.to_string()),
            (
                "mode",
                match self.config.mode {
                    Mode::Http => "http",
                    Mode::Tcp => "tcp",
                }
                .to_string(),
            ),
            (
                "status",
                if !backend || self.nbsrv() > 0 {
                    "UP"
                } else {
                    "DOWN"
                }
                .to_string(),
            ),
            (
                "act",
                self.servers
                    .iter()
                    .filter(|s| !s.config.backup && s.usable())
                    .count()
                    .to_string(),
            ),
            (
                "bck",
                self.servers
                    .iter()
                    .filter(|s| s.config.backup && s.usable())
                    .count()
                    .to_string(),
            ),
            ("slim", self.config.maxconn.unwrap_or(0).to_string()),
        ];
        if backend {
            v.push(("qcur", Counters::get(&self.counters.qcur).to_string()));
            v.push(("qmax", Counters::get(&self.counters.qmax).to_string()));
        }
        v.extend(counter_stats(&self.counters));
        v
    }
}

fn counter_stats(c: &Counters) -> Vec<(&'static str, String)> {
    let g = |a: &AtomicU64| Counters::get(a).to_string();
    vec![
        ("scur", g(&c.scur)),
        ("smax", g(&c.smax)),
        ("stot", g(&c.stot)),
        ("bin", g(&c.bin)),
        ("bout", g(&c.bout)),
        ("dreq", g(&c.dreq)),
        ("econ", g(&c.econ)),
        ("eresp", g(&c.eresp)),
        ("chkfail", g(&c.chkfail)),
        ("chkdown", g(&c.chkdown)),
        ("req_tot", g(&c.req_tot)),
        ("hrsp_1xx", g(&c.hrsp[0])),
        ("hrsp_2xx", g(&c.hrsp[1])),
        ("hrsp_3xx", g(&c.hrsp[2])),
        ("hrsp_4xx", g(&c.hrsp[3])),
        ("hrsp_5xx", g(&c.hrsp[4])),
        ("hrsp_other", g(&c.hrsp[5])),
    ]
}

/// Everything the running proxy knows, shared by all connections of one
/// configuration generation.
pub struct World {
    pub proxies: Vec<Arc<ProxyRt>>,
    by_name: HashMap<String, usize>,
    /// Each proxy's `default_backend`, resolved once (by index in
    /// `proxies`).
    default_backends: Vec<Option<usize>>,
    /// `proc.*` variables.
    pub proc_vars: RwLock<Vars>,
    /// Map files, loaded at parse time and changed at run time.
    pub maps: Arc<MapStore>,
    pub started: Instant,
    /// The extensions loaded by the configuration.
    pub ext: Arc<crate::ext::Registry>,
    /// Variables set by `setenv`, seen by the `env` fetch and extensions
    /// before the process environment.
    pub env: HashMap<String, String>,
    /// The timeouts of requests and of their servers.
    pub timers: Arc<super::timer::Timers>,
}

impl World {
    pub fn new(
        proxies: Vec<Arc<ProxyRt>>,
        maps: Arc<MapStore>,
        ext: Arc<crate::ext::Registry>,
    ) -> World {
        let by_name: HashMap<String, usize> = proxies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect();
        let default_backends = proxies
            .iter()
            .map(|p| {
                let i = *by_name.get(p.config.default_backend.as_deref()?)?;
                proxies[i].is_backend().then_some(i)
            })
            .collect();
        World {
            proxies,
            by_name,
            default_backends,
            proc_vars: RwLock::new(Vars::default()),
            maps,
            started: Instant::now(),
            ext,
            env: HashMap::new(),
            timers: Arc::default(),
        }
    }

    /// An environment variable: `setenv` first, then the process's.
    pub fn env(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    }

    pub fn proxy(&self, name: &str) -> Option<&Arc<ProxyRt>> {
        self.by_name.get(name).map(|&i| &self.proxies[i])
    }

    pub fn backend(&self, name: &str) -> Option<&Arc<ProxyRt>> {
        self.proxy(name).filter(|p| p.is_backend())
    }

    /// The `default_backend` of proxy `p`, without a lookup by name when
    /// `p` belongs to this world.
    pub fn default_backend(&self, p: &Arc<ProxyRt>) -> Option<&Arc<ProxyRt>> {
        let i = (p.uuid as usize).wrapping_sub(1);
        match self.proxies.get(i) {
            Some(q) if Arc::ptr_eq(q, p) => self.default_backends[i].map(|b| &self.proxies[b]),
            _ => self.backend(p.config.default_backend.as_deref()?),
        }
    }
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("proxies", &self.proxies.len())
            .finish()
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
