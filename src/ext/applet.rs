//! Applets: what services read from and write to (HAProxy's AppletHTTP and
//! AppletTCP). The proxy builds them; extensions only call their methods.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// The head of a response a service starts.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// Why applet I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum AppletError {
    #[error("response already started")]
    AlreadyStarted,
    #[error("response not started: call start_response first")]
    NotStarted,
    #[error("client went away")]
    Closed,
    #[error("receive failed: {0}")]
    Io(String),
}

/// The HTTP side of a service: the request, and the response it builds.
pub struct HttpApplet {
    pub method: String,
    pub path: String,
    pub query: String,
    /// `1.1`, `2.0`...
    pub version: String,
    pub headers: HeaderMap,
    /// Announced request body length, if any.
    pub length: Option<u64>,
    body: Option<hyper::body::Incoming>,
    pending: BytesMut,
    body_done: bool,
    status: u16,
    reason: Option<String>,
    res_headers: Vec<(String, String)>,
    head_tx: Option<oneshot::Sender<ResponseHead>>,
    body_tx: Option<mpsc::Sender<Bytes>>,
    body_rx: Option<mpsc::Receiver<Bytes>>,
}

impl HttpApplet {
    /// Builds an applet over a request. The proxy keeps the receivers:
    /// the head is sent on `start_response`, the body chunks on `send`.
    pub fn new(
        parts: &http::request::Parts,
        body: Option<hyper::body::Incoming>,
        buffered: Option<Bytes>,
    ) -> (HttpApplet, oneshot::Receiver<ResponseHead>) {
        let (head_tx, head_rx) = oneshot::channel();
        let (body_tx, body_rx) = mpsc::channel(16);
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let version = crate::sample::fetch::version_str(parts.version);
        let body_done = body.is_none();
        let applet = HttpApplet {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            version: version.to_string(),
            headers: parts.headers.clone(),
            length,
            body,
            pending: buffered.map(|b| BytesMut::from(&b[..])).unwrap_or_default(),
            body_done,
            status: 200,
            reason: None,
            res_headers: Vec::new(),
            head_tx: Some(head_tx),
            body_tx: Some(body_tx),
            body_rx: Some(body_rx),
        };
        (applet, head_rx)
    }

    /// Takes the receiver of body chunks (once, by the proxy).
    pub fn take_body_receiver(&mut self) -> Option<mpsc::Receiver<Bytes>> {
        self.body_rx.take()
    }

    pub fn set_status(&mut self, status: u16, reason: Option<String>) {
        self.status = status;
        self.reason = reason;
    }

    pub fn add_header(&mut self, name: &str, value: &str) {
        self.res_headers.push((name.to_string(), value.to_string()));
    }

    pub fn started(&self) -> bool {
        self.head_tx.is_none()
    }

    /// Sends the status and headers.
    pub fn start_response(&mut self) -> Result<(), AppletError> {
        let tx = self.head_tx.take().ok_or(AppletError::AlreadyStarted)?;
        tx.send(ResponseHead {
            status: self.status,
            reason: self.reason.take(),
            headers: std::mem::take(&mut self.res_headers),
        })
        .map_err(|_| AppletError::Closed)
    }

    /// Sends a chunk of the response body.
    pub async fn send(&mut self, data: Bytes) -> Result<(), AppletError> {
        if self.head_tx.is_some() {
            return Err(AppletError::NotStarted);
        }
        let tx = self.body_tx.as_ref().ok_or(AppletError::Closed)?;
        tx.send(data).await.map_err(|_| AppletError::Closed)
    }

    /// Ends the response body (also done when the applet is dropped).
    pub fn finish(&mut self) {
        self.body_tx = None;
    }

