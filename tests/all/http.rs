//! The HTTP data path: forwarding, keep-alive, h2c, errors.

use std::time::Duration;

use anyhow::Result;
use moonbox::ext::Registry;

use crate::common::*;

fn cfg(up: &str, extra_fe: &str, extra_be: &str) -> String {
    format!(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
         frontend fe\n  bind 127.0.0.1:0\n{extra_fe}\n  default_backend be\n\
         backend be\n{extra_be}\n  server s1 {up}\n"
    )
}

#[tokio::test]
async fn forwards_requests_and_bodies() -> Result<()> {
    let up = Upstream::start("up1", Behavior::Echo).await;
    let p = start(&cfg(&up.addr.to_string(), "", ""), Registry::new()).await?;
    let r = request(
        p.addr("fe"),
        "POST",
        "/a/b?x=1",
        &[("x-custom", "v")],
        "hello body",
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "up1\n");
    assert_eq!(r.header("x-echo-path").as_deref(), Some("/a/b"));
    assert_eq!(r.header("x-echo-query").as_deref(), Some("x=1"));
    assert_eq!(r.header("x-echo-x-custom").as_deref(), Some("v"));
    assert_eq!(r.header("x-echo-host").as_deref(), Some("test.local"));
    assert_eq!(r.header("x-echo-body-len").as_deref(), Some("10"));
    Ok(())
}

/// Sends a request, closes the sending side as a client that has nothing
/// more to say does, and returns what comes back.
async fn request_then_half_close(addr: std::net::SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).to_string())
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_its_response_unless_abortonclose() -> Result<()> {
    let up = Upstream::start("up1", Behavior::Slow(Duration::from_millis(200))).await;
    // HAProxy's default: the request goes on.
    let p = start(&cfg(&up.addr.to_string(), "", ""), Registry::new()).await?;
    let got = request_then_half_close(p.addr("fe")).await?;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("up1\n"), "{got}");
    // `option abortonclose`: the client's close aborts it.
    let p = start(
        &cfg(&up.addr.to_string(), "  option abortonclose", ""),
        Registry::new(),
    )
    .await?;
    let got = request_then_half_close(p.addr("fe")).await?;
    assert_eq!(got, "");
    Ok(())
}

/// A bare server for one request: it answers `reply` and hands back the
/// request head it read.
async fn recording_server(
    reply: &'static [u8],
) -> Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<Option<String>>,
)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let seen = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.ok()?;
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.ok()?;
        let _ = s.write_all(reply).await;
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    });
    Ok((addr, seen))
}

/// A server that answers each request with `STREAM_CHUNKS` chunks of
/// `STREAM_CHUNK` bytes (byte `i` is `i % 251`), pausing every few chunks.
async fn streaming_server() -> Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                // Keep-alive: one response per request head.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    head.clear();
                    if s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut at = 0usize;
                    for i in 0..STREAM_CHUNKS {
                        let data: Vec<u8> =
                            (at..at + STREAM_CHUNK).map(|b| (b % 251) as u8).collect();
                        at += STREAM_CHUNK;
                        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
                        out.extend_from_slice(&data);
                        out.extend_from_slice(b"\r\n");
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                        if i % 8 == 0 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    if s.write_all(b"0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

const STREAM_CHUNK: usize = 100_000;
const STREAM_CHUNKS: usize = 80;

/// Large bodies in both directions, with the sender and the receiver each
/// pausing now and then: every wait of the proxy on either side must be
/// woken when the other side can go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_pauses_on_both_sides() -> Result<()> {
    // A wake-up lost on the way shows as a transfer that stops. Two
    // threads: wakes also come from the other one.
    tokio::time::timeout(Duration::from_secs(60), stream_large_bodies())
        .await
        .map_err(|_| anyhow::anyhow!("a transfer stalled"))?
}

async fn stream_large_bodies() -> Result<()> {
    use http_body_util::BodyExt;
    let up = streaming_server().await?;
    let p = start(&cfg(&up.to_string(), "", ""), Registry::new()).await?;
    let stream = tokio::net::TcpStream::connect(p.addr("fe")).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    for round in 0..2 {
        let req = http::Request::get("/")
            .header("host", "a")
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let (mut got, mut frames) = (0usize, 0usize);
        while let Some(f) = body.frame().await {
            let Ok(data) = f?.into_data() else { continue };
            for (i, b) in data.iter().enumerate() {
                assert_eq!(
                    *b as usize,
                    (got + i) % 251,
                    "byte {} of round {round}",
                    got + i
                );
            }
            got += data.len();
            frames += 1;
            // A slow reader: the proxy's writes to it back up.
            if frames % 16 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(got, STREAM_CHUNK * STREAM_CHUNKS, "round {round}");
        sender.ready().await?;
    }

    // A large request body, sent in pieces with pauses, reaches the server
    // whole.
    let echo = Upstream::start("up1", Behavior::Echo).await;
    let p = start(&cfg(&echo.addr.to_string(), "", ""), Registry::new()).await?;
    let stream = tokio::net::TcpStream::connect(p.addr("fe")).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..40 {
            if tx
                .send(bytes::Bytes::from(vec![b'x'; 100_000]))
                .await
                .is_err()
            {
                return;
            }
            if i % 8 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let req = http::Request::post("/up")
        .header("host", "a")
        .body(ChannelBody(rx))?;
    let resp = sender.send_request(req).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-echo-body-len")
            .and_then(|v| v.to_str().ok()),
        Some("4000000")
    );
    Ok(())
}

/// A request body fed through a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|d| d.map(|d| Ok(hyper::body::Frame::data(d))))
    }
}

