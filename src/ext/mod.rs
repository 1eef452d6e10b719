//! The extension seam: the only way the proxy core calls extensions.
//!
//! An [`Extension`] registers names at load time (fetches, converters,
//! actions per facility, services, tasks) and is called through the methods
//! of its trait. It reaches back into the transaction through the `&mut Txn`
//! it is given. This module owns the traits and the [`Registry`] of loaded
//! extensions; it knows nothing of wasmtime (see `crate::wasm`) nor of HTTP
//! routing (see `crate::proxy`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::model::OnError;
use crate::proxy::txn::Txn;
use crate::sample::Sample;

pub mod applet;
pub mod native;

pub use applet::{HttpApplet, TcpApplet};

/// A boxed future, as trait methods that wait return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where an action runs (HAProxy's rule sets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Facility {
    TcpReq,
    TcpRes,
    HttpReq,
    HttpRes,
    HttpAfterRes,
}

impl Facility {
    pub fn name(self) -> &'static str {
        match self {
            Facility::TcpReq => "tcp-req",
            Facility::TcpRes => "tcp-res",
            Facility::HttpReq => "http-req",
            Facility::HttpRes => "http-res",
            Facility::HttpAfterRes => "http-after-res",
        }
    }

    pub fn parse(s: &str) -> Option<Facility> {
        Some(match s {
            "tcp-req" => Facility::TcpReq,
            "tcp-res" => Facility::TcpRes,
            "http-req" => Facility::HttpReq,
            "http-res" => Facility::HttpRes,
            "http-after-res" => Facility::HttpAfterRes,
            _ => return None,
        })
    }
}

/// The protocol a service speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceMode {
    Http,
    Tcp,
}

/// One name an extension offers, declared when it is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registration {
    Fetch {
        name: String,
    },
    Converter {
        name: String,
    },
    /// An action usable in the given facilities, taking exactly `nargs`
    /// arguments in the configuration.
    Action {
        name: String,
        facilities: Vec<Facility>,
        nargs: u32,
    },
    Service {
        name: String,
        mode: ServiceMode,
    },
    /// A background task, started when the proxy starts.
    Task {
        name: String,
    },
    /// Run once the proxy is configured, before it serves (HAProxy's
    /// `core.register_init`); its failure stops start-up.
    Init {
        name: String,
    },
}

/// What an action tells the rule engine (HAProxy's `act.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on with the next rule.
    Continue,
    /// Stop evaluating this rule set; go on with the transaction.
    Stop,
    /// End the transaction now (with `txn.reply` if one was set).
    Done,
    /// Deny: 403 on a request, 502 on a response.
    Deny,
    /// Internal error: 500.
    Error,
    /// Close the connection without a response.
    Abort,
    /// Invalid request: 400.
    Invalid,
}

/// Why an extension call failed. The proxy applies the extension point's
/// failure policy; the message is logged.
#[derive(Debug, thiserror::Error)]
pub enum ExtError {
    /// The extension ran but reported an error (a Lua error, a guest
    /// `result::err`).
    #[error("{0}")]
    Failed(String),
    /// The call ran out of its fuel or time budget.
    #[error("{0}")]
    Timeout(String),
    /// The extension's instance trapped or exceeded its memory; it was
    /// replaced.
    #[error("{0}")]
    Trap(String),
    /// The extension has no such name for this point.
    #[error("no {kind} named '{name}'")]
    Unknown { kind: &'static str, name: String },
}

/// An extension as the proxy sees it. Implemented by the Wasm runtime and, in
/// tests, by native in-process extensions (`native`).
///
/// Fetches and converters cannot wait (as in HAProxy); actions, services and
/// tasks can, and return futures.
pub trait Extension: Send + Sync + 'static {
    /// The namespace: `lua` for Lua scripts, the `as` name or file stem of a
    /// Wasm extension.
    fn namespace(&self) -> &str;

    /// The names this extension registered at load.
    fn registrations(&self) -> Vec<Registration>;

    /// What a failing action costs the request (`ext-load ... on-error`).
    fn on_error(&self) -> OnError {
        OnError::Continue
    }

    /// Runs a sample fetch. `Ok(None)` means "no sample".
    fn fetch(&self, name: &str, txn: &mut Txn, args: &[Sample])
    -> Result<Option<Sample>, ExtError>;

