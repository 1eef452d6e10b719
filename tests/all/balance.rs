//! Balancing algorithms, server options and health checks.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use moonbox::ext::Registry;
use moonbox::proxy::state::ServerState;

use crate::common::*;

async fn spread(addr: std::net::SocketAddr, n: usize) -> Result<HashMap<String, usize>> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let r = get(addr, "/").await?;
        *m.entry(r.body.trim().to_string()).or_insert(0) += 1;
    }
    Ok(m)
}

#[tokio::test]
async fn roundrobin_respects_weights_and_skips_disabled() -> Result<()> {
    let a = Upstream::start("a", Behavior::Echo).await;
    let b = Upstream::start("b", Behavior::Echo).await;
    let c = Upstream::start("c", Behavior::Echo).await;
    let cfg = format!(
        "defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:0\n  default_backend be\n\
         backend be\n  balance roundrobin\n  server a {} weight 3\n  server b {} weight 1\n  server c {} disabled\n",
        a.addr, b.addr, c.addr
    );
    let p = start(&cfg, Registry::new()).await?;
    let m = spread(p.addr("fe"), 40).await?;
    assert_eq!(m.get("a"), Some(&30), "{m:?}");
    assert_eq!(m.get("b"), Some(&10), "{m:?}");
    assert_eq!(m.get("c"), None, "{m:?}");
    let w = p.proxy.world();
    assert_eq!(
        w.backend("be")
            .and_then(|b| b.server("c"))
            .map(|s| s.state()),
        Some(ServerState::Maint)
    );
    Ok(())
}

#[tokio::test]
async fn first_and_source_and_backup() -> Result<()> {
    let a = Upstream::start("a", Behavior::Echo).await;
    let b = Upstream::start("b", Behavior::Echo).await;
    let cfg = format!(
        "defaults\n  mode http\nfrontend f1\n  bind 127.0.0.1:0\n  default_backend first\n\
         frontend f2\n  bind 127.0.0.1:0\n  default_backend src\n\
         frontend f3\n  bind 127.0.0.1:0\n  default_backend bk\n\
         backend first\n  balance first\n  server a {0}\n  server b {1}\n\
         backend src\n  balance source\n  server a {0}\n  server b {1}\n\
         backend bk\n  server a {0} disabled\n  server b {1} backup\n",
        a.addr, b.addr
    );
    let p = start(&cfg, Registry::new()).await?;
    assert_eq!(spread(p.addr("f1"), 5).await?.get("a"), Some(&5));
    let m = spread(p.addr("f2"), 6).await?;
    assert_eq!(m.len(), 1, "same source, same server: {m:?}");
    assert_eq!(
        spread(p.addr("f3"), 3).await?.get("b"),
        Some(&3),
        "backup used when no active server"
    );
    Ok(())
}

