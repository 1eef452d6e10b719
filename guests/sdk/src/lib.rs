//! Write moonbox extensions in Rust.
//!
//! An extension is a function that registers what it offers, and a call to
//! [`export!`]:
//!
//! ```ignore
//! use moonbox_sdk::prelude::*;
//!
//! fn init(ext: &mut Registrar, _args: &[String]) -> Result<(), String> {
//!     ext.fetch("is_admin", |txn, _args| {
//!         Ok(Some(Sample::from(txn.req_header("x-user").as_deref() == Some("admin"))))
//!     });
//!     ext.action("greet", &[Facility::HttpReq], 0, |txn, _args| async move {
//!         sleep_ms(10).await;
//!         txn.set_req_header("x-greeting", "hello");
//!         Ok(Verdict::Continue)
//!     });
//!     Ok(())
//! }
//! moonbox_sdk::export!(init);
//! ```
//!
//! Fetches and converters are plain functions: they cannot wait. Actions,
//! services and tasks are `async`: they wait with [`sleep_ms`], [`TcpSocket`]
//! and the applets' `receive`/`send`, and while they wait the proxy runs other
//! invocations on the same instance.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "extension",
        pub_export_macro: true,
        export_macro_name: "export_raw",
        default_bindings_module: "moonbox_sdk::bindings",
    });
}

use bindings::moonbox::ext as host;
use host::types as wit;

pub use wit::{Facility, Level, Reply, Sample, Verdict};

/// What most extensions need.
pub mod prelude {
    pub use crate::{
        Facility, HttpApplet, Level, Registrar, Reply, Sample, TcpApplet, TcpSocket, Tls, Txn,
        Verdict, log, now, sleep_ms, yield_now,
    };
}

// ---------------------------------------------------------------------------
// Samples

impl Sample {
    /// The sample as a string, converted as HAProxy casts to `str`.
    pub fn to_str(&self) -> String {
        match self {
            Sample::Boolean(b) => (if *b { "1" } else { "0" }).to_string(),
            Sample::Sint(i) => i.to_string(),
            Sample::Str(s) | Sample::Meth(s) => s.clone(),
            Sample::Bin(b) => String::from_utf8_lossy(b).into_owned(),
            Sample::Ipv4(b) if b.len() == 4 => format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]),
            Sample::Ipv6(b) if b.len() == 16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                std::net::Ipv6Addr::from(a).to_string()
            }
            Sample::Ipv4(_) | Sample::Ipv6(_) => String::new(),
        }
    }

    /// The sample as an integer, converted as HAProxy casts to `sint`
    /// (leading digits of a string; `None` when there are none).
    pub fn to_int(&self) -> Option<i64> {
        match self {
            Sample::Boolean(b) => Some(*b as i64),
            Sample::Sint(i) => Some(*i),
            Sample::Str(s) | Sample::Meth(s) => {
                let s = s.trim_start();
                let end = s
                    .char_indices()
                    .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+'))))
                    .map_or(s.len(), |(i, _)| i);
                s[..end].parse().ok()
            }
            _ => None,
        }
    }

    /// The sample as a boolean: non-zero integers and non-empty strings are
    /// true.
    pub fn to_bool(&self) -> bool {
        match self {
            Sample::Boolean(b) => *b,
            Sample::Sint(i) => *i != 0,
            Sample::Str(s) | Sample::Meth(s) => !s.is_empty(),
            Sample::Bin(b) | Sample::Ipv4(b) | Sample::Ipv6(b) => !b.is_empty(),
        }
    }
}

impl From<bool> for Sample {
    fn from(v: bool) -> Sample {
        Sample::Boolean(v)
    }
}
impl From<i64> for Sample {
    fn from(v: i64) -> Sample {
        Sample::Sint(v)
    }
}
impl From<String> for Sample {
    fn from(v: String) -> Sample {
        Sample::Str(v)
    }
}
impl From<&str> for Sample {
    fn from(v: &str) -> Sample {
        Sample::Str(v.to_string())
    }
}
impl From<Vec<u8>> for Sample {
    fn from(v: Vec<u8>) -> Sample {
        Sample::Bin(v)
    }
}

// ---------------------------------------------------------------------------
// Logging

/// Logging, as HAProxy's `core.log` and its level helpers.
pub mod log {
    use super::{Level, host};

