//! The client's socket as hyper sees it, counting what it needs to answer a
//! request head that did not arrive within `timeout http-request` the way
//! HAProxy does: 408 to a client that sent part of a request, or nothing yet
//! on a new connection; a silent close of an idle keep-alive connection.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the connection has carried, shared with its server task.
#[derive(Debug, Default)]
pub struct Progress {
    /// A response was written on this connection.
    answered: AtomicBool,
    /// Bytes read since the last response was written.
    pending: AtomicUsize,
}

impl Progress {
    /// Records a write to the client: a response is under way.
    fn wrote(&self, r: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r
            && *n > 0
        {
            self.answered.store(true, Ordering::Relaxed);
            self.pending.store(0, Ordering::Relaxed);
        }
    }

    /// Whether a timed-out request head deserves a 408.
    pub fn owes_408(&self) -> bool {
        !self.answered.load(Ordering::Relaxed) || self.pending.load(Ordering::Relaxed) > 0
    }
}

/// A client socket that records its [`Progress`].
pub struct ClientIo {
    inner: TcpStream,
    progress: Arc<Progress>,
}

impl ClientIo {
    pub fn new(inner: TcpStream) -> (ClientIo, Arc<Progress>) {
        let progress = Arc::new(Progress::default());
        let io = ClientIo {
            inner,
            progress: Arc::clone(&progress),
        };
        (io, progress)
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.progress.pending.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A second handle on the client's socket, to answer after hyper gave the
/// connection up. `None` when the descriptor cannot be duplicated (out of
/// descriptors): the connection then closes without an answer.
pub fn answer_handle(stream: &TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    stream
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(std::net::TcpStream::from)
}

/// Writes HAProxy's 408 page and closes the sending side. The socket is
/// non-blocking; the page is small enough for an empty send buffer, and a
/// client whose buffer is full gets nothing, as it would from a close.
pub fn send_408(sock: &std::net::TcpStream) -> usize {
    let reply = super::rules::error_reply(408);
    let mut head = format!(
        "HTTP/1.1 408 Request Time-out\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&reply.body);
    let mut w = sock;
    let sent = match w.write_all(&out) {
        Ok(()) => out.len(),
        Err(_) => 0,
    };
    let _ = sock.shutdown(std::net::Shutdown::Write);
    sent
}
