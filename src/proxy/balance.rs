//! Server selection: roundrobin (weighted), leastconn, first, source.
//! Backup servers are used only when no active server is usable.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use smallvec::SmallVec;

use super::state::{Counters, ProxyRt, ServerRt, SessionGuard};
use crate::config::model::Balance;

/// Why no server was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// No server is usable.
    NoServer,
    /// Every usable server stayed at its `maxconn` for `timeout queue`.
    QueueTimeout,
}

/// Picks a server and opens a session on it. While every usable server is
/// at its `maxconn`, the request waits in the backend's queue (HAProxy's
/// `timeout queue`, else `timeout connect`, else 5 s). Returns the server,
/// its session and the time spent queued.
pub async fn acquire(
    backend: &ProxyRt,
    src: IpAddr,
) -> Result<(Arc<ServerRt>, SessionGuard, Duration), Unavailable> {
    // A server with room: no clock read, no place in the queue.
    let Some(server) = pick(backend, src) else {
        return Err(Unavailable::NoServer);
    };
    if let Some(guard) = server.try_reserve() {
        return Ok((server, guard, Duration::ZERO));
    }
    let started = tokio::time::Instant::now();
    let t = &backend.config.timeouts;
    let deadline = started + t.queue.or(t.connect).unwrap_or(Duration::from_secs(5));
    let counters = &backend.counters;
    let mut queued = false;
    let result = loop {
        // Listen before looking, so that a slot freed in between is seen.
        let freed = counters.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let Some(server) = pick(backend, src) else {
            break Err(Unavailable::NoServer);
        };
        if let Some(guard) = server.try_reserve() {
            break Ok((server, guard, started.elapsed()));
        }
        if backend.servers.iter().any(|s| s.usable() && s.has_room()) {
            // Another request took the slot first; another server has room.
            continue;
        }
        if !queued {
            queued = true;
            let q = counters.qcur.fetch_add(1, Ordering::Relaxed) + 1;
            counters.qmax.fetch_max(q, Ordering::Relaxed);
        }
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            break Err(Unavailable::QueueTimeout);
        }
    };
    if queued {
        counters.qcur.fetch_sub(1, Ordering::Relaxed);
    }
    result
}

/// Servers considered for one pick; backends rarely have more than a few,
/// kept off the heap.
type Servers<'a> = SmallVec<[&'a Arc<ServerRt>; 8]>;

/// Picks a server for a new request or connection; `None` when no server
/// is usable (the caller answers 503).
pub fn pick(backend: &ProxyRt, src: IpAddr) -> Option<Arc<ServerRt>> {
    let active: Servers = backend
        .servers
        .iter()
        .filter(|s| !s.config.backup && s.usable())
        .collect();
    let pool = if active.is_empty() {
        // HAProxy uses the first usable backup unless `option allbackups`.
        return backend
            .servers
            .iter()
            .find(|s| s.config.backup && s.usable() && s.has_room())
            .or_else(|| {
                backend
                    .servers
                    .iter()
                    .find(|s| s.config.backup && s.usable())
            })
            .cloned();
    } else {
        active
    };
    let with_room: Servers = pool.iter().copied().filter(|s| s.has_room()).collect();
    // When every server is at its maxconn the pick is only a candidate:
    // `acquire` finds it full and queues the request.
    let candidates = if with_room.is_empty() {
        pool
    } else {
        with_room
    };
    match backend.config.balance {
        Balance::RoundRobin => round_robin(backend, &candidates),
        Balance::LeastConn => candidates
            .iter()
            .min_by_key(|s| {
                let cur = Counters::get(&s.counters.scur);
                let w = s.weight.load(Ordering::Relaxed).max(1) as u64;
                // Compare cur/weight without division: scale by a common factor.
                cur * 256 / w
            })
            .map(|s| Arc::clone(s)),
        Balance::First => candidates.first().map(|s| Arc::clone(s)),
        Balance::Source => {
            let h = match src {
                IpAddr::V4(a) => u32::from(a) as u64,
                IpAddr::V6(a) => {
                    let o = a.octets();
                    o.iter()
                        .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(b as u64))
                }
            };
            let h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
            weighted_index(&candidates, h).map(Arc::clone)
        }
    }
}

fn round_robin(backend: &ProxyRt, candidates: &[&Arc<ServerRt>]) -> Option<Arc<ServerRt>> {
    let n = backend.rr.fetch_add(1, Ordering::Relaxed);
    weighted_index(candidates, n).map(Arc::clone)
}

/// Maps `n` onto the servers in proportion to their weights.
fn weighted_index<'a>(servers: &[&'a Arc<ServerRt>], n: u64) -> Option<&'a Arc<ServerRt>> {
    let total: u64 = servers
        .iter()
        .map(|s| s.weight.load(Ordering::Relaxed).max(1) as u64)
        .sum();
    if total == 0 {
        return None;
    }
    // Interleave: walk slot `n % total` over the weights; consecutive n
    // spread over servers because each server's share is contiguous only
    // within one round, which keeps the computation O(servers).
    let mut slot = n % total;
    // Equal weights: plain rotation.
    if servers
        .iter()
        .all(|s| s.weight.load(Ordering::Relaxed) == servers[0].weight.load(Ordering::Relaxed))
    {
        return servers.get((n % servers.len() as u64) as usize).copied();
    }
    for s in servers {
        let w = s.weight.load(Ordering::Relaxed).max(1) as u64;
        if slot < w {
            return Some(s);
        }
        slot -= w;
    }
    servers.last().copied()
}