    pub fn log(level: Level, msg: &str) {
        host::log::log(level, msg);
    }
    pub fn debug(msg: &str) {
        log(Level::Debug, msg)
    }
    pub fn info(msg: &str) {
        log(Level::Info, msg)
    }
    pub fn warning(msg: &str) {
        log(Level::Warning, msg)
    }
    pub fn alert(msg: &str) {
        log(Level::Alert, msg)
    }
}

/// The wall clock: seconds and microseconds since the Unix epoch.
pub fn now() -> (u64, u32) {
    host::clock::now()
}

/// Monotonic milliseconds.
pub fn monotonic_ms() -> u64 {
    host::clock::monotonic_ms()
}

// ---------------------------------------------------------------------------
// The transaction

/// The transaction of the invocation being run. It is a token: every method
/// acts on the current transaction, so it can be copied into `async` blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Txn {
    _priv: (),
}

/// Header lists, as `(name, value)` pairs in order.
pub type Headers = Vec<(String, String)>;

impl Txn {
    /// Calls a built-in fetch by name: `txn.f("req.hdr", &["host".into()])`.
    pub fn f(&self, name: &str, args: &[Sample]) -> Result<Option<Sample>, String> {
        host::txn::fetch(name, args)
    }
    /// Calls a built-in converter by name.
    pub fn c(&self, name: &str, input: Sample, args: &[Sample]) -> Result<Option<Sample>, String> {
        host::txn::convert(name, &input, args)
    }
    /// A fetch's result as a string, `""` when there is none (HAProxy's `sf`).
    pub fn sf(&self, name: &str, args: &[Sample]) -> String {
        match self.f(name, args) {
            Ok(Some(s)) => s.to_str(),
            _ => String::new(),
        }
    }
    pub fn get_var(&self, name: &str) -> Option<Sample> {
        host::txn::get_var(name)
    }
    pub fn set_var(&self, name: &str, value: impl Into<Sample>) -> Result<(), String> {
        host::txn::set_var(name, &value.into())
    }
    pub fn unset_var(&self, name: &str) -> Result<(), String> {
        host::txn::unset_var(name)
    }
    /// This extension's private data for this transaction.
    pub fn get_priv(&self) -> Option<Vec<u8>> {
        host::txn::get_priv()
    }
    pub fn set_priv(&self, data: Option<&[u8]>) {
        host::txn::set_priv(data)
    }
    /// A number unique to this transaction.
    pub fn id(&self) -> u64 {
        host::txn::id()
    }
    pub fn is_http(&self) -> bool {
        host::txn::is_http()
    }
    pub fn req_headers(&self) -> Headers {
        host::txn::req_headers()
    }
    /// The first value of a request header (case-insensitive name).
    pub fn req_header(&self, name: &str) -> Option<String> {
        self.req_headers()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    pub fn res_headers(&self) -> Headers {
        host::txn::res_headers()
    }
    pub fn add_req_header(&self, name: &str, value: &str) {
        host::txn::req_add_header(name, value)
    }
    pub fn set_req_header(&self, name: &str, value: &str) {
        host::txn::req_set_header(name, value)
    }
    pub fn del_req_header(&self, name: &str) {
        host::txn::req_del_header(name)
    }
    pub fn add_res_header(&self, name: &str, value: &str) {
        host::txn::res_add_header(name, value)
    }
    pub fn set_res_header(&self, name: &str, value: &str) {
        host::txn::res_set_header(name, value)
    }
    pub fn del_res_header(&self, name: &str) {
        host::txn::res_del_header(name)
    }
    pub fn method(&self) -> String {
        host::txn::req_method()
    }
    pub fn path(&self) -> String {
        host::txn::req_path()
    }
    pub fn query(&self) -> Option<String> {
        host::txn::req_query()
    }
    pub fn uri(&self) -> String {
        host::txn::req_uri()
    }
    pub fn set_method(&self, m: &str) -> Result<(), String> {
        host::txn::req_set_method(m)
    }
    pub fn set_path(&self, p: &str) -> Result<(), String> {
        host::txn::req_set_path(p)
    }
    pub fn set_query(&self, q: &str) -> Result<(), String> {
        host::txn::req_set_query(q)
    }
    pub fn set_uri(&self, u: &str) -> Result<(), String> {
        host::txn::req_set_uri(u)
    }
    /// The response status, once there is a response.
    pub fn status(&self) -> Option<u16> {
        host::txn::res_status()
    }
    pub fn set_status(&self, status: u16, reason: Option<&str>) -> Result<(), String> {
        host::txn::res_set_status(status, reason)
    }
    /// Ends the transaction, answering `reply` when given. Return
    /// `Verdict::Done` from the action after calling it.
    pub fn done(&self, reply: Option<Reply>) {
        host::txn::done(reply.as_ref())
    }

    /// TCP mode: the bytes waiting in the request (`response` false) or
    /// response channel, received and not yet forwarded.
    pub fn channel_data(&self, response: bool) -> Vec<u8> {
        host::txn::channel_data(response)
    }
    /// TCP mode: replaces the bytes waiting in the channel being analysed.
    pub fn channel_set(&self, response: bool, data: &[u8]) -> Result<(), String> {
        host::txn::channel_set(response, data)
    }
    /// TCP mode: sends bytes to the channel's peer ahead of what waits.
    pub fn channel_send(&self, response: bool, data: &[u8]) -> Result<(), String> {
        host::txn::channel_send(response, data)
    }
}

impl Reply {
    /// A reply with a status and a body, as `txn:reply()` builds them.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            reason: None,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// Proxies, servers and their stats.
pub mod proxies {
    use super::host::proxies as p;
    pub use super::host::proxies::{ProxyInfo, ServerInfo};
    use std::collections::HashMap;