#[tokio::test]
async fn leastconn_prefers_idle_server() -> Result<()> {
    let slow = Upstream::start("slow", Behavior::Slow(Duration::from_millis(600))).await;
    let fast = Upstream::start("fast", Behavior::Echo).await;
    let cfg = format!(
        "defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:0\n  default_backend be\n\
         backend be\n  balance leastconn\n  server slow {}\n  server fast {}\n",
        slow.addr, fast.addr
    );
    let p = start(&cfg, Registry::new()).await?;
    let addr = p.addr("fe");
    // Occupy one server with a slow request, then the next ones go to the other.
    let first = tokio::spawn(async move { get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(get(addr, "/").await?.body);
    }
    let first = first.await??;
    let busy = first.body.clone();
    assert!(
        bodies.iter().all(|b| *b != busy),
        "first went to {busy}, then {bodies:?}"
    );
    Ok(())
}

#[tokio::test]
async fn health_checks_mark_servers_down_and_up() -> Result<()> {
    let good = Upstream::start("good", Behavior::Echo).await;
    // A port that refuses connections.
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dead = l.local_addr()?;
    drop(l);
    let cfg = format!(
        "defaults\n  mode http\n  timeout connect 200ms\nfrontend fe\n  bind 127.0.0.1:0\n  default_backend be\n\
         backend be\n  server good {} check inter 50ms rise 2 fall 2\n  server dead {} check inter 50ms rise 2 fall 2\n",
        good.addr, dead
    );
    let p = start(&cfg, Registry::new()).await?;
    let w = p.proxy.world();
    let be = w.backend("be").expect("be").clone();
    let dead_srv = be.server("dead").expect("dead").clone();
    eventually(
        "dead server marked DOWN",
        Duration::from_secs(5),
        async || dead_srv.state() == ServerState::Down,
    )
    .await;
    assert_eq!(be.server("good").map(|s| s.state()), Some(ServerState::Up));
    assert_eq!(be.nbsrv(), 1);
    // Every request now goes to the good server.
    assert_eq!(spread(p.addr("fe"), 6).await?.get("good"), Some(&6));
    // Bring the dead one to life: it comes back UP after `rise` checks.
    let _revived = std::net::TcpListener::bind(dead)?;
    eventually(
        "revived server marked UP",
        Duration::from_secs(5),
        async || dead_srv.state() == ServerState::Up,
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn httpchk_checks_status() -> Result<()> {
    let ok = Upstream::start("ok", Behavior::Echo).await;
    let bad = Upstream::start("bad", Behavior::Status(500)).await;
    let cfg = format!(
        "defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:0\n  default_backend be\n\
         backend be\n  option httpchk GET /health\n  server ok {} check inter 50ms fall 2\n  server bad {} check inter 50ms fall 2\n",
        ok.addr, bad.addr
    );
    let p = start(&cfg, Registry::new()).await?;
    let w = p.proxy.world();
    let be = w.backend("be").expect("be").clone();
    let bad_srv = be.server("bad").expect("bad").clone();
    eventually(
        "500-answering server marked DOWN",
        Duration::from_secs(5),
        async || bad_srv.state() == ServerState::Down,
    )
    .await;
    assert_eq!(be.server("ok").map(|s| s.state()), Some(ServerState::Up));
    assert!(ok.hits() > 0, "health checks reached the server");
    Ok(())
}

#[tokio::test]
async fn full_servers_queue_requests_until_a_slot_frees() -> Result<()> {
    let a = Upstream::start("a", Behavior::Slow(Duration::from_millis(150))).await;
    let cfg = format!(
        "defaults\n  mode http\n  timeout queue 5s\nfrontend fe\n  bind 127.0.0.1:0\n  default_backend be\n\
         backend be\n  server a {} maxconn 1\n",
        a.addr
    );
    let p = start(&cfg, Registry::new()).await?;
    let addr = p.addr("fe");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..3 {
        set.spawn(async move { get(addr, "/").await });
    }
    // While one request is served the others wait in the queue.
    let world = p.proxy.world();
    let be = world.backend("be").expect("backend").clone();
    eventually("two queued requests", Duration::from_secs(2), async || {
        moonbox::proxy::state::Counters::get(&be.counters.qcur) == 2
    })
    .await;
    while let Some(r) = set.join_next().await {
        assert_eq!(r??.status, 200);
    }
    let srv = be.server("a").expect("server");
    assert_eq!(moonbox::proxy::state::Counters::get(&srv.counters.smax), 1);
    assert_eq!(moonbox::proxy::state::Counters::get(&be.counters.qmax), 2);
    assert_eq!(moonbox::proxy::state::Counters::get(&be.counters.qcur), 0);
    Ok(())
}

#[tokio::test]
async fn a_request_queued_past_timeout_queue_gets_503() -> Result<()> {
    let a = Upstream::start("a", Behavior::Slow(Duration::from_millis(600))).await;
    let cfg = format!(
        "defaults\n  mode http\n  timeout queue 100ms\nfrontend fe\n  bind 127.0.0.1:0\n  default_backend be\n\
         backend be\n  server a {} maxconn 1\n",
        a.addr
    );
    let p = start(&cfg, Registry::new()).await?;
    let addr = p.addr("fe");
    let first = tokio::spawn(async move { get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(addr, "/").await?.status, 503);
    assert_eq!(first.await??.status, 200);
    Ok(())
}
