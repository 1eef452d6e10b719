//! The transaction: one request/response exchange (or one TCP session in
//! `mode tcp`), as fetches, converters, rules and extensions see it.

use std::any::Any;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use parking_lot::Mutex;

use super::state::{ProxyRt, ServerRt, World};
use crate::sample::{Sample, Scope, VarName, Vars};

/// The client connection: lives across the transactions of a keep-alive
/// connection (HAProxy's session).
#[derive(Debug)]
pub struct Session {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// `sess.*` variables.
    pub vars: Mutex<Vars>,
    /// Whether the client connection is TLS (`ssl_fc`).
    pub tls: bool,
    pub accepted_at: SystemTime,
}

impl Session {
    pub fn new(src: SocketAddr, dst: SocketAddr) -> Session {
        Session {
            src,
            dst,
            vars: Mutex::new(Vars::default()),
            tls: false,
            accepted_at: SystemTime::now(),
        }
    }
}

/// Which part of the transaction is being processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// TCP connection accepted, nothing read yet.
    Connection,
    /// Request being analysed (tcp-request content, http-request).
    Request,
    /// Response being analysed (tcp-response, http-response).
    Response,
}

/// A response an action or an extension asks the proxy to send instead of
/// going on (HAProxy's `txn:done(reply)`, `http-request return`).
#[derive(Clone, Debug, Default)]
pub struct Reply {
    pub status: u16,
    pub reason: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Produced on purpose (`return`, `redirect`, an extension's reply), as
    /// opposed to a denial or an error: HAProxy logs the first with a
    /// termination state starting `L`, the second with `P`.
    pub local: bool,
}

/// One transaction. Fetches read it; actions and extensions change it.
///
/// Boxed, so that lending it to an extension's store for a call (a swap)
/// moves a pointer, not the whole transaction.
pub struct Txn(Box<TxnData>);

/// What a transaction holds (reached through [`Txn`]'s `Deref`).
pub struct TxnData {
    pub world: Arc<World>,
    pub sess: Arc<Session>,
    pub frontend: Arc<ProxyRt>,
    pub backend: Option<Arc<ProxyRt>>,
    pub server: Option<Arc<ServerRt>>,
    pub phase: Phase,
    pub vars_txn: Vars,
    pub vars_req: Vars,
    pub vars_res: Vars,
    /// The request head (HTTP mode), as it will be forwarded.
    pub req: Option<http::request::Parts>,
    /// The request body when it was buffered (`req.body`).
    pub req_body: Option<Bytes>,
    /// The response head (HTTP mode), once known.
    pub res: Option<http::response::Parts>,
    /// In TCP mode, the bytes waiting in the channel being analysed: from
    /// the client during request rules (`req.payload`), from the server
    /// during response rules. Rules may rewrite them (`Channel:set`).
    pub payload: Bytes,
    /// Bytes to send to the client, then the server, ahead of `payload`
    /// (`Channel:send` in TCP mode).
    pub to_client: Vec<u8>,
    pub to_server: Vec<u8>,
    /// Per-extension private data (`txn:set_priv`), keyed by namespace.
    pub privs: HashMap<String, Box<dyn Any + Send + Sync>>,
    /// A reply that ends the transaction here (`txn:done`, `return`).
    pub reply: Option<Reply>,
    /// Set when the transaction must stop (done, deny, reject).
    pub done: bool,
    /// Service chosen by `use-service` (its full name, e.g. `lua.magic8`).
    pub service: Option<String>,
    pub started: Instant,
    pub started_at: SystemTime,
    /// Unique id (`unique-id` / `uuid` in logs).
    pub id: u64,
}

impl std::ops::Deref for Txn {
    type Target = TxnData;
    fn deref(&self) -> &TxnData {
        &self.0
    }
}

impl std::ops::DerefMut for Txn {
    fn deref_mut(&mut self) -> &mut TxnData {
        &mut self.0
    }
}

impl Txn {
    pub fn new(world: Arc<World>, sess: Arc<Session>, frontend: Arc<ProxyRt>, id: u64) -> Txn {
        Txn::empty(world, sess, frontend, id, Instant::now(), SystemTime::now())
    }

    /// An empty transaction of the same session, to stand in while this one
    /// is lent to an extension's store for one call. It allocates nothing.
    pub fn placeholder(&self) -> Txn {
        let mut t = Txn::empty(
            Arc::clone(&self.world),
            Arc::clone(&self.sess),
            Arc::clone(&self.frontend),
            self.id,
            self.started,
            self.started_at,
        );
        t.phase = self.phase;
        t
    }