    /// Runs a converter on `input`. `Ok(None)` means "no sample".
    fn convert(
        &self,
        name: &str,
        txn: &mut Txn,
        input: Sample,
        args: &[Sample],
    ) -> Result<Option<Sample>, ExtError>;

    /// Runs an action. Actions may wait (sockets, sleep).
    fn action<'a>(
        &'a self,
        name: &'a str,
        facility: Facility,
        txn: &'a mut Txn,
        args: &'a [String],
    ) -> BoxFuture<'a, Result<Verdict, ExtError>>;

    /// Runs an HTTP service: it reads the request from the applet and writes
    /// the response to it.
    fn http_service<'a>(
        &'a self,
        name: &'a str,
        txn: &'a mut Txn,
        applet: &'a mut HttpApplet,
    ) -> BoxFuture<'a, Result<(), ExtError>>;

    /// Runs a TCP service over the client connection.
    fn tcp_service<'a>(
        &'a self,
        name: &'a str,
        txn: &'a mut Txn,
        applet: &'a mut TcpApplet,
    ) -> BoxFuture<'a, Result<(), ExtError>>;

    /// Runs a task until it returns (tasks usually loop with sleeps).
    fn task<'a>(&'a self, name: &'a str, ctx: TaskCtx) -> BoxFuture<'a, Result<(), ExtError>>;

    /// Runs an init function (`Registration::Init`) once the proxy is
    /// configured. By default, as a task that must end.
    fn init<'a>(&'a self, name: &'a str, ctx: TaskCtx) -> BoxFuture<'a, Result<(), ExtError>> {
        self.task(name, ctx)
    }
}

/// What a task can reach: the running proxy.
#[derive(Clone)]
pub struct TaskCtx {
    pub world: Arc<crate::proxy::state::World>,
}

/// A name resolved to the extension that registered it.
#[derive(Clone)]
pub struct ExtRef {
    pub ext: Arc<dyn Extension>,
    /// The name within the extension (without the namespace).
    pub name: Arc<str>,
    /// The full name, `ns.name`, for logs.
    pub full: Arc<str>,
}

impl fmt::Debug for ExtRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// The loaded extensions and the names they registered.
#[derive(Default)]
pub struct Registry {
    exts: Vec<Arc<dyn Extension>>,
    fetches: HashMap<String, ExtRef>,
    converters: HashMap<String, ExtRef>,
    /// Actions by full name, each with the facilities and arg count per facility.
    actions: HashMap<String, (ExtRef, Vec<(Facility, u32)>)>,
    services: HashMap<String, (ExtRef, ServiceMode)>,
    tasks: Vec<ExtRef>,
    inits: Vec<ExtRef>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("extensions", &self.exts.len())
            .finish()
    }
}

