//! The I/O an invocation waits for (`types.io`), performed by the host
//! between two guest calls: sleeps, outgoing TCP sockets, and the applet's
//! client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::{Arc, OnceLock};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

use super::bindings::types::{
    AppletHead, ConnectRequest, Io, IoError, IoErrorKind, IoResult, ReceivePattern, ReceiveRequest,
    TlsOptions,
};
use crate::ext::{HttpApplet, TcpApplet};

/// Sockets one invocation may keep open at once.
const MAX_SOCKETS: usize = 64;

/// A destination `allow-connect` grants: `IP:PORT`, with `*` for any
/// address or any port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRule {
    ip: Option<std::net::IpAddr>,
    port: Option<u16>,
}

impl AllowRule {
    pub fn parse(s: &str) -> Result<AllowRule, String> {
        let bad = || format!("invalid allow-connect '{s}', expected IP:PORT, IP:*, *:PORT or *");
        if s == "*" {
            return Ok(AllowRule {
                ip: None,
                port: None,
            });
        }
        let (ip, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        Ok(AllowRule {
            ip: if ip == "*" {
                None
            } else {
                Some(ip.parse().map_err(|_| bad())?)
            },
            port: if port == "*" {
                None
            } else {
                Some(port.parse().map_err(|_| bad())?)
            },
        })
    }

    fn allows(&self, a: &SocketAddr) -> bool {
        self.ip.is_none_or(|ip| ip == a.ip()) && self.port.is_none_or(|p| p == a.port())
    }
}

/// The client side a service talks to.
pub enum AppletSide<'a> {
    None,
    Http(&'a mut HttpApplet),
    Tcp(&'a mut TcpApplet),
}

/// What a service queued for its client during one call (the
/// `applet.start` and `applet.write` imports), sent when the call returns.
#[derive(Default)]
pub struct AppletOut {
    items: Vec<OutItem>,
    /// Body bytes queued.
    len: usize,
}

enum OutItem {
    Head(AppletHead),
    Data(Bytes),
}

impl AppletOut {
    /// The most a call queues before the guest must wait for its client.
    pub const LIMIT: usize = 64 * 1024;

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn head(&mut self, head: AppletHead) {
        self.items.push(OutItem::Head(head));
    }

    /// Queues `data`, unless the queue is full (then the guest waits).
    pub fn write(&mut self, data: Vec<u8>) -> bool {
        if self.len > 0 && self.len + data.len() > Self::LIMIT {
            return false;
        }
        self.len += data.len();
        self.items.push(OutItem::Data(Bytes::from(data)));
        true
    }
}

/// A connected socket's byte stream: plain TCP or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Sock {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    eof: bool,
}

/// The I/O state of one invocation.
pub struct IoCtx<'a> {
    sockets: HashMap<u32, Sock>,
    allow: &'a [AllowRule],
    pub applet: AppletSide<'a>,
    /// When the invocation's time is over.
    pub deadline: Instant,
}

fn fail(kind: IoErrorKind, message: impl Into<String>) -> IoResult {
    IoResult::Failed(IoError {
        kind,
        message: message.into(),
        partial: Vec::new(),
    })
}

fn fail_partial(kind: IoErrorKind, message: &str, partial: Vec<u8>) -> IoResult {
    IoResult::Failed(IoError {
        kind,
        message: message.to_string(),
        partial,
    })
}

fn sent(n: usize) -> IoResult {
    IoResult::Sent(u32::try_from(n).unwrap_or(u32::MAX))
}

