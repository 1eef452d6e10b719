//! Shared test fixtures: real upstream servers, the proxy in-process or as
//! the real binary, and an HTTP client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use moonbox::config::{self, Loaded};
use moonbox::ext::Registry;
use moonbox::proxy::Proxy;
use tokio::net::TcpListener;

/// What a test upstream does with each request.
#[derive(Clone, Copy, Debug)]
pub enum Behavior {
    /// 200, body `NAME\n`, and `x-echo-*` headers repeating the request's
    /// method, path, query and headers.
    Echo,
    /// Waits before answering like `Echo`.
    Slow(Duration),
    /// Answers with this status.
    Status(u16),
}

/// A real HTTP/1.1 server on 127.0.0.1:0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str, behavior: Behavior) -> Upstream {
        Self::start_on("127.0.0.1:0", name, behavior).await
    }

    /// Like [`start`](Self::start) on a given address.
    pub async fn start_on(addr: &str, name: &str, behavior: Behavior) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let name: Arc<str> = Arc::from(name);
        let hits2 = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                let hits = hits2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let name = name.clone();
                        let hits = hits.clone();
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(answer(&name, behavior, req).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, hits, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn answer(name: &str, behavior: Behavior, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let status = match behavior {
        Behavior::Slow(d) => {
            tokio::time::sleep(d).await;
            200
        }
        Behavior::Status(s) => s,
        Behavior::Echo => 200,
    };
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut b = Response::builder()
        .status(status)
        .header("x-server", name)
        .header("x-echo-method", parts.method.as_str())
        .header("x-echo-path", parts.uri.path())
        .header("x-echo-query", parts.uri.query().unwrap_or(""))
        .header("x-echo-body-len", body.len().to_string());
    for (n, v) in &parts.headers {
        b = b.header(format!("x-echo-{n}"), v.clone());
    }
    b.body(Full::new(Bytes::from(format!("{name}\n"))))
        .expect("response")
}

/// A response as a client sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
    }
}

/// Sends one request with a fresh HTTP/1.1 connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("connect to proxy")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test.local");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string())))?;
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply> {
    request(addr, "GET", path, &[], "").await
}

/// Sends raw bytes and returns everything the proxy answers until it closes
/// (or 2 s pass).
pub async fn raw(addr: SocketAddr, data: &[u8]) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(data).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).to_string())
}

/// The proxy running in this process.
pub struct InProc {
    pub proxy: Proxy,
    pub addrs: HashMap<String, SocketAddr>,
}

impl InProc {
    pub fn addr(&self, frontend: &str) -> SocketAddr {
        *self
            .addrs
            .get(frontend)
            .unwrap_or_else(|| panic!("no frontend {frontend}"))
    }
}

pub fn load(cfg: &str, registry: Registry) -> std::result::Result<Loaded, config::ConfigErrors> {
    config::load_sources(
        &[(PathBuf::from("test.cfg"), cfg.to_string())],
        registry,
        &mut |_, _, _| Ok(()),
    )
}

/// Starts the proxy in-process on a configuration text.
pub async fn start(cfg: &str, registry: Registry) -> Result<InProc> {
    let loaded = load(cfg, registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = Proxy::start(&loaded).await?;
    let addrs = proxy.local_addrs().into_iter().collect();
    Ok(InProc { proxy, addrs })
}

/// Polls `f` until it returns true or the deadline passes.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_proxy"))
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "moonbox-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real `proxy` binary, running.
pub struct ProxyProcess {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Starts `proxy ARGS` and waits until it listens on `nbinds` addresses.
    pub fn spawn(args: &[&str], nbinds: usize) -> Result<ProxyProcess> {
        Self::spawn_env(args, &[], nbinds)
    }

    /// Like [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)], nbinds: usize) -> Result<ProxyProcess> {
        let mut child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn proxy")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().context("stdout")?;
        let err = child.stderr.take().context("stderr")?;
        for (pipe, sink) in [
            (
                Box::new(out) as Box<dyn std::io::Read + Send>,
                stdout.clone(),
            ),
            (
                Box::new(err) as Box<dyn std::io::Read + Send>,
                stderr.clone(),
            ),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut v) = sink.lock() {
                        v.push(line);
                    }
                }
            });
        }
        let mut p = ProxyProcess {
            child,
            addrs: Vec::new(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.addrs.len() < nbinds {
            if Instant::now() > deadline {
                bail!("proxy did not start: {:?}", p.stderr_lines());
            }
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!("proxy exited with {st}: {:?}", p.stderr_lines());
            }
            p.addrs = p
                .stderr_lines()
                .iter()
                .filter_map(|l| l.split("listening on ").nth(1))
                .filter_map(|r| r.split_whitespace().next())
                .filter_map(|a| a.parse().ok())
                .collect();
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `proxy ARGS` to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    run_env(args, &[])
}

/// Like [`run`] with extra environment variables.
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run proxy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Where the Wasm guests built by scripts/build-guests.sh are: next to this
/// test binary's target directory, or `$MOONBOX_GUESTS`.
pub fn guests_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MOONBOX_GUESTS") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/all-HASH -> target
    let target = exe
        .ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf();
    target.join("wasm32-wasip2/release")
}

/// The path of a built guest, e.g. `guest("testkit")`.
pub fn guest(name: &str) -> String {
    let p = guests_dir().join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the guests first (bash scripts/build-guests.sh)",
        p.display()
    );
    p.display().to_string()
}

/// Waits until one of the process's stderr lines satisfies `f`.
pub fn wait_stderr(p: &ProxyProcess, what: &str, timeout: Duration, f: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if p.stderr_lines().iter().any(|l| f(l)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "timed out waiting for {what}; stderr: {:#?}",
        p.stderr_lines()
    );
}
