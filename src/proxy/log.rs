//! Access logs in the shape of HAProxy's `option httplog` and
//! `option tcplog`, one line per transaction, written to standard output.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local};

use super::state::Counters;
use super::txn::Txn;

/// Timers and outcome of a transaction, filled as it progresses.
#[derive(Debug, Default, Clone)]
pub struct LogInfo {
    /// Time to receive the full request head (TR).
    pub t_request: Option<Duration>,
    /// Time waiting in queue (Tw).
    pub t_queue: Option<Duration>,
    /// Time to connect to the server (Tc).
    pub t_connect: Option<Duration>,
    /// Time for the server to send its response head (Tr).
    pub t_response: Option<Duration>,
    /// Status sent to the client.
    pub status: Option<u16>,
    /// Bytes sent to the client, head included.
    pub bytes_out: u64,
    /// The `connection` header value the server adds to an HTTP/1
    /// response that has none (`close` when the client asked to close),
    /// for counting [`LogInfo::bytes_out`].
    pub conn_header: Option<&'static str>,
    /// The client speaks HTTP/1.0: a body of unknown length is sent
    /// without chunks, until the connection closes.
    pub client_http10: bool,
    /// Termination state (`----`, `SC--`, `sH--`, `PR--`...).
    pub term: [u8; 4],
    /// Backend and server names as logged (`<lua.x>` for services).
    pub backend: Option<String>,
    pub server: Option<String>,
}

impl LogInfo {
    pub fn new() -> LogInfo {
        LogInfo {
            term: *b"----",
            ..LogInfo::default()
        }
    }
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => d.as_millis().to_string(),
        None => "-1".to_string(),
    }
}

fn date(t: SystemTime) -> String {
    let dt: DateTime<Local> = t.into();
    dt.format("%d/%b/%Y:%H:%M:%S%.3f").to_string()
}

/// Writes one line to standard output.
pub fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What a log line needs once the transaction's response is under way.
#[derive(Debug, Clone)]
pub struct LogCtx {
    pub src: std::net::SocketAddr,
    pub frontend: std::sync::Arc<super::state::ProxyRt>,
    pub backend: Option<std::sync::Arc<super::state::ProxyRt>>,
    pub server: Option<std::sync::Arc<super::state::ServerRt>>,
    pub started: std::time::Instant,
    pub started_at: SystemTime,
    pub request_line: String,
    pub info: LogInfo,
}

impl LogCtx {
    pub fn new(txn: &Txn, request_line: String, info: LogInfo) -> LogCtx {
        LogCtx {
            src: txn.sess.src,
            frontend: txn.frontend.clone(),
            backend: txn.backend.clone(),
            server: txn.server.clone(),
            started: txn.started,
            started_at: txn.started_at,
            request_line,
            info,
        }
    }

    fn names(&self) -> (String, String) {
        let be = self
            .info
            .backend
            .clone()
            .or_else(|| self.backend.as_ref().map(|b| b.name.clone()))
            .unwrap_or_else(|| self.frontend.name.clone());
        let srv = self
            .info
            .server
            .clone()
            .or_else(|| self.server.as_ref().map(|s| s.name.clone()))
            .unwrap_or_else(|| "<NOSRV>".to_string());
        (be, srv)
    }

    /// `option httplog` line.
    pub fn http_line(&self) -> String {
        let info = &self.info;
        let (be_name, srv) = self.names();
        let bc = self
            .backend
            .as_ref()
            .map(|b| Counters::get(&b.counters.scur))
            .unwrap_or(0);
        let sc = self
            .server
            .as_ref()
            .map(|s| Counters::get(&s.counters.scur))
            .unwrap_or(0);
        let fc = self.frontend.counters.scur.load(Ordering::Relaxed);
        format!(
            "{}:{} [{}] {} {}/{} {}/{}/{}/{}/{} {} {} - - {} {}/{}/{}/{}/0 0/0 \"{}\"",
            self.src.ip(),
            self.src.port(),
            date(self.started_at),
            self.frontend.name,
            be_name,
            srv,
            ms(info.t_request),
            ms(info.t_queue),
            ms(info.t_connect),
            ms(info.t_response),
            self.started.elapsed().as_millis(),
            info.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-1".into()),
            info.bytes_out,
            String::from_utf8_lossy(&info.term),
            fc,
            fc,
            bc,
            sc,
            self.request_line.escape_default(),
        )
    }

    /// `option tcplog` line.
    pub fn tcp_line(&self) -> String {
        let info = &self.info;
        let (be_name, srv) = self.names();
        let fc = self.frontend.counters.scur.load(Ordering::Relaxed);
        format!(
            "{}:{} [{}] {} {}/{} {}/{}/{} {} {} {}/{}/0/0/0 0/0",
            self.src.ip(),
            self.src.port(),
            date(self.started_at),
            self.frontend.name,
            be_name,
            srv,
            ms(info.t_queue),
            ms(info.t_connect),
            self.started.elapsed().as_millis(),
            info.bytes_out,
            String::from_utf8_lossy(&info.term[..2]),
            fc,
            fc,
        )
    }
}