    /// Every frontend and backend with its servers.
    pub fn list() -> Vec<ProxyInfo> {
        p::list_proxies()
    }
    /// HAProxy's stats columns of a proxy (`scur`, `stot`, `status`, ...).
    pub fn stats(proxy: &str) -> Option<HashMap<String, String>> {
        p::proxy_stats(proxy).map(|v| v.into_iter().collect())
    }
    /// HAProxy's stats columns of a server.
    pub fn server_stats(proxy: &str, server: &str) -> Option<HashMap<String, String>> {
        p::server_stats(proxy, server).map(|v| v.into_iter().collect())
    }
}

/// Maps loaded by the configuration.
pub mod maps {
    use super::host::maps as m;
    pub fn lookup(file: &str, method: &str, key: &str) -> Result<Option<String>, String> {
        m::lookup(file, method, key)
    }
    pub fn set(file: &str, key: &str, value: &str) -> Result<(), String> {
        m::set(file, key, value)
    }
    pub fn del(file: &str, key: &str) -> Result<(), String> {
        m::del(file, key)
    }
}

// ---------------------------------------------------------------------------
// Waiting

pub use wit::{IoError, IoErrorKind};

/// Waits for one I/O the host performs: the future returns `Pending` once,
/// which the executor turns into `step::wait`, and is ready when the host
/// resumes the invocation.
struct Wait {
    io: Option<wit::Io>,
}

impl Future for Wait {
    type Output = wit::IoResult;
    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<wit::IoResult> {
        if let Some(io) = self.io.take() {
            EXEC.with(|e| {
                let mut e = e.borrow_mut();
                // A pending forced yield gives way to a real wait.
                if e.request
                    .as_ref()
                    .is_some_and(|r| !matches!(r, wit::Io::Yield))
                {
                    e.overlapping = true;
                }
                e.request = Some(io);
            });
            return Poll::Pending;
        }
        match EXEC.with(|e| e.borrow_mut().result.take()) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

async fn wait(io: wit::Io) -> wit::IoResult {
    Wait { io: Some(io) }.await
}

/// The waits of the ABI as they are, for guests that build their own API
/// on them (the Lua guest does).
pub mod raw {
    pub use super::wit::{
        AppletHead, AppletReceiveRequest, ConnectRequest, Io, IoResult, ReceivePattern,
        ReceiveRequest, TlsOptions,
    };

    /// Waits for one I/O the host performs.
    pub async fn wait(io: Io) -> IoResult {
        super::wait(io).await
    }

    /// Queues the response head of an HTTP service (`applet.start`).
    pub fn applet_start(head: &AppletHead) -> Result<(), String> {
        super::host::applet::start(head)
    }

    /// Queues bytes for the applet's client (`applet.write`); false when
    /// the queue is full and the guest must wait with `Io::AppletSend`.
    pub fn applet_write(data: &[u8]) -> Result<bool, String> {
        super::host::applet::write(data)
    }

    /// Asks the host for a turn (`io::yield`) on behalf of code that
    /// suspends itself without a future, as Lua's forced yields do: the
    /// current poll returns pending and the invocation is resumed after
    /// other work had its turn.
    pub fn request_yield() {
        super::EXEC.with(|e| {
            let mut e = e.borrow_mut();
            if e.request.is_none() {
                e.request = Some(Io::Yield);
            }
        });
    }
}

fn io_error(kind: IoErrorKind, message: &str) -> IoError {
    IoError {
        kind,
        message: message.to_string(),
        partial: Vec::new(),
    }
}

fn expect_ok(r: wit::IoResult) -> Result<(), IoError> {
    match r {
        wit::IoResult::Failed(e) => Err(e),
        _ => Ok(()),
    }
}

fn expect_data(r: wit::IoResult) -> Result<Vec<u8>, IoError> {
    match r {
        wit::IoResult::Data(d) => Ok(d),
        wit::IoResult::Failed(e) => Err(e),
        _ => Err(io_error(
            IoErrorKind::Other,
            "unexpected answer from the host",
        )),
    }
}

fn expect_sent(r: wit::IoResult) -> Result<usize, IoError> {
    match r {
        wit::IoResult::Sent(n) => Ok(n as usize),
        wit::IoResult::Failed(e) => Err(e),
        _ => Err(io_error(
            IoErrorKind::Other,
            "unexpected answer from the host",
        )),
    }
}

/// Sleeps for `ms` milliseconds (HAProxy's `core.msleep`).
pub async fn sleep_ms(ms: u64) {
    wait(wit::Io::Sleep(ms)).await;
}

/// Gives other invocations a turn (HAProxy's `core.yield`).
pub async fn yield_now() {
    wait(wit::Io::Yield).await;
}

/// How much a receive reads.
#[derive(Clone, Copy, Debug)]
pub enum Receive {
    /// One line, without its end of line.
    Line,
    /// Everything until the peer closes.
    All,
    /// This many bytes (fewer at the end of the stream).
    Count(u32),
}

impl From<Receive> for wit::ReceivePattern {
    fn from(r: Receive) -> wit::ReceivePattern {
        match r {
            Receive::Line => wit::ReceivePattern::Line,
            Receive::All => wit::ReceivePattern::All,
            Receive::Count(n) => wit::ReceivePattern::Count(n),
        }
    }
}

/// An outgoing TCP connection (HAProxy's `core.tcp()`). The proxy connects
/// only where the extension's `allow-connect` allows.
#[derive(Debug)]
pub struct TcpSocket {
    id: u32,
    timeout_ms: Option<u64>,
    local: String,
}

/// TLS over a [`TcpSocket`].
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// Sent in SNI and checked against the certificate when verifying.
    pub server_name: Option<String>,
    /// Verify the certificate against the Mozilla root store.
    pub verify: bool,
}

impl TcpSocket {
    /// Connects to `addr` ("IP:PORT").
    pub async fn connect(addr: &str) -> Result<TcpSocket, IoError> {
        Self::open(addr, None, None).await
    }