#[tokio::test]
async fn hop_by_hop_headers_stop_at_the_proxy() -> Result<()> {
    // The server answers with headers meant for the proxy alone.
    let (up, seen) = recording_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nConnection: x-internal\r\n\
          X-Internal: secret\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\nok",
    )
    .await?;
    let p = start(&cfg(&up.to_string(), "", ""), Registry::new()).await?;
    let r = request(
        p.addr("fe"),
        "GET",
        "/",
        &[
            ("connection", "keep-alive, x-session"),
            ("x-session", "abc"),
            ("keep-alive", "timeout=9"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("x-other", "1"),
        ],
        "",
    )
    .await?;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(r.header("x-kept").as_deref(), Some("yes"));
    for gone in ["x-internal", "keep-alive"] {
        assert_eq!(r.header(gone), None, "{gone} reached the client");
    }
    let head = seen.await?.unwrap_or_default().to_lowercase();
    assert!(head.contains("\r\nx-other: 1\r\n"), "{head}");
    for gone in ["x-session", "keep-alive:", "proxy-connection", "\r\nte:"] {
        assert!(!head.contains(gone), "{gone} reached the server: {head}");
    }
    Ok(())
}

#[tokio::test]
async fn requests_reach_the_server_in_origin_form() -> Result<()> {
    let (up, seen) = recording_server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await?;
    let p = start(&cfg(&up.to_string(), "", ""), Registry::new()).await?;
    let r = get(p.addr("fe"), "/some/path?q=1").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let head = seen.await?.unwrap_or_default();
    assert_eq!(head.lines().next(), Some("GET /some/path?q=1 HTTP/1.1"));
    Ok(())
}

