//! Graceful stop on SIGTERM and reload on SIGHUP, with the real binary.

use std::time::Duration;

use anyhow::Result;

use crate::common::*;

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() -> Result<()> {
    let up = Upstream::start("slow", Behavior::Slow(Duration::from_millis(800))).await;
    let dir = TempDir::new();
    let f = dir.write(
        "t.cfg",
        &format!("defaults\n  mode http\n  timeout server 5s\nfrontend fe\n  bind 127.0.0.1:0\n  default_backend be\nbackend be\n  server s {}\n", up.addr),
    );
    let mut p = ProxyProcess::spawn(&["-f", &f.to_string_lossy()], 1)?;
    let addr = p.addrs[0];
    let inflight = tokio::spawn(async move { get(addr, "/").await });
    eventually(
        "request reached the server",
        Duration::from_secs(5),
        async || up.hits() == 1,
    )
    .await;
    p.signal("TERM");
    let r = inflight.await??;
    assert_eq!((r.status, r.body.as_str()), (200, "slow\n"));
    let code = tokio::task::spawn_blocking(move || p.wait_exit(Duration::from_secs(10))).await?;
    assert_eq!(code, Some(0));
    Ok(())
}

#[tokio::test]
async fn sighup_reloads_without_dropping_connections() -> Result<()> {
    let up = Upstream::start("up", Behavior::Slow(Duration::from_millis(500))).await;
    let dir = TempDir::new();
    let extra = std::net::TcpListener::bind("127.0.0.1:0")?;
    let extra_addr = extra.local_addr()?;
    drop(extra);
    let cfg = |version: &str, extra_bind: &str| {
        format!(
            "defaults\n  mode http\n  timeout server 5s\nfrontend fe\n  bind 127.0.0.1:0\n{extra_bind}  http-response set-header X-Version {version}\n  default_backend be\nbackend be\n  server s {}\n",
            up.addr
        )
    };
    let f = dir.write("t.cfg", &cfg("one", ""));
    let p = ProxyProcess::spawn(&["-f", &f.to_string_lossy()], 1)?;
    let addr = p.addrs[0];
    assert_eq!(
        get(addr, "/").await?.header("x-version").as_deref(),
        Some("one")
    );
    // A request in flight across the reload.
    let inflight = tokio::spawn(async move { get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    dir.write("t.cfg", &cfg("two", &format!("  bind {extra_addr}\n")));
    p.signal("HUP");
    let r = inflight.await??;
    assert_eq!(r.status, 200, "in-flight request survived the reload");
    eventually("new configuration in force", Duration::from_secs(5), async || {
        matches!(get(addr, "/").await, Ok(r) if r.header("x-version").as_deref() == Some("two"))
    })
    .await;
    // The same listening socket still accepts, and the new bind works.
    assert_eq!(
        get(extra_addr, "/").await?.header("x-version").as_deref(),
        Some("two")
    );
    // A broken configuration is refused and the running one stays.
    dir.write("t.cfg", "frontend broken\n  nonsense\n");
    p.signal("HUP");
    eventually(
        "reload failure logged",
        Duration::from_secs(5),
        async || p.stderr_lines().iter().any(|l| l.contains("reload failed")),
    )
    .await;
    assert_eq!(
        get(addr, "/").await?.header("x-version").as_deref(),
        Some("two")
    );
    Ok(())
}