/// Why a name could not be resolved; the config parser turns it into
/// `file:line: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown extension '{0}'")]
    UnknownExtension(String),
    #[error("extension '{ns}' has no {kind} '{name}'")]
    UnknownName {
        ns: String,
        kind: &'static str,
        name: String,
    },
    #[error("action '{name}' is not registered for {facility}")]
    WrongFacility {
        name: String,
        facility: &'static str,
    },
    #[error("action '{name}' expects {expected} argument(s), got {got}")]
    WrongArgCount {
        name: String,
        expected: u32,
        got: usize,
    },
    #[error("service '{name}' is a {actual} service, {wanted} was expected here")]
    WrongServiceMode {
        name: String,
        actual: &'static str,
        wanted: &'static str,
    },
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds an extension and its registrations. A name registered again
    /// replaces the earlier one (as HAProxy does, with a warning).
    pub fn add(&mut self, ext: Arc<dyn Extension>) {
        let ns = ext.namespace().to_string();
        for reg in ext.registrations() {
            let mk = |name: &str| ExtRef {
                ext: Arc::clone(&ext),
                name: Arc::from(name),
                full: Arc::from(format!("{ns}.{name}")),
            };
            match reg {
                Registration::Fetch { name } => {
                    let r = mk(&name);
                    self.fetches.insert(r.full.to_string(), r);
                }
                Registration::Converter { name } => {
                    let r = mk(&name);
                    self.converters.insert(r.full.to_string(), r);
                }
                Registration::Action {
                    name,
                    facilities,
                    nargs,
                } => {
                    let r = mk(&name);
                    let entry = self
                        .actions
                        .entry(r.full.to_string())
                        .or_insert_with(|| (r.clone(), Vec::new()));
                    entry.0 = r;
                    for f in facilities {
                        if entry.1.iter().any(|(g, _)| *g == f) {
                            tracing::warn!(action = %entry.0.full, facility = f.name(), "action registered more than once; the later one wins");
                            entry.1.retain(|(g, _)| *g != f);
                        }
                        entry.1.push((f, nargs));
                    }
                }
                Registration::Service { name, mode } => {
                    let r = mk(&name);
                    self.services.insert(r.full.to_string(), (r, mode));
                }
                Registration::Task { name } => self.tasks.push(mk(&name)),
                Registration::Init { name } => self.inits.push(mk(&name)),
            }
        }
        self.exts.push(ext);
    }

    pub fn extensions(&self) -> &[Arc<dyn Extension>] {
        &self.exts
    }

    fn has_namespace(&self, full: &str) -> bool {
        let ns = full.split('.').next().unwrap_or("");
        self.exts.iter().any(|e| e.namespace() == ns)
    }

    fn unknown(&self, full: &str, kind: &'static str) -> ResolveError {
        if self.has_namespace(full) {
            let (ns, name) = full.split_once('.').unwrap_or((full, ""));
            ResolveError::UnknownName {
                ns: ns.to_string(),
                kind,
                name: name.to_string(),
            }
        } else {
            ResolveError::UnknownExtension(full.to_string())
        }
    }

    pub fn fetch(&self, full: &str) -> Result<ExtRef, ResolveError> {
        self.fetches
            .get(full)
            .cloned()
            .ok_or_else(|| self.unknown(full, "fetch"))
    }

    pub fn converter(&self, full: &str) -> Result<ExtRef, ResolveError> {
        self.converters
            .get(full)
            .cloned()
            .ok_or_else(|| self.unknown(full, "converter"))
    }

    /// Resolves an action for a facility and checks its argument count.
    pub fn action(
        &self,
        full: &str,
        facility: Facility,
        nargs: usize,
    ) -> Result<ExtRef, ResolveError> {
        let (r, facs) = self
            .actions
            .get(full)
            .ok_or_else(|| self.unknown(full, "action"))?;
        let (_, expected) = facs.iter().find(|(f, _)| *f == facility).ok_or_else(|| {
            ResolveError::WrongFacility {
                name: full.to_string(),
                facility: facility.name(),
            }
        })?;
        // HAProxy passes extra words as arguments only up to the declared
        // count; fewer than declared is an error.
        if nargs < *expected as usize {
            return Err(ResolveError::WrongArgCount {
                name: full.to_string(),
                expected: *expected,
                got: nargs,
            });
        }
        Ok(r.clone())
    }

    pub fn service(&self, full: &str, mode: ServiceMode) -> Result<ExtRef, ResolveError> {
        let (r, m) = self
            .services
            .get(full)
            .ok_or_else(|| self.unknown(full, "service"))?;
        if *m != mode {
            let name = |m: ServiceMode| match m {
                ServiceMode::Http => "http",
                ServiceMode::Tcp => "tcp",
            };
            return Err(ResolveError::WrongServiceMode {
                name: full.to_string(),
                actual: name(*m),
                wanted: name(mode),
            });
        }
        Ok(r.clone())
    }

    pub fn service_mode(&self, full: &str) -> Option<ServiceMode> {
        self.services.get(full).map(|(_, m)| *m)
    }

    pub fn tasks(&self) -> &[ExtRef] {
        &self.tasks
    }

    /// What runs once the proxy is configured, in registration order.
    pub fn inits(&self) -> &[ExtRef] {
        &self.inits
    }

    /// Names of all registered actions, services, fetches and converters
    /// (for `--print-config` and diagnostics).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .fetches
            .keys()
            .chain(self.converters.keys())
            .chain(self.actions.keys())
            .chain(self.services.keys())
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// A response body chunk stream for services.
pub type BodyChunk = Bytes;