#[tokio::test]
async fn keep_alive_reuses_client_and_server_connections() -> Result<()> {
    let up = Upstream::start("up1", Behavior::Echo).await;
    let p = start(&cfg(&up.addr.to_string(), "", ""), Registry::new()).await?;
    let raw_req = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let out = raw(p.addr("fe"), raw_req).await?;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(
        out.contains("x-echo-path: /1") && out.contains("x-echo-path: /2"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn server_connections_are_reused_after_bodies_and_empty_responses() -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A keep-alive server that counts the connections it accepts.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let up = l.local_addr()?;
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let (status, body) = match req.uri().path() {
                            "/empty" => (204, ""),
                            _ => (200, "body\n"),
                        };
                        http::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let p = start(&cfg(&up.to_string(), "", ""), Registry::new()).await?;
    for path in ["/a", "/empty", "/b", "/empty", "/c"] {
        // A new client connection each time: only the server side is pooled.
        let r = get(p.addr("fe"), path).await?;
        let want = if path == "/empty" {
            (204, "")
        } else {
            (200, "body\n")
        };
        assert_eq!((r.status, r.body.as_str()), want, "{path}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    server.abort();
    Ok(())
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() -> Result<()> {
    let up = Upstream::start("up1", Behavior::Echo).await;
    let p = start(&cfg(&up.addr.to_string(), "", ""), Registry::new()).await?;
    let stream = tokio::net::TcpStream::connect(p.addr("fe")).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(format!("http://{}/h2/path", p.addr("fe")))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(
        resp.headers()
            .get("x-echo-path")
            .and_then(|v| v.to_str().ok()),
        Some("/h2/path")
    );
    Ok(())
}

#[tokio::test]
async fn forwardfor_adds_client_address() -> Result<()> {
    let up = Upstream::start("up1", Behavior::Echo).await;
    let p = start(
        &cfg(&up.addr.to_string(), "  option forwardfor", ""),
        Registry::new(),
    )
    .await?;
    let r = get(p.addr("fe"), "/").await?;
    assert_eq!(
        r.header("x-echo-x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    Ok(())
}

#[tokio::test]
async fn malformed_request_gets_400() -> Result<()> {
    let up = Upstream::start("up1", Behavior::Echo).await;
    let p = start(&cfg(&up.addr.to_string(), "", ""), Registry::new()).await?;
    let out = raw(p.addr("fe"), b"GET / HTTP/1.1\r\nHost a b c\r\n\r\n").await?;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(p.addr("fe"), b"\x01\x02garbage\r\n\r\n").await?;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(up.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn oversized_headers_get_431() -> Result<()> {
    let up = Upstream::start("up1", Behavior::Echo).await;
    let p = start(&cfg(&up.addr.to_string(), "", ""), Registry::new()).await?;
    let big = "x".repeat(64 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n");
    let out = raw(p.addr("fe"), req.as_bytes()).await?;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );
    Ok(())
}

#[tokio::test]
async fn every_server_down_gives_503() -> Result<()> {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dead = l.local_addr()?;
    drop(l);
    let p = start(&cfg(&dead.to_string(), "", ""), Registry::new()).await?;
    let r = get(p.addr("fe"), "/").await?;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("503 Service Unavailable"), "{}", r.body);
    // A backend without servers too.
    let p2 = start(
        "defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:0\n  default_backend empty\nbackend empty\n",
        Registry::new(),
    )
    .await?;
    assert_eq!(get(p2.addr("fe"), "/").await?.status, 503);
    Ok(())
}

#[tokio::test]
async fn upstream_timeout_gives_504() -> Result<()> {
    let up = Upstream::start("slow", Behavior::Slow(Duration::from_secs(3))).await;
    let c = format!(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout server 200ms\n\
         frontend fe\n  bind 127.0.0.1:0\n  default_backend be\nbackend be\n  server s1 {}\n",
        up.addr
    );
    let p = start(&c, Registry::new()).await?;
    let r = get(p.addr("fe"), "/").await?;
    assert_eq!(r.status, 504);
    Ok(())
}

#[tokio::test]
async fn upstream_status_is_passed_through_and_counted() -> Result<()> {
    let up = Upstream::start("nf", Behavior::Status(404)).await;
    let p = start(&cfg(&up.addr.to_string(), "", ""), Registry::new()).await?;
    assert_eq!(get(p.addr("fe"), "/").await?.status, 404);
    let w = p.proxy.world();
    let be = w.backend("be").expect("backend");
    let srv = be.server("s1").expect("server");
    assert_eq!(moonbox::proxy::state::Counters::get(&srv.counters.stot), 1);
    assert_eq!(
        moonbox::proxy::state::Counters::get(&be.counters.hrsp[3]),
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_request_not_received_within_timeout_http_request_gets_408() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = "defaults\n  mode http\n  timeout http-request 300ms\n  timeout client 30s\n\
             frontend fe\n  bind 127.0.0.1:0\n  http-request return status 200 content-type text/plain string ok\n";
    let p = start(c, Registry::new()).await?;
    // What the client sends before stalling, and what it must read, as
    // HAProxy answers: a 408 to a new connection that sent nothing or part
    // of a head, nothing to an idle keep-alive connection.
    let cases: [(&[u8], &[u8], &str); 4] = [
        (b"", b"", "HTTP/1.1 408 Request Time-out"),
        (
            b"",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
            "HTTP/1.1 408 Request Time-out",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", ""),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HT",
            "HTTP/1.1 408 Request Time-out",
        ),
    ];
    for (served, stalled, expect) in cases {
        let mut s = tokio::net::TcpStream::connect(p.addr("fe")).await?;
        if !served.is_empty() {
            s.write_all(served).await?;
            let mut b = [0u8; 512];
            let n = s.read(&mut b).await?;
            assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
        }
        let t0 = std::time::Instant::now();
        s.write_all(stalled).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&buf);
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
        if expect.is_empty() {
            assert!(buf.is_empty(), "{text}");
        } else {
            assert!(text.starts_with(expect), "{text}");
            assert!(text.contains("Your browser didn't send a complete request in time."));
        }
    }
    // A complete request on a new connection is served meanwhile.
    assert_eq!(get(p.addr("fe"), "/").await?.status, 200);
    // The three 408s count among the frontend's 4xx answers.
    let w = p.proxy.world();
    let fe = w.proxy("fe").expect("frontend");
    assert_eq!(
        moonbox::proxy::state::Counters::get(&fe.counters.hrsp[3]),
        3
    );
    Ok(())
}