    pub async fn connect_timeout(
        addr: &str,
        timeout_ms: Option<u64>,
    ) -> Result<TcpSocket, IoError> {
        Self::open(addr, timeout_ms, None).await
    }

    /// Connects to `addr` ("IP:PORT") and runs a TLS handshake over it.
    pub async fn connect_tls(
        addr: &str,
        tls: Tls,
        timeout_ms: Option<u64>,
    ) -> Result<TcpSocket, IoError> {
        Self::open(addr, timeout_ms, Some(tls)).await
    }

    async fn open(
        addr: &str,
        timeout_ms: Option<u64>,
        tls: Option<Tls>,
    ) -> Result<TcpSocket, IoError> {
        let id = EXEC.with(|e| {
            let mut e = e.borrow_mut();
            e.next_socket += 1;
            e.next_socket
        });
        let r = wait(wit::Io::Connect(wit::ConnectRequest {
            socket: id,
            addr: addr.to_string(),
            timeout_ms,
            tls: tls.map(|t| wit::TlsOptions {
                server_name: t.server_name,
                verify: t.verify,
            }),
        }))
        .await;
        let local = String::from_utf8_lossy(&expect_data(r)?).into_owned();
        Ok(TcpSocket {
            id,
            timeout_ms,
            local,
        })
    }

