//! HAProxy Lua scripts, run unmodified by the Lua guest through the real
//! binary.

use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::*;

fn repo(p: &str) -> String {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .to_string_lossy()
        .to_string()
}

/// The benchmark anchor's haproxy.cfg and anchor.lua, as they are, with
/// their fixed ports: nginx's stand-in on 18080, the IP checker on 18090.
#[tokio::test]
async fn the_anchor_config_and_script_run_unmodified() -> Result<()> {
    let _app = Upstream::start_on("127.0.0.1:18080", "nginx", Behavior::Echo).await;
    // The IP checker: "<ip>\n" -> "allow\n" (or "deny\n" for 127.0.0.2).
    let checker = tokio::net::TcpListener::bind("127.0.0.1:18090").await?;
    tokio::spawn(async move {
        while let Ok((s, _)) = checker.accept().await {
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut lines = BufReader::new(rd).lines();
                if let Ok(Some(ip)) = lines.next_line().await {
                    let v = if ip == "127.0.0.2" {
                        "deny\n"
                    } else {
                        "allow\n"
                    };
                    let _ = wr.write_all(v.as_bytes()).await;
                }
            });
        }
    });
    let cfg = repo("bench/haproxy-anchor/haproxy.cfg");
    let dir = repo("bench/haproxy-anchor");
    let p = ProxyProcess::spawn_env(
        &["-f", &cfg],
        &[("ANCHOR_DIR", &dir), ("HAP_THREADS", "1")],
        8,
    )?;
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // s1: plain proxy.
    assert_eq!(get(at(18101), "/").await?.body, "nginx\n");
    // s2: an action copies a variable into a header.
    let r = get(at(18102), "/").await?;
    assert_eq!(r.header("x-echo-x-tenant").as_deref(), Some("acme-corp"));
    // s3: a fetch derives a bucket from the path.
    let r = get(at(18103), "/some/path").await?;
    let bucket = r.header("x-echo-x-foo").unwrap_or_default();
    assert!(bucket.starts_with("bucket-"), "{bucket}");
    // s4: a converter percent-encodes.
    let r = request(at(18104), "GET", "/", &[("x-raw", "a b&c/é")], "").await?;
    assert_eq!(
        r.header("x-echo-x-enc").as_deref(),
        Some("a%20b%26c%2F%C3%A9")
    );
    // s5: a service answers without a backend.
    let r = get(at(18105), "/").await?;
    assert_eq!(r.status, 200);
    assert!(r.body.ends_with(".\n"), "{:?}", r.body);
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string()));
    // s6: a socket round trip per request.
    let r = get(at(18106), "/").await?;
    assert_eq!(r.header("x-echo-x-ip-check").as_deref(), Some("allow"));
    // s7: a runaway action is stopped after tune.lua.session-timeout (4 s)
    // and the request goes on; meanwhile the others are served.
    let spin = tokio::spawn(async move { get(at(18107), "/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(at(18101), "/").await?.status, 200);
    // The runaway yields every tune.lua.forced-yield instructions, so the
    // same Lua state serves other actions while it spins.
    let r = get(at(18102), "/").await?;
    assert_eq!(r.header("x-echo-x-tenant").as_deref(), Some("acme-corp"));
    assert!(
        !spin.is_finished(),
        "the runaway ended before the others were served"
    );
    let r = spin.await??;
    assert_eq!(r.status, 200);
    wait_stderr(&p, "the runaway line", Duration::from_secs(5), |l| {
        l.contains("action 'lua.spin' failed") && l.contains("execution timeout")
    });
    Ok(())
}
