//! Health checks: a TCP connect, or an HTTP request with `option httpchk`,
//! every `inter`, moving servers between UP and DOWN after `rise`
//! successes or `fall` failures.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::state::{ProxyRt, ServerRt, ServerState, World};
use crate::config::model::HttpCheck;

/// Starts the checks of every checked server of every backend.
pub fn spawn_all(world: &Arc<World>) -> Vec<JoinHandle<()>> {
    let mut out = Vec::new();
    for be in world.proxies.iter().filter(|p| p.is_backend()) {
        for srv in be.servers.iter().filter(|s| s.config.check) {
            out.push(tokio::spawn(check_loop(be.clone(), srv.clone())));
        }
    }
    out
}

async fn check_loop(be: Arc<ProxyRt>, srv: Arc<ServerRt>) {
    // Spread the first checks a little, as HAProxy does.
    let spread = Duration::from_millis(rand::random::<u64>() % 50);
    tokio::time::sleep(spread).await;
    loop {
        let started = Instant::now();
        let result = check_once(&be, &srv).await;
        let took = started.elapsed();
        record(&be, &srv, result, took);
        tokio::time::sleep(srv.config.inter).await;
    }
}

/// Outcome of one check: `Ok(info)` or `Err(reason)`.
async fn check_once(be: &ProxyRt, srv: &ServerRt) -> Result<String, String> {
    let connect_timeout = be
        .config
        .timeouts
        .connect
        .unwrap_or(srv.config.inter)
        .min(srv.config.inter.max(Duration::from_millis(100)));
    let read_timeout = be.config.timeouts.check.unwrap_or(srv.config.inter);
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(srv.addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("Layer4 connection problem, info: \"{e}\"")),
        Err(_) => return Err("Layer4 timeout".to_string()),
    };
    let Some(hc) = &be.config.options.httpchk else {
        return Ok("Layer4 check passed".to_string());
    };
    match tokio::time::timeout(read_timeout, http_check(&mut stream, hc, srv)).await {
        Ok(r) => r,
        Err(_) => Err("Layer7 timeout".to_string()),
    }
}

async fn http_check(
    stream: &mut TcpStream,
    hc: &HttpCheck,
    srv: &ServerRt,
) -> Result<String, String> {
    let mut req = format!("{} {} {}\r\n", hc.method, hc.uri, hc.version);
    if hc.version.ends_with("1.1") {
        req.push_str(&format!("Host: {}\r\nConnection: close\r\n", srv.addr));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("Layer7 connection problem, info: \"{e}\""))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("Layer7 connection problem, info: \"{e}\""))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let mut words = line.split_whitespace();
    let proto = words.next().unwrap_or("");
    let code: u16 = words.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    if !proto.starts_with("HTTP/") || code == 0 {
        return Err("Layer7 invalid response".to_string());
    }
    let ok = match hc.expect_status {
        Some(want) => code == want,
        None => (200..400).contains(&code),
    };
    if ok {
        Ok(format!("Layer7 check passed, code: {code}"))
    } else {
        Err(format!(
            "Layer7 wrong status, code: {code}, info: \"{}\"",
            line.trim()
        ))
    }
}

fn record(be: &ProxyRt, srv: &ServerRt, result: Result<String, String>, took: Duration) {
    let state = srv.state();
    match result {
        Ok(info) => {
            srv.check_fail_streak.store(0, Ordering::Relaxed);
            let ok = srv.check_ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if state == ServerState::Down && ok >= srv.config.rise {
                srv.set_state(ServerState::Up);
                tracing::warn!(
                    "Server {}/{} is UP, reason: {info}, check duration: {}ms. {} active and {} backup servers online.",
                    be.name,
                    srv.name,
                    took.as_millis(),
                    active(be),
                    backups(be)
                );
            }
        }
        Err(reason) => {
            srv.check_ok_streak.store(0, Ordering::Relaxed);
            srv.counters.chkfail.fetch_add(1, Ordering::Relaxed);
            let fails = srv.check_fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if state == ServerState::Up && fails >= srv.config.fall {
                srv.set_state(ServerState::Down);
                srv.counters.chkdown.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "Server {}/{} is DOWN, reason: {reason}, check duration: {}ms. {} active and {} backup servers left.",
                    be.name,
                    srv.name,
                    took.as_millis(),
                    active(be),
                    backups(be)
                );
                if be.nbsrv() == 0 {
                    tracing::error!("backend '{}' has no server available!", be.name);
                }
            }
        }
    }
}

fn active(be: &ProxyRt) -> usize {
    be.servers
        .iter()
        .filter(|s| !s.config.backup && s.usable())
        .count()
}

fn backups(be: &ProxyRt) -> usize {
    be.servers
        .iter()
        .filter(|s| s.config.backup && s.usable())
        .count()
}