impl<'a> IoCtx<'a> {
    pub fn new(allow: &'a [AllowRule], applet: AppletSide<'a>, deadline: Instant) -> IoCtx<'a> {
        IoCtx {
            sockets: HashMap::new(),
            allow,
            applet,
            deadline,
        }
    }

    fn until(&self, timeout_ms: Option<u64>) -> Instant {
        match timeout_ms {
            Some(ms) => (Instant::now() + Duration::from_millis(ms)).min(self.deadline),
            None => self.deadline,
        }
    }

    /// Performs one wait and returns what the guest is resumed with.
    pub async fn perform(&mut self, io: Io) -> IoResult {
        match io {
            Io::Sleep(0) | Io::Yield => {
                tokio::task::yield_now().await;
                IoResult::Ok
            }
            Io::Sleep(ms) => {
                tokio::time::sleep_until(self.until(Some(ms))).await;
                IoResult::Ok
            }
            Io::Connect(c) => self.connect(c).await,
            Io::Send((id, data)) => match self.sockets.get_mut(&id) {
                None => fail(IoErrorKind::Closed, "socket not connected"),
                Some(s) => {
                    let until = self.deadline;
                    match tokio::time::timeout_at(until, s.stream.write_all(&data)).await {
                        Ok(Ok(())) => sent(data.len()),
                        Ok(Err(e)) => fail(IoErrorKind::Closed, e.to_string()),
                        Err(_) => fail(IoErrorKind::Timeout, "timeout"),
                    }
                }
            },
            Io::Receive(r) => self.receive(r).await,
            Io::Close(id) => {
                if let Some(mut s) = self.sockets.remove(&id) {
                    let _ = s.stream.shutdown().await;
                }
                IoResult::Ok
            }
            Io::AppletReceive(r) => self.applet_receive(r.pattern, r.timeout_ms).await,
            Io::AppletStart(head) => self.applet_start(head),
            Io::AppletSend(data) => self.applet_send(data).await,
        }
    }

    /// Sends what a call queued, in order, as the waits `applet-start`
    /// and `applet-send` would have. The first failure ends it.
    pub async fn send_queued(&mut self, out: AppletOut) -> Result<(), String> {
        for item in out.items {
            let r = match item {
                OutItem::Head(head) => self.applet_start(head),
                OutItem::Data(data) => self.applet_send_bytes(data).await,
            };
            if let IoResult::Failed(e) = r {
                return Err(e.message);
            }
        }
        Ok(())
    }

    async fn connect(&mut self, c: ConnectRequest) -> IoResult {
        let Ok(addr) = c.addr.parse::<SocketAddr>() else {
            return fail(
                IoErrorKind::Invalid,
                format!("invalid address '{}', expected IP:PORT", c.addr),
            );
        };
        if !self.allow.iter().any(|r| r.allows(&addr)) {
            return fail(
                IoErrorKind::NotAllowed,
                format!("connecting to {addr} is not allowed (see allow-connect)"),
            );
        }
        if self.sockets.len() >= MAX_SOCKETS && !self.sockets.contains_key(&c.socket) {
            return fail(IoErrorKind::Other, "too many open sockets");
        }
        let until = self.until(c.timeout_ms);
        let tcp = match tokio::time::timeout_at(until, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return fail(IoErrorKind::Refused, "connection refused");
            }
            Ok(Err(e)) => return fail(IoErrorKind::Other, e.to_string()),
            Err(_) => return fail(IoErrorKind::Timeout, "timeout"),
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let stream: Box<dyn Stream> = match c.tls {
            None => Box::new(tcp),
            Some(tls) => match tokio::time::timeout_at(until, handshake(tcp, &addr, tls)).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => return fail(IoErrorKind::Other, format!("TLS handshake: {e}")),
                Err(_) => return fail(IoErrorKind::Timeout, "timeout"),
            },
        };
        self.sockets.insert(
            c.socket,
            Sock {
                stream,
                buf: BytesMut::new(),
                eof: false,
            },
        );
        IoResult::Data(local.into_bytes())
    }

    async fn receive(&mut self, r: ReceiveRequest) -> IoResult {
        let until = self.until(r.timeout_ms);
        let Some(s) = self.sockets.get_mut(&r.socket) else {
            return fail(IoErrorKind::Closed, "socket not connected");
        };
        loop {
            // What the buffer already satisfies.
            match r.pattern {
                ReceivePattern::Line => {
                    if let Some(pos) = s.buf.iter().position(|&b| b == b'\n') {
                        let mut line = s.buf.split_to(pos + 1);
                        line.truncate(pos);
                        if line.last() == Some(&b'\r') {
                            line.truncate(pos - 1);
                        }
                        return IoResult::Data(line.to_vec());
                    }
                    if s.eof {
                        let partial = s.buf.split().to_vec();
                        return fail_partial(IoErrorKind::Closed, "closed", partial);
                    }
                }
                ReceivePattern::All => {
                    if s.eof {
                        return IoResult::Data(s.buf.split().to_vec());
                    }
                }
                ReceivePattern::Count(n) => {
                    let n = n as usize;
                    if s.buf.len() >= n || s.eof {
                        let n = n.min(s.buf.len());
                        if n == 0 && s.eof {
                            return fail(IoErrorKind::Closed, "closed");
                        }
                        return IoResult::Data(s.buf.split_to(n).to_vec());
                    }
                }
            }
            s.buf.reserve(16 * 1024);
            match tokio::time::timeout_at(until, s.stream.read_buf(&mut s.buf)).await {
                Ok(Ok(0)) => s.eof = true,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let partial = s.buf.split().to_vec();
                    return fail_partial(IoErrorKind::Closed, &e.to_string(), partial);
                }
                Err(_) => {
                    let partial = s.buf.split().to_vec();
                    return fail_partial(IoErrorKind::Timeout, "timeout", partial);
                }
            }
        }
    }

    async fn applet_receive(
        &mut self,
        pattern: ReceivePattern,
        timeout_ms: Option<u64>,
    ) -> IoResult {
        let until = self.until(timeout_ms);
        let r: Result<Bytes, String> = match &mut self.applet {
            AppletSide::None => return fail(IoErrorKind::Invalid, "no applet: not a service"),
            AppletSide::Http(a) => {
                let fut = async {
                    match pattern {
                        ReceivePattern::Line => a.getline().await,
                        ReceivePattern::All => a.receive(None).await,
                        ReceivePattern::Count(n) => a.receive(Some(n as usize)).await,
                    }
                };
                match tokio::time::timeout_at(until, fut).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => return fail(IoErrorKind::Timeout, "timeout"),
                }
            }
            AppletSide::Tcp(a) => {
                // The applet's own timeout returns what came in time.
                let wait = timeout_ms.map(|_| until.saturating_duration_since(Instant::now()));
                let fut = async {
                    match pattern {
                        ReceivePattern::Line => a.getline().await.map(Some),
                        ReceivePattern::All => a.receive(None, wait).await,
                        ReceivePattern::Count(n) => a.receive(Some(n as usize), wait).await,
                    }
                };
                match tokio::time::timeout_at(self.deadline, fut).await {
                    Ok(Ok(Some(b))) => Ok(b),
                    Ok(Ok(None)) | Err(_) => return fail(IoErrorKind::Timeout, "timeout"),
                    Ok(Err(e)) => Err(e.to_string()),
                }
            }
        };
        match r {
            Ok(b) => IoResult::Data(b.chunk().to_vec()),
            Err(e) => fail(IoErrorKind::Closed, e),
        }
    }

    fn applet_start(&mut self, head: AppletHead) -> IoResult {
        let AppletSide::Http(a) = &mut self.applet else {
            return fail(
                IoErrorKind::Invalid,
                "only an HTTP service starts a response",
            );
        };
        if a.started() {
            return fail(IoErrorKind::Invalid, "response already started");
        }
        a.set_status(head.status, head.reason);
        for (n, v) in &head.headers {
            a.add_header(n, v);
        }
        match a.start_response() {
            Ok(()) => IoResult::Ok,
            Err(e) => fail(IoErrorKind::Closed, e.to_string()),
        }
    }

    async fn applet_send(&mut self, data: Vec<u8>) -> IoResult {
        self.applet_send_bytes(Bytes::from(data)).await
    }

    async fn applet_send_bytes(&mut self, data: Bytes) -> IoResult {
        let n = data.len();
        let r = match &mut self.applet {
            AppletSide::None => return fail(IoErrorKind::Invalid, "no applet: not a service"),
            AppletSide::Http(a) => {
                if !a.started()
                    && let Err(e) = a.start_response()
                {
                    return fail(IoErrorKind::Closed, e.to_string());
                }
                a.send(data).await
            }
            AppletSide::Tcp(a) => a.send(&data).await,
        };
        match r {
            Ok(()) => sent(n),
            Err(e) => fail(IoErrorKind::Closed, e.to_string()),
        }
    }
}