    /// The local address of the connection ("IP:PORT").
    pub fn local_addr(&self) -> &str {
        &self.local
    }

    /// Timeout of each later send or receive.
    pub fn set_timeout_ms(&mut self, ms: Option<u64>) {
        self.timeout_ms = ms;
    }

    pub async fn send(&self, data: impl AsRef<[u8]>) -> Result<usize, IoError> {
        expect_sent(wait(wit::Io::Send((self.id, data.as_ref().to_vec()))).await)
    }

    pub async fn receive(&self, how: Receive) -> Result<Vec<u8>, IoError> {
        expect_data(
            wait(wit::Io::Receive(wit::ReceiveRequest {
                socket: self.id,
                pattern: how.into(),
                timeout_ms: self.timeout_ms,
            }))
            .await,
        )
    }

    /// One line, as a string.
    pub async fn receive_line(&self) -> Result<String, IoError> {
        let b = self.receive(Receive::Line).await?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    pub async fn close(self) -> Result<(), IoError> {
        expect_ok(wait(wit::Io::Close(self.id)).await)
    }
}

// ---------------------------------------------------------------------------
// Applets

/// The HTTP service's view of its client (HAProxy's `AppletHTTP`).
#[derive(Debug)]
pub struct HttpApplet {
    pub method: String,
    pub path: String,
    pub query: String,
    pub version: String,
    /// Request headers in order.
    pub headers: Headers,
    /// The request body length when announced.
    pub length: Option<u64>,
    status: u16,
    reason: Option<String>,
    res_headers: Headers,
    started: bool,
}

impl HttpApplet {
    fn current() -> HttpApplet {
        let r = host::applet::request().unwrap_or(host::applet::HttpRequest {
            method: String::new(),
            path: String::new(),
            query: String::new(),
            version: String::new(),
            headers: Vec::new(),
            length: None,
        });
        HttpApplet {
            method: r.method,
            path: r.path,
            query: r.query,
            version: r.version,
            headers: r.headers,
            length: r.length,
            status: 200,
            reason: None,
            res_headers: Vec::new(),
            started: false,
        }
    }

    /// The first value of a request header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set_status(&mut self, status: u16, reason: Option<&str>) {
        self.status = status;
        self.reason = reason.map(str::to_string);
    }

    pub fn add_header(&mut self, name: &str, value: &str) {
        self.res_headers.push((name.to_string(), value.to_string()));
    }

    /// Reads request body bytes.
    pub async fn receive(&mut self, how: Receive) -> Result<Vec<u8>, IoError> {
        expect_data(
            wait(wit::Io::AppletReceive(wit::AppletReceiveRequest {
                pattern: how.into(),
                timeout_ms: None,
            }))
            .await,
        )
    }

    /// Sends the status and headers: queued, and sent when the call next
    /// waits or returns (so it never waits itself).
    pub async fn start_response(&mut self) -> Result<(), IoError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let head = wit::AppletHead {
            status: self.status,
            reason: self.reason.clone(),
            headers: std::mem::take(&mut self.res_headers),
        };
        host::applet::start(&head).map_err(|e| io_error(IoErrorKind::Invalid, &e))
    }