    async fn fill(&mut self) -> Result<bool, AppletError> {
        if self.body_done {
            return Ok(false);
        }
        let Some(body) = self.body.as_mut() else {
            self.body_done = true;
            return Ok(false);
        };
        loop {
            match body.frame().await {
                None => {
                    self.body_done = true;
                    return Ok(false);
                }
                Some(Err(e)) => return Err(AppletError::Io(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        self.pending.extend_from_slice(&data);
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Reads up to `size` bytes of the request body, or all of it when
    /// `size` is `None`. An empty result means the body is finished.
    pub async fn receive(&mut self, size: Option<usize>) -> Result<Bytes, AppletError> {
        match size {
            None => {
                while self.fill().await? {}
                Ok(self.pending.split().freeze())
            }
            Some(n) => {
                while self.pending.len() < n && self.fill().await? {}
                let n = n.min(self.pending.len());
                Ok(self.pending.split_to(n).freeze())
            }
        }
    }

    /// Reads one line of the request body, with its `\n`.
    pub async fn getline(&mut self) -> Result<Bytes, AppletError> {
        loop {
            if let Some(pos) = self.pending.iter().position(|&c| c == b'\n') {
                return Ok(self.pending.split_to(pos + 1).freeze());
            }
            if !self.fill().await? {
                return Ok(self.pending.split().freeze());
            }
        }
    }
}

/// The TCP side of a service: the client byte stream.
pub struct TcpApplet {
    stream: tokio::net::TcpStream,
    pending: BytesMut,
    closed: bool,
}

impl TcpApplet {
    /// Wraps the client connection; `already` holds bytes read while
    /// inspecting.
    pub fn new(stream: tokio::net::TcpStream, already: Bytes) -> TcpApplet {
        TcpApplet {
            stream,
            pending: BytesMut::from(&already[..]),
            closed: false,
        }
    }

    async fn fill(&mut self, timeout: Option<Duration>) -> Result<bool, AppletError> {
        if self.closed {
            return Ok(false);
        }
        let mut buf = [0u8; 16 * 1024];
        let read = self.stream.read(&mut buf);
        let n = match timeout {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) => return Ok(true),
            },
            None => read.await,
        }
        .map_err(|e| AppletError::Io(e.to_string()))?;
        if n == 0 {
            self.closed = true;
            return Ok(false);
        }
        self.pending.extend_from_slice(&buf[..n]);
        Ok(true)
    }

    /// Reads what the socket holds now, without waiting.
    fn fill_now(&mut self) -> Result<(), AppletError> {
        if self.closed {
            return Ok(());
        }
        let mut buf = [0u8; 16 * 1024];
        match self.stream.try_read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(AppletError::Io(e.to_string())),
        }
        Ok(())
    }

    /// Reads up to `size` bytes (all until close when `None`). With a
    /// timeout, returns what came in time, or `None` if nothing did.
    pub async fn receive(
        &mut self,
        size: Option<usize>,
        timeout: Option<Duration>,
    ) -> Result<Option<Bytes>, AppletError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let enough = match size {
                Some(n) => self.pending.len() >= n,
                None => false,
            };
            if enough || self.closed {
                break;
            }
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            if left == Some(Duration::ZERO) {
                if self.pending.is_empty() {
                    self.fill_now()?;
                }
                if self.pending.is_empty() && !self.closed {
                    return Ok(None);
                }
                break;
            }
            if !self.fill(left).await? {
                break;
            }
        }
        let n = size.unwrap_or(self.pending.len()).min(self.pending.len());
        Ok(Some(self.pending.split_to(n).freeze()))
    }

    /// Reads one line, with its `\n` ("" at close).
    pub async fn getline(&mut self) -> Result<Bytes, AppletError> {
        loop {
            if let Some(pos) = self.pending.iter().position(|&c| c == b'\n') {
                return Ok(self.pending.split_to(pos + 1).freeze());
            }
            if !self.fill(None).await? {
                return Ok(self.pending.split().freeze());
            }
        }
    }

    /// Returns what is available now without waiting (`None` if nothing).
    pub fn try_receive(&mut self) -> Option<Bytes> {
        if self.pending.is_empty() {
            None
        } else {
            Some(self.pending.split().freeze())
        }
    }

    pub async fn send(&mut self, data: &[u8]) -> Result<(), AppletError> {
        self.stream
            .write_all(data)
            .await
            .map_err(|e| AppletError::Io(e.to_string()))
    }

    /// Closes the connection gracefully.
    pub async fn close(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}
