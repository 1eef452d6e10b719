//! The HTTP client towards servers: HTTP/1.1 keep-alive connections kept in
//! a pool per server. A connection is driven by the request that uses it
//! (no task per connection): the request polls it until the response head
//! arrives, then the response body polls it until the body ends, and the
//! connection goes back to the pool.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;

/// Error type of bodies moved through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the proxy sends and receives.
pub type Body = BoxBody<Bytes, BoxError>;

type Driver = http1::Connection<TokioIo<TcpStream>, Body>;

/// One keep-alive connection to a server.
struct Conn {
    tx: http1::SendRequest<Body>,
    driver: Pin<Box<Driver>>,
    /// What the connection's parts wake (see [`Inline`]).
    inline: Arc<Inline>,
    waker: Waker,
}

impl Conn {
    fn new(tx: http1::SendRequest<Body>, driver: Driver) -> Conn {
        let inline = Arc::new(Inline::default());
        Conn {
            tx,
            driver: Box::pin(driver),
            waker: Waker::from(Arc::clone(&inline)),
            inline,
        }
    }
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// The waker a request gives its connection and the channels between them
/// (hyper's request queue, the response's hand-over, the body's demand).
///
/// Most wakes come from the request's own poll: it queues a request, the
/// connection it drives hands the response over, the body asks for data.
/// Passed on to the task, each would poll the task again for nothing, and
/// with it the client's connection. Instead a wake during the poll makes
/// the poll go round once more; only one between polls (the socket is
/// ready) wakes the task.
#[derive(Default)]
struct Inline {
    state: AtomicU8,
    task: Mutex<Option<Waker>>,
}

impl Wake for Inline {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
            && self.state.load(Ordering::Acquire) == IDLE
            && let Some(w) = self.task.lock().as_ref()
        {
            w.wake_by_ref();
        }
    }
}

/// The most rounds of one poll; past them the task is woken to come back.
const ROUNDS: usize = 8;

impl Inline {
    /// Polls `f` with the connection's waker, again while something woke
    /// it meanwhile. A wake left over when `f` is ready needs nothing: the
    /// connection is polled again whenever it is used next.
    fn poll<R>(
        &self,
        waker: &Waker,
        cx: &mut Context<'_>,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        {
            let mut task = self.task.lock();
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut icx = Context::from_waker(waker);
        for _ in 0..ROUNDS {
            self.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(r) = f(&mut icx) {
                self.state.store(IDLE, Ordering::Release);
                return Poll::Ready(r);
            }
            if self
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        self.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Idle connections to one server.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle.lock().len())
            .finish()
    }
}

/// The most idle connections kept per server.
const MAX_IDLE: usize = 1024;

impl Pool {
    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock();
        while let Some(c) = idle.pop() {
            if !c.tx.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: Conn) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    /// Number of idle connections.
    pub fn idle(&self) -> usize {
        self.idle.lock().len()
    }
}

/// Why a request to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failed: {0}")]
    Connect(std::io::Error),
    #[error("connect timeout")]
    ConnectTimeout,
    #[error("{0}")]
    Http(hyper::Error),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout
        )
    }
}

async fn connect(addr: SocketAddr, timeout: Option<Duration>) -> Result<Conn, UpstreamError> {
    let fut = TcpStream::connect(addr);
    let stream = match timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?,
        None => fut.await,
    }
    .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (tx, driver) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Http)?;
    Ok(Conn::new(tx, driver))
}

/// Sends a request to the server at `addr` over a pooled connection (or a
/// new one). A request that could not be written on a reused connection
/// (closed by the server meanwhile) is retried once on a new connection.
///
/// (A block rather than an async function, which would keep the request
/// twice in its future.)
#[allow(clippy::manual_async_fn)]
pub fn send(
    pool: &Arc<Pool>,
    addr: SocketAddr,
    connect_timeout: Option<Duration>,
    mut req: http::Request<Body>,
) -> impl Future<Output = Result<http::Response<Body>, UpstreamError>> + Send + '_ {
    async move {
        loop {
            let (mut conn, reused) = match pool.take() {
                Some(c) => (c, true),
                // Boxed: a new connection is the rare case, and its future
                // would otherwise enlarge every request's.
                None => (Box::pin(connect(addr, connect_timeout)).await?, false),
            };
            let result = {
                let Conn {
                    tx,
                    driver,
                    inline,
                    waker,
                } = &mut conn;
                let fut = tx.try_send_request(req);
                let mut fut = std::pin::pin!(fut);
                std::future::poll_fn(|cx| {
                    inline.poll(waker, cx, |cx| {
                        // Drive the connection, then look for the response head.
                        let closed = driver.as_mut().poll(cx).is_ready();
                        match fut.as_mut().poll(cx) {
                            Poll::Ready(r) => Poll::Ready(Some(r)),
                            Poll::Pending if closed => Poll::Ready(None),
                            Poll::Pending => Poll::Pending,
                        }
                    })
                })
                .await
            };
            match result {
                Some(Ok(resp)) => {
                    let (parts, incoming) = resp.into_parts();
                    let body = UpstreamBody {
                        inner: incoming,
                        conn: Some(conn),
                        pool: pool.clone(),
                    };
                    return Ok(http::Response::from_parts(parts, BoxBody::new(body)));
                }
                Some(Err(mut e)) => match e.take_message() {
                    Some(r) if reused => {
                        req = r;
                        continue;
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
                None => {
                    return Err(UpstreamError::Connect(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "connection closed before the response",
                    )));
                }
            }
        }
    }
}

/// A response body that drives its connection and returns it to the pool
/// when the body ends.
struct UpstreamBody {
    inner: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(mut c) = self.conn.take() {
            // An idle connection in the pool wakes nobody, nor keeps the
            // task that used it alive: it is polled again by the request
            // that takes it.
            *c.inline.task.lock() = None;
            // A sender ready again means the connection has seen the end
            // of the message; otherwise one more poll lets it see it.
            let mut cx = Context::from_waker(Waker::noop());
            if c.tx.is_ready() || (c.driver.as_mut().poll(&mut cx).is_pending() && c.tx.is_ready())
            {
                self.pool.put(c);
            }
        }
    }
}

impl Drop for UpstreamBody {
    /// A body that ended with its last data frame gives its connection back
    /// here, once that frame has been sent on and dropped: the connection's
    /// read buffer is then no longer shared, and hyper reuses it for the
    /// next response instead of allocating another. The next request
    /// drives the connection with its own waker.
    fn drop(&mut self) {
        if self.conn.is_some() && self.inner.is_end_stream() {
            self.release();
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = match this.conn.as_mut() {
            Some(c) => {
                let mut ended = false;
                let r = c.inline.poll(&c.waker, cx, |cx| {
                    // Asking for data first lets the connection's poll
                    // below deliver it.
                    if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_frame(cx) {
                        return Poll::Ready(r);
                    }
                    if !ended && c.driver.as_mut().poll(cx).is_ready() {
                        // The connection ended; the body reports how.
                        ended = true;
                    }
                    Pin::new(&mut this.inner).poll_frame(cx)
                });
                if ended {
                    this.conn = None;
                }
                r
            }
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        match &r {
            // After a last data frame the connection goes back to the pool
            // when the body is dropped (see Drop).
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Err(_))) => self.conn = None,
            _ => {}
        }
        r.map(|o| o.map(|r| r.map_err(|e| -> BoxError { Box::new(e) })))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
