//! The examples, run as their READMEs say: the real binary on each
//! example's own configuration (its ports moved to free ones), with the Lua
//! script (examples/NAME) or the Rust guest (examples/NAME-rust), real
//! upstreams and side services. Both flavours must behave the same.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Starts the proxy on `examples/NAME/haproxy.cfg`, after `edits`
/// (text replacements) and with the listener on a free port.
fn run_example(name: &str, edits: &[(&str, String)]) -> (TempDir, ProxyProcess) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}/haproxy.cfg"));
    let mut cfg = std::fs::read_to_string(&src).expect("example config");
    cfg = cfg.replace("bind 127.0.0.1:8080", "bind 127.0.0.1:0");
    // Scripts are found next to the configuration, which moves.
    let folder = src.parent().expect("example folder").display().to_string();
    cfg = cfg.replace("lua-load ", &format!("lua-load {folder}/"));
    for (from, to) in edits {
        assert!(cfg.contains(from), "{name}: no {from:?} in the config");
        cfg = cfg.replace(from, to);
    }
    let dir = TempDir::new();
    let path = dir.write("haproxy.cfg", &cfg);
    let guests = guests_dir().display().to_string();
    let p = ProxyProcess::spawn_env(
        &["-f", &path.display().to_string()],
        &[("MOONBOX_GUESTS", &guests)],
        1,
    )
    .expect("example starts");
    (dir, p)
}

#[tokio::test]
async fn hello_says_hello_at_start() -> Result<()> {
    hello("hello-rust").await?;
    hello("hello").await
}

async fn hello(folder: &str) -> Result<()> {
    let (_d, p) = run_example(folder, &[]);
    assert!(
        p.stderr_lines()
            .iter()
            .any(|l| l.contains("Hello HAProxy!")),
        "{:?}",
        p.stderr_lines()
    );
    assert_eq!(get(p.addrs[0], "/").await?.body, "hello from moonbox\n");
    Ok(())
}

#[tokio::test]
async fn greater_than_compares_two_variables() -> Result<()> {
    greater_than("greater_than-rust").await?;
    greater_than("greater_than").await
}

async fn greater_than(folder: &str) -> Result<()> {
    let (_d, p) = run_example(folder, &[]);
    let over = request(p.addrs[0], "GET", "/", &[("x-conn-rate", "150")], "").await?;
    assert_eq!(
        (over.status, over.body.as_str()),
        (429, "too many connections\n")
    );
    let under = request(p.addrs[0], "GET", "/", &[("x-conn-rate", "50")], "").await?;
    assert_eq!((under.status, under.body.as_str()), (200, "welcome\n"));
    let none = get(p.addrs[0], "/").await?;
    assert_eq!(none.status, 200);
    Ok(())
}

#[tokio::test]
async fn least_sessions_routes_to_the_least_busy_backend() -> Result<()> {
    least_sessions("least_sessions-rust").await?;
    least_sessions("least_sessions").await
}