    /// A copy of what rules read (variables, request, response), without
    /// the extensions' private data: what response rules run on while a
    /// service owns the transaction.
    pub fn snapshot(&self) -> Txn {
        let mut t = self.placeholder();
        t.backend = self.backend.clone();
        t.server = self.server.clone();
        t.vars_txn = self.vars_txn.clone();
        t.vars_req = self.vars_req.clone();
        t.vars_res = self.vars_res.clone();
        t.req = self.req.clone();
        t.req_body = self.req_body.clone();
        t.res = self.res.clone();
        t.service = self.service.clone();
        t
    }

    fn empty(
        world: Arc<World>,
        sess: Arc<Session>,
        frontend: Arc<ProxyRt>,
        id: u64,
        started: Instant,
        started_at: SystemTime,
    ) -> Txn {
        Txn(Box::new(TxnData {
            world,
            sess,
            frontend,
            backend: None,
            server: None,
            phase: Phase::Connection,
            vars_txn: Vars::default(),
            vars_req: Vars::default(),
            vars_res: Vars::default(),
            req: None,
            req_body: None,
            res: None,
            payload: Bytes::new(),
            to_client: Vec::new(),
            to_server: Vec::new(),
            privs: HashMap::new(),
            reply: None,
            done: false,
            service: None,
            started,
            started_at,
            id,
        }))
    }

    /// Reads a variable of any scope.
    pub fn get_var(&self, var: &VarName) -> Option<Sample> {
        match var.scope {
            Scope::Proc => self.world.proc_vars.read().get(&var.name).cloned(),
            Scope::Sess => self.sess.vars.lock().get(&var.name).cloned(),
            Scope::Txn => self.vars_txn.get(&var.name).cloned(),
            Scope::Req => self.vars_req.get(&var.name).cloned(),
            Scope::Res => self.vars_res.get(&var.name).cloned(),
        }
    }

    pub fn set_var(&mut self, var: &VarName, value: Sample) {
        match var.scope {
            Scope::Proc => self.world.proc_vars.write().set(&var.name, value),
            Scope::Sess => self.sess.vars.lock().set(&var.name, value),
            Scope::Txn => self.vars_txn.set(&var.name, value),
            Scope::Req => self.vars_req.set(&var.name, value),
            Scope::Res => self.vars_res.set(&var.name, value),
        }
    }

    pub fn unset_var(&mut self, var: &VarName) {
        match var.scope {
            Scope::Proc => {
                self.world.proc_vars.write().unset(&var.name);
            }
            Scope::Sess => {
                self.sess.vars.lock().unset(&var.name);
            }
            Scope::Txn => {
                self.vars_txn.unset(&var.name);
            }
            Scope::Req => {
                self.vars_req.unset(&var.name);
            }
            Scope::Res => {
                self.vars_res.unset(&var.name);
            }
        }
    }

    /// The headers of the message being processed: the response in the
    /// response phase, else the request.
    pub fn headers(&self) -> Option<&HeaderMap> {
        match self.phase {
            Phase::Response => self.res.as_ref().map(|r| &r.headers),
            _ => self.req.as_ref().map(|r| &r.headers),
        }
    }

    pub fn req_headers_mut(&mut self) -> Option<&mut HeaderMap> {
        self.req.as_mut().map(|r| &mut r.headers)
    }

    pub fn res_headers_mut(&mut self) -> Option<&mut HeaderMap> {
        self.res.as_mut().map(|r| &mut r.headers)
    }

    /// All values of a request header, in order, split on commas as HAProxy's
    /// `req.hdr` does.
    pub fn req_header_values(&self, name: &str) -> Vec<String> {
        self.req
            .as_ref()
            .map(|r| split_header_values(&r.headers, name))
            .unwrap_or_default()
    }

    pub fn res_status(&self) -> Option<StatusCode> {
        self.res.as_ref().map(|r| r.status)
    }
}

/// Values of a header, each line split on unquoted commas (HAProxy's `hdr`).
pub fn split_header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for v in headers.get_all(name) {
        let s = String::from_utf8_lossy(v.as_bytes());
        let mut cur = String::new();
        let mut quoted = false;
        for c in s.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    cur.push(c);
                }
                ',' if !quoted => {
                    out.push(cur.trim().to_string());
                    cur.clear();
                }
                _ => cur.push(c),
            }
        }
        out.push(cur.trim().to_string());
    }
    out
}

/// Whole-line values of a header (HAProxy's `fhdr`: no comma splitting).
pub fn full_header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .collect()
}

/// Builds a header value from text, replacing bytes HTTP forbids.
pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let cleaned: String = s
            .chars()
            .map(|c| {
                if c == '\r' || c == '\n' || c == '\0' {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static(""))
    })
}