    /// Sends body bytes (starting the response first if needed): queued
    /// like the head, or, once 64 KiB are queued, waiting for the client.
    pub async fn send(&mut self, data: impl AsRef<[u8]>) -> Result<usize, IoError> {
        self.start_response().await?;
        applet_send(data.as_ref()).await
    }
}

/// Queues `data` for the applet's client, or waits for it to be sent when
/// the queue is full.
async fn applet_send(data: &[u8]) -> Result<usize, IoError> {
    match host::applet::write(data) {
        Ok(true) => Ok(data.len()),
        Ok(false) => expect_sent(wait(wit::Io::AppletSend(data.to_vec())).await),
        Err(e) => Err(io_error(IoErrorKind::Invalid, &e)),
    }
}

/// The TCP service's view of its client (HAProxy's `AppletTCP`).
#[derive(Debug, Default)]
pub struct TcpApplet {
    _priv: (),
}

impl TcpApplet {
    pub async fn receive(&mut self, how: Receive) -> Result<Vec<u8>, IoError> {
        expect_data(
            wait(wit::Io::AppletReceive(wit::AppletReceiveRequest {
                pattern: how.into(),
                timeout_ms: None,
            }))
            .await,
        )
    }
    /// One line, with its end of line (HAProxy's `getline`); empty at the end.
    pub async fn getline(&mut self) -> Result<String, IoError> {
        let b = self.receive(Receive::Line).await?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }
    pub async fn send(&mut self, data: impl AsRef<[u8]>) -> Result<usize, IoError> {
        applet_send(data.as_ref()).await
    }
}

// ---------------------------------------------------------------------------
// Registration

type FetchFn = Box<dyn Fn(Txn, &[Sample]) -> Result<Option<Sample>, String>>;
type ConvFn = Box<dyn Fn(Txn, Sample, &[Sample]) -> Result<Option<Sample>, String>>;
type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;
type ActionFn = Box<dyn Fn(Txn, Vec<String>) -> LocalFuture<Result<Verdict, String>>>;
type HttpServiceFn = Box<dyn Fn(Txn, HttpApplet) -> LocalFuture<Result<(), String>>>;
type TcpServiceFn = Box<dyn Fn(Txn, TcpApplet) -> LocalFuture<Result<(), String>>>;
type TaskFn = Box<dyn Fn() -> LocalFuture<Result<(), String>>>;

enum Service {
    Http(HttpServiceFn),
    Tcp(TcpServiceFn),
}

/// What a registration runs.
enum Handler {
    Fetch(FetchFn),
    Conv(ConvFn),
    Action(ActionFn),
    Service(Service),
    Task(TaskFn),
}

/// What `init` registers. Names are used in the configuration as
/// `NS.NAME`, NS being the extension's namespace. The host calls a
/// registration by its position in the list `init` returns.
#[derive(Default)]
pub struct Registrar {
    regs: Vec<wit::Registration>,
    handlers: Vec<Handler>,
}

impl Registrar {
    fn add(&mut self, reg: wit::Registration, handler: Handler) -> &mut Self {
        self.regs.push(reg);
        self.handlers.push(handler);
        self
    }

    /// A sample fetch. It cannot wait.
    pub fn fetch(
        &mut self,
        name: &str,
        f: impl Fn(Txn, &[Sample]) -> Result<Option<Sample>, String> + 'static,
    ) -> &mut Self {
        self.add(
            wit::Registration::Fetch(name.to_string()),
            Handler::Fetch(Box::new(f)),
        )
    }

    /// A converter. It cannot wait.
    pub fn converter(
        &mut self,
        name: &str,
        f: impl Fn(Txn, Sample, &[Sample]) -> Result<Option<Sample>, String> + 'static,
    ) -> &mut Self {
        self.add(
            wit::Registration::Converter(name.to_string()),
            Handler::Conv(Box::new(f)),
        )
    }

    /// An action for the given facilities, taking `nargs` arguments from the
    /// configuration.
    pub fn action<F, Fut>(
        &mut self,
        name: &str,
        facilities: &[Facility],
        nargs: u32,
        f: F,
    ) -> &mut Self
    where
        F: Fn(Txn, Vec<String>) -> Fut + 'static,
        Fut: Future<Output = Result<Verdict, String>> + 'static,
    {
        self.add(
            wit::Registration::Action(wit::ActionRegistration {
                name: name.to_string(),
                facilities: facilities.to_vec(),
                nargs,
            }),
            Handler::Action(Box::new(move |t, a| Box::pin(f(t, a)))),
        )
    }

    /// An HTTP service (`http-request use-service NS.NAME`).
    pub fn http_service<F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(Txn, HttpApplet) -> Fut + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        let f = Service::Http(Box::new(move |t, a| Box::pin(f(t, a))));
        self.service(name, wit::ServiceMode::Http, f)
    }

    /// A TCP service (`tcp-request content use-service NS.NAME`).
    pub fn tcp_service<F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(Txn, TcpApplet) -> Fut + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        let f = Service::Tcp(Box::new(move |t, a| Box::pin(f(t, a))));
        self.service(name, wit::ServiceMode::Tcp, f)
    }