async fn least_sessions(folder: &str) -> Result<()> {
    let dc1 = Upstream::start("dc1", Behavior::Slow(Duration::from_millis(800))).await;
    let dc2 = Upstream::start("dc2", Behavior::Slow(Duration::from_millis(800))).await;
    let (_d, p) = run_example(
        folder,
        &[
            ("127.0.0.1:8001", dc1.addr.to_string()),
            ("127.0.0.1:8002", dc2.addr.to_string()),
        ],
    );
    let a = p.addrs[0];
    // Both idle: the first one. While it is busy: the other.
    let first = tokio::spawn(async move { get(a, "/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn(async move { get(a, "/").await });
    let first = first.await??;
    let second = second.await??;
    assert_eq!(first.header("x-server").as_deref(), Some("dc1"));
    assert_eq!(second.header("x-server").as_deref(), Some("dc2"));
    Ok(())
}

#[tokio::test]
async fn urlencode_redirects_to_the_encoded_name() -> Result<()> {
    urlencode("urlencode-rust").await?;
    urlencode("urlencode").await
}

async fn urlencode(folder: &str) -> Result<()> {
    let (_d, p) = run_example(folder, &[]);
    let r = get(p.addrs[0], "/").await?;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").as_deref(),
        Some("http://192.168.50.20/Vinyl+%26+Rare+Music")
    );
    Ok(())
}

/// An IP checker like the example's ipchecker.py: answers `allow` and
/// `deny` in turn, and records the paths it was asked for.
async fn checker() -> Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let n = Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let k = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = if k.is_multiple_of(2) { "allow" } else { "deny" };
                let resp = format!(
                    "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok((addr, n))
}

#[tokio::test]
async fn ipchecker_allows_and_denies_through_a_real_side_service() -> Result<()> {
    ipchecker("ipchecker-rust", "ipchecker.checkip").await?;
    ipchecker("ipchecker", "lua.checkip").await
}

async fn ipchecker(folder: &str, action: &str) -> Result<()> {
    let (addr, asked) = checker().await?;
    let from = format!("{action} 127.0.0.1 5000");
    let mut edits = vec![(
        from.as_str(),
        format!("{action} {} {}", addr.ip(), addr.port()),
    )];
    if folder.ends_with("-rust") {
        edits.push((
            "allow-connect 127.0.0.1:5000",
            format!("allow-connect {addr}"),
        ));
    }
    let (_d, p) = run_example(folder, &edits);
    let r = get(p.addrs[0], "/").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "allowed\n"), "{folder}");
    let r = get(p.addrs[0], "/").await?;
    assert_eq!(r.status, 403, "{folder}");
    assert_eq!(asked.load(Ordering::SeqCst), 2, "{folder}");
    Ok(())
}

#[tokio::test]
async fn ipchecker_denies_when_the_side_service_is_down() -> Result<()> {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    drop(l);
    let (_d, p) = run_example(
        "ipchecker-rust",
        &[
            (
                "allow-connect 127.0.0.1:5000",
                format!("allow-connect {addr}"),
            ),
            (
                "ipchecker.checkip 127.0.0.1 5000",
                format!("ipchecker.checkip {} {}", addr.ip(), addr.port()),
            ),
        ],
    );
    assert_eq!(get(p.addrs[0], "/").await?.status, 403);
    wait_stderr(&p, "the checker warning", Duration::from_secs(5), |l| {
        l.contains("ipchecker:") && l.contains("connection refused")
    });
    Ok(())
}

#[tokio::test]
async fn magic8ball_answers_on_magic_and_the_backend_elsewhere() -> Result<()> {
    magic8ball("magic8ball-rust", "text/plain").await?;
    magic8ball("magic8ball", "text/html").await
}

async fn magic8ball(folder: &str, content_type: &str) -> Result<()> {
    let app = Upstream::start("app", Behavior::Echo).await;
    let (_d, p) = run_example(folder, &[("127.0.0.1:8000", app.addr.to_string())]);
    let r = get(p.addrs[0], "/magic").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some(content_type));
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string()));
    let answers = [
        "It is certain",
        "It is decidedly so",
        "Without a doubt",
        "Yes definitely",
        "You may rely on it",
        "As I see it, yes",
        "Most likely",
        "Outlook good",
        "Yes",
        "Signs point to yes",
        "Reply hazy try again",
        "Ask again later",
        "Better not tell you now",
        "Cannot predict now",
        "Concentrate and ask again",
        "Don't count on it",
        "My reply is no",
        "My sources say no",
        "Outlook not so good",
        "Very doubtful",
    ];
    let answer = r
        .body
        .trim()
        .trim_start_matches("<html>")
        .trim_end_matches("</html>")
        .trim()
        .trim_start_matches("<body>")
        .trim_end_matches("</body>");
    assert!(answers.contains(&answer), "{:?}", r.body);
    let r = get(p.addrs[0], "/other").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "app\n"));
    Ok(())
}

#[test]
fn log_work_logs_on_its_interval() {
    log_work("log_work-rust", "log_work.wasm\" 10000");
    log_work("log_work", "log_work.lua 10000");
}

fn log_work(folder: &str, line: &str) {
    let (_d, p) = run_example(folder, &[(line, line.replace("10000", "100"))]);
    wait_stderr(&p, "three task lines", Duration::from_secs(5), |_| {
        p.stderr_lines()
            .iter()
            .filter(|l| l.contains("Doing some task work!"))
            .count()
            >= 3
    });
}