/// Runs the TLS handshake of `connect_ssl`.
async fn handshake(
    tcp: TcpStream,
    addr: &SocketAddr,
    opts: TlsOptions,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = match &opts.server_name {
        Some(n) => rustls::pki_types::ServerName::try_from(n.clone()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid server name '{n}'"),
            )
        })?,
        None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    TlsConnector::from(tls_config(opts.verify)?)
        .connect(name, tcp)
        .await
}

/// The two client configurations, made once: one verifies certificates
/// against the Mozilla root store, one (HAProxy's `connect_ssl`) accepts
/// any certificate but still checks the handshake's signatures.
fn tls_config(verify: bool) -> std::io::Result<Arc<rustls::ClientConfig>> {
    type Made = Result<Arc<rustls::ClientConfig>, String>;
    static VERIFIED: OnceLock<Made> = OnceLock::new();
    static UNVERIFIED: OnceLock<Made> = OnceLock::new();
    let make = |verify: bool| -> Made {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let config = if verify {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        };
        Ok(Arc::new(config))
    };
    let cell = if verify { &VERIFIED } else { &UNVERIFIED };
    cell.get_or_init(|| make(verify))
        .clone()
        .map_err(std::io::Error::other)
}

/// Accepts any server certificate (HAProxy's Lua sockets do not verify).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