    fn service(&mut self, name: &str, mode: wit::ServiceMode, f: Service) -> &mut Self {
        self.add(
            wit::Registration::Service(wit::ServiceRegistration {
                name: name.to_string(),
                mode,
            }),
            Handler::Service(f),
        )
    }

    /// A background task, started with the proxy.
    pub fn task<F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        self.add(
            wit::Registration::Task(name.to_string()),
            Handler::Task(Box::new(move || Box::pin(f()))),
        )
    }

    /// A function run once the proxy is configured, before it serves
    /// (HAProxy's `core.register_init`): proxies and maps are there, files
    /// are readable, and an error stops start-up. It shares the names of
    /// tasks.
    pub fn init<F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn() -> Fut + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        self.add(
            wit::Registration::Init(name.to_string()),
            Handler::Task(Box::new(move || Box::pin(f()))),
        )
    }
}

// ---------------------------------------------------------------------------
// The executor behind `export!`

enum End {
    Verdict(Verdict),
    Finished,
}

#[derive(Default)]
struct Exec {
    registrar: Option<std::rc::Rc<Registrar>>,
    running: HashMap<u64, LocalFuture<Result<End, String>>>,
    request: Option<wit::Io>,
    overlapping: bool,
    result: Option<wit::IoResult>,
    next_socket: u32,
}

thread_local! {
    static EXEC: RefCell<Exec> = RefCell::new(Exec::default());
}

#[doc(hidden)]
pub mod rt {
    use super::*;

    pub use bindings::exports::moonbox::ext::guest::Guest;
    pub type Step = wit::Step;

    fn registrar() -> Option<std::rc::Rc<Registrar>> {
        EXEC.with(|e| e.borrow().registrar.clone())
    }

    pub fn init(
        f: fn(&mut Registrar, &[String]) -> Result<(), String>,
        args: Vec<String>,
    ) -> Result<Vec<wit::Registration>, String> {
        let mut r = Registrar::default();
        f(&mut r, &args)?;
        let regs = r.regs.clone();
        EXEC.with(|e| e.borrow_mut().registrar = Some(std::rc::Rc::new(r)));
        Ok(regs)
    }

    /// The handler of registration `index`.
    fn handler(index: u32) -> Result<std::rc::Rc<Registrar>, String> {
        let r = registrar().ok_or("not initialised")?;
        if r.handlers.get(index as usize).is_none() {
            return Err(format!("no registration {index}"));
        }
        Ok(r)
    }

    fn not_a(what: &str, index: u32) -> String {
        format!("registration {index} is not a {what}")
    }

    pub fn fetch(index: u32, args: Vec<Sample>) -> Result<Option<Sample>, String> {
        let r = handler(index)?;
        match &r.handlers[index as usize] {
            Handler::Fetch(f) => f(Txn::default(), &args),
            _ => Err(not_a("fetch", index)),
        }
    }

    pub fn convert(index: u32, input: Sample, args: Vec<Sample>) -> Result<Option<Sample>, String> {
        let r = handler(index)?;
        match &r.handlers[index as usize] {
            Handler::Conv(f) => f(Txn::default(), input, &args),
            _ => Err(not_a("converter", index)),
        }
    }

    fn start(id: u64, fut: Result<LocalFuture<Result<End, String>>, String>) -> Step {
        match fut {
            Ok(fut) => {
                EXEC.with(|e| e.borrow_mut().running.insert(id, fut));
                poll(id)
            }
            Err(msg) => Step::Failed(msg),
        }
    }

    pub fn start_action(id: u64, index: u32, _facility: Facility, args: Vec<String>) -> Step {
        let fut = handler(index).and_then(|r| match &r.handlers[index as usize] {
            Handler::Action(f) => {
                let fut = f(Txn::default(), args);
                Ok(Box::pin(async move { fut.await.map(End::Verdict) }) as LocalFuture<_>)
            }
            _ => Err(not_a("action", index)),
        });
        start(id, fut)
    }

