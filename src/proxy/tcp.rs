//! The TCP data path (`mode tcp`): content inspection with
//! `tcp-request content` rules, then a byte stream to a server or a TCP
//! service.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::log::{LogCtx, LogInfo, emit};
use super::rules::{self, Flow};
use super::state::ProxyRt;
use super::txn::{Phase, Txn};
use super::{balance, select_backend};
use crate::ext::{Facility, TcpApplet};

/// Serves one client connection in TCP mode. The connection rules already ran.
pub async fn serve(mut txn: Txn, mut client: TcpStream) {
    let fe = txn.frontend.clone();
    let mut info = LogInfo::new();
    txn.phase = Phase::Request;
    // What the content rules leave to forward: the inspected bytes, as
    // they may have rewritten them.
    let mut pending = Bytes::new();

    if !fe.config.tcp_request_content.is_empty() {
        if let Some(delay) = fe.config.inspect_delay {
            // Wait for the first data (or the delay) so that rules see it.
            let mut chunk = vec![0u8; 16 * 1024];
            if let Ok(Ok(n)) = tokio::time::timeout(delay, client.read(&mut chunk)).await {
                chunk.truncate(n);
                txn.payload = Bytes::from(chunk);
            }
        }
        let flow = rules::run(&fe.config.tcp_request_content, Facility::TcpReq, &mut txn).await;
        let to_client = std::mem::take(&mut txn.to_client);
        if !to_client.is_empty() && client.write_all(&to_client).await.is_err() {
            info.term = *b"CD--";
            log(&txn, info);
            return;
        }
        // `use_backend` rules still read it (`req.payload`).
        pending = txn.payload.clone();
        match flow {
            Flow::Next => {}
            Flow::Service(svc) => {
                info.backend = Some(fe.name.clone());
                info.server = Some(format!("<{}>", svc.full));
                let mut applet = TcpApplet::new(client, pending);
                if let Err(e) = svc.ext.tcp_service(&svc.name, &mut txn, &mut applet).await {
                    tracing::warn!("service '{}' failed: {e}", svc.full);
                }
                applet.close().await;
                log(&txn, info);
                return;
            }
            Flow::Reply(_) | Flow::Close => {
                info.term = *b"PR--";
                log(&txn, info);
                return;
            }
        }
    }

    let Some(be) = select_backend(&fe, &mut txn) else {
        info.term = *b"SC--";
        log(&txn, info);
        return;
    };
    txn.backend = Some(be.clone());
    let _be_guard = be.counters.open_session();
    let (srv, _srv_guard) = match balance::acquire(&be, txn.sess.src.ip()).await {
        Ok((srv, guard, _)) => (srv, guard),
        Err(why) => {
            info.term = match why {
                balance::Unavailable::NoServer => *b"SC--",
                balance::Unavailable::QueueTimeout => *b"sQ--",
            };
            log(&txn, info);
            return;
        }
    };
    txn.server = Some(srv.clone());
    let t0 = std::time::Instant::now();
    let connect = TcpStream::connect(srv.addr);
    let server = match be.config.timeouts.connect {
        Some(t) => tokio::time::timeout(t, connect).await.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timeout",
            ))
        }),
        None => connect.await,
    };
    let mut server = match server {
        Ok(s) => s,
        Err(e) => {
            srv.counters
                .econ
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(backend = %be.name, server = %srv.name, "cannot connect: {e}");
            info.term = *b"SC--";
            log(&txn, info);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    info.t_connect = Some(t0.elapsed());
    let to_server = std::mem::take(&mut txn.to_server);
    if (!to_server.is_empty() && server.write_all(&to_server).await.is_err())
        || (!pending.is_empty() && server.write_all(&pending).await.is_err())
    {
        info.term = *b"SD--";
        log(&txn, info);
        return;
    }
    let idle_client = fe.config.timeouts.client;
    let idle_server = be.config.timeouts.server;
    let idle = match (
        fe.config.timeouts.tunnel.or(be.config.timeouts.tunnel),
        idle_client,
        idle_server,
    ) {
        (Some(t), _, _) => Some(t),
        (None, Some(c), Some(s)) => Some(c.max(s)),
        (None, c, s) => c.or(s),
    };
    let (term, up, down) = pipe(&mut client, &mut server, idle, &be, &mut txn).await;
    info.term = term;
    info.bytes_out = down;
    fe.counters
        .bin
        .fetch_add(up, std::sync::atomic::Ordering::Relaxed);
    fe.counters
        .bout
        .fetch_add(down, std::sync::atomic::Ordering::Relaxed);
    log(&txn, info);
}

/// Copies bytes both ways until one side closes or the idle timeout
/// passes. Returns the termination state and the bytes moved each way.
async fn pipe(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle: Option<Duration>,
    be: &Arc<ProxyRt>,
    txn: &mut Txn,
) -> ([u8; 4], u64, u64) {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut cbuf = vec![0u8; 16 * 1024];
    let mut sbuf = vec![0u8; 16 * 1024];
    let (mut up, mut down) = (0u64, 0u64);
    let mut client_open = true;
    let mut server_open = true;
    let mut first_response = !be.config.tcp_response_content.is_empty();
    let idle = idle.unwrap_or(Duration::from_secs(24 * 3600));
    while client_open || server_open {
        tokio::select! {
            r = cr.read(&mut cbuf), if client_open => match r {
                Ok(0) | Err(_) => { client_open = false; let _ = sw.shutdown().await; }
                Ok(n) => {
                    up += n as u64;
                    if sw.write_all(&cbuf[..n]).await.is_err() { return (*b"SD--", up, down); }
                }
            },
            r = sr.read(&mut sbuf), if server_open => match r {
                Ok(0) | Err(_) => { server_open = false; let _ = cw.shutdown().await; }
                Ok(n) => {
                    if first_response {
                        first_response = false;
                        txn.phase = Phase::Response;
                        txn.payload = Bytes::copy_from_slice(&sbuf[..n]);
                        let flow = rules::run(&be.config.tcp_response_content, Facility::TcpRes, txn).await;
                        // What the rules sent and left, in place of what came.
                        let mut out = std::mem::take(&mut txn.to_client);
                        out.extend_from_slice(&std::mem::take(&mut txn.payload));
                        let to_server = std::mem::take(&mut txn.to_server);
                        if !to_server.is_empty() && sw.write_all(&to_server).await.is_err() {
                            return (*b"SD--", up, down);
                        }
                        down += out.len() as u64;
                        if cw.write_all(&out).await.is_err() { return (*b"CD--", up, down); }
                        if !matches!(flow, Flow::Next) {
                            return (*b"PD--", up, down);
                        }
                    } else {
                        down += n as u64;
                        if cw.write_all(&sbuf[..n]).await.is_err() { return (*b"CD--", up, down); }
                    }
                }
            },
            _ = tokio::time::sleep(idle) => {
                return (if client_open { *b"cD--" } else { *b"sD--" }, up, down);
            }
        }
    }
    (*b"----", up, down)
}

fn log(txn: &Txn, info: LogInfo) {
    let o = &txn.frontend.config.options;
    if o.tcplog || o.httplog || o.log {
        emit(&LogCtx::new(txn, String::new(), info).tcp_line());
    }
}
