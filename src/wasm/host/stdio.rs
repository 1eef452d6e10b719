//! A guest's stdout and stderr: each line goes to the proxy's log at once,
//! tagged with the extension's namespace. Writes never wait, so a guest that
//! prints cannot block its call.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept; longer ones are cut.
const MAX_LINE: usize = 8 * 1024;

#[derive(Clone)]
pub struct GuestOutput {
    ns: Arc<str>,
    stderr: bool,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    /// Output of the extension `ns`; stderr lines are logged as warnings.
    pub fn new(ns: Arc<str>, stderr: bool) -> GuestOutput {
        GuestOutput {
            ns,
            stderr,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock();
        for &b in bytes {
            if b == b'\n' {
                self.flush_line(&mut pending);
            } else if pending.len() < MAX_LINE {
                pending.push(b);
            }
        }
    }

    fn flush_line(&self, pending: &mut Vec<u8>) {
        let line = String::from_utf8_lossy(pending);
        if self.stderr {
            tracing::warn!(target: "ext", ext = &*self.ns, "{line}");
        } else {
            tracing::info!(target: "ext", ext = &*self.ns, "{line}");
        }
        pending.clear();
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        // The last clone prints what is left of an unfinished line.
        if Arc::strong_count(&self.pending) == 1 {
            let mut pending = self.pending.lock();
            if !pending.is_empty() {
                self.flush_line(&mut pending);
            }
        }
    }
}