    pub fn start_service(id: u64, index: u32) -> Step {
        let fut = handler(index).and_then(|r| match &r.handlers[index as usize] {
            Handler::Service(Service::Http(f)) => {
                let fut = f(Txn::default(), HttpApplet::current());
                Ok(Box::pin(async move { fut.await.map(|()| End::Finished) }) as LocalFuture<_>)
            }
            Handler::Service(Service::Tcp(f)) => {
                let fut = f(Txn::default(), TcpApplet::default());
                Ok(Box::pin(async move { fut.await.map(|()| End::Finished) }) as LocalFuture<_>)
            }
            _ => Err(not_a("service", index)),
        });
        start(id, fut)
    }

    pub fn start_task(id: u64, index: u32) -> Step {
        let fut = handler(index).and_then(|r| match &r.handlers[index as usize] {
            Handler::Task(f) => {
                let fut = f();
                Ok(Box::pin(async move { fut.await.map(|()| End::Finished) }) as LocalFuture<_>)
            }
            _ => Err(not_a("task", index)),
        });
        start(id, fut)
    }

    pub fn resume(id: u64, result: wit::IoResult) -> Step {
        EXEC.with(|e| e.borrow_mut().result = Some(result));
        poll(id)
    }

    pub fn cancel(id: u64) {
        let fut = EXEC.with(|e| e.borrow_mut().running.remove(&id));
        drop(fut);
    }

    fn poll(id: u64) -> Step {
        let Some(mut fut) = EXEC.with(|e| e.borrow_mut().running.remove(&id)) else {
            return Step::Failed(format!("no invocation {id}"));
        };
        let mut cx = Context::from_waker(Waker::noop());
        let out = fut.as_mut().poll(&mut cx);
        EXEC.with(|e| {
            let mut e = e.borrow_mut();
            e.result = None;
            let request = e.request.take();
            let overlapping = std::mem::take(&mut e.overlapping);
            match out {
                Poll::Ready(Ok(End::Verdict(v))) => Step::Done(v),
                Poll::Ready(Ok(End::Finished)) => Step::Finished,
                Poll::Ready(Err(msg)) => Step::Failed(msg),
                Poll::Pending if overlapping => Step::Failed(
                    "an invocation waited for two things at once; await one at a time".into(),
                ),
                Poll::Pending => match request {
                    Some(io) => {
                        e.running.insert(id, fut);
                        Step::Wait(io)
                    }
                    None => Step::Failed(
                        "the invocation awaited a future that is not a moonbox wait".into(),
                    ),
                },
            }
        })
    }
}

/// Exports an extension whose `init` function registers what it offers:
/// `moonbox_sdk::export!(init);` with
/// `fn init(ext: &mut Registrar, args: &[String]) -> Result<(), String>`.
#[macro_export]
macro_rules! export {
    ($init:path) => {
        #[doc(hidden)]
        pub struct __MoonboxExtension;

        impl $crate::rt::Guest for __MoonboxExtension {
            fn init(
                args: ::std::vec::Vec<::std::string::String>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::bindings::moonbox::ext::types::Registration>,
                ::std::string::String,
            > {
                $crate::rt::init($init, args)
            }
            fn fetch(
                registration: u32,
                args: ::std::vec::Vec<$crate::Sample>,
            ) -> ::std::result::Result<::std::option::Option<$crate::Sample>, ::std::string::String>
            {
                $crate::rt::fetch(registration, args)
            }
            fn convert(
                registration: u32,
                input: $crate::Sample,
                args: ::std::vec::Vec<$crate::Sample>,
            ) -> ::std::result::Result<::std::option::Option<$crate::Sample>, ::std::string::String>
            {
                $crate::rt::convert(registration, input, args)
            }
            fn start_action(
                id: u64,
                registration: u32,
                facility: $crate::Facility,
                args: ::std::vec::Vec<::std::string::String>,
            ) -> $crate::rt::Step {
                $crate::rt::start_action(id, registration, facility, args)
            }
            fn start_service(id: u64, registration: u32) -> $crate::rt::Step {
                $crate::rt::start_service(id, registration)
            }
            fn start_task(id: u64, registration: u32) -> $crate::rt::Step {
                $crate::rt::start_task(id, registration)
            }
            fn resume(
                id: u64,
                result: $crate::bindings::moonbox::ext::types::IoResult,
            ) -> $crate::rt::Step {
                $crate::rt::resume(id, result)
            }
            fn cancel(id: u64) {
                $crate::rt::cancel(id)
            }
        }

        $crate::bindings::export_raw!(__MoonboxExtension with_types_in $crate::bindings);
    };
}
