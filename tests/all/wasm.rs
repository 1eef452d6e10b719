//! Wasm extensions through the real `proxy` binary: every extension point,
//! the limits and what a fault costs, isolation modes, loading errors, quick
//! mode and the compiled-component cache. Guests are the real ones built
//! from guests/.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::common::*;

/// Writes `cfg` (with `TESTKIT` replaced by the testkit guest's path) and
/// starts the proxy on it.
fn start(cfg: &str, nbinds: usize) -> (TempDir, ProxyProcess) {
    let dir = TempDir::new();
    let cfg = cfg
        .replace("TESTKIT", &guest("testkit"))
        .replace("HEADERS", &guest("headers"));
    let path = dir.write("moonbox.cfg", &cfg);
    let p =
        ProxyProcess::spawn(&["-f", &path.display().to_string()], nbinds).expect("proxy starts");
    (dir, p)
}

const DEFAULTS: &str = "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n";

#[tokio::test]
async fn every_extension_point_works_end_to_end() -> Result<()> {
    let up = Upstream::start("app", Behavior::Echo).await;
    let cfg = format!(
        "global\n    ext-load TESTKIT tick=100\n\n{DEFAULTS}\
frontend fe\n    bind 127.0.0.1:0\n\
    http-request set-header x-noop %[testkit.noop]\n\
    http-request set-header x-rev %[str(abc),testkit.reverse,testkit.suffix(!)]\n\
    http-request set-header x-args %[testkit.echo_args(a,2)]\n\
    http-request set-header x-host %[testkit.builtin]\n\
    http-request set-header x-none %[testkit.none] \n\
    http-request set-header x-error %[testkit.error]\n\
    http-request testkit.tag first\n\
    http-request testkit.rewrite if {{ path_beg /rw }}\n\
    http-request set-header x-priv %[testkit.priv] if {{ path_beg /rewritten }}\n\
    http-request set-header x-vars %[var(txn.seen_method)]-%[var(txn.counter)] if {{ path_beg /rewritten }}\n\
    http-request testkit.backends if {{ path /backends }}\n\
    http-request testkit.reply if {{ path /reply }}\n\
    http-request testkit.deny if {{ path /deny }}\n\
    http-request testkit.fail if {{ path /fail }}\n\
    http-request use-service testkit.hello if {{ path_beg /svc }}\n\
    http-request use-service testkit.stream if {{ path /stream }}\n\
    http-response testkit.tag back\n\
    http-request set-var(txn.want_status) req.hdr(x-status)\n\
    http-response testkit.status if {{ var(txn.want_status) -m found }}\n\
    default_backend app\n\n\
backend app\n    server a {}\n\n\
listen echo\n    mode tcp\n    bind 127.0.0.1:0\n    tcp-request content testkit.tcp_tag\n    tcp-request content use-service testkit.echo\n",
        up.addr
    );
    let (_dir, p) = start(&cfg, 2);
    let http = p.addrs[0];

    // Fetches, converters and an action on the way in, an action on the way out.
    let r = request(http, "GET", "/plain", &[("x-remove-me", "1")], "").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-noop").as_deref(), Some("1"));
    assert_eq!(r.header("x-echo-x-rev").as_deref(), Some("cba!"));
    assert_eq!(r.header("x-echo-x-args").as_deref(), Some("a|2"));
    assert_eq!(r.header("x-echo-x-host").as_deref(), Some("TEST.LOCAL"));
    assert_eq!(r.header("x-echo-x-none").as_deref(), Some(""));
    assert_eq!(r.header("x-echo-x-error").as_deref(), Some(""));
    assert_eq!(r.header("x-echo-x-tag").as_deref(), Some("first"));
    assert_eq!(r.header("x-echo-x-remove-me"), None);
    assert_eq!(r.header("x-tag").as_deref(), Some("back"));

    // The request line, variables and private data.
    let r = request(http, "POST", "/rw/x?q=1", &[], "").await?;
    assert_eq!(r.header("x-echo-path").as_deref(), Some("/rewritten/rw/x"));
    assert_eq!(r.header("x-echo-query").as_deref(), Some("q=1"));
    assert_eq!(r.header("x-echo-x-vars").as_deref(), Some("POST-42"));
    assert_eq!(r.header("x-echo-x-priv").as_deref(), Some("/rw/x"));

    // Response status from an http-res action.
    let r = request(http, "GET", "/", &[("x-status", "1")], "").await?;
    assert_eq!(r.status, 299);

    // Proxies and servers.
    let r = get(http, "/backends").await?;
    assert_eq!(
        r.header("x-echo-x-backends").as_deref(),
        Some("app:1,echo:0")
    );

    // Reply, deny and a failing action (logged; rules go on).
    let r = get(http, "/reply").await?;
    assert_eq!((r.status, r.body.as_str()), (418, "short and stout\n"));
    assert_eq!(get(http, "/deny").await?.status, 403);
    assert_eq!(get(http, "/fail").await?.status, 200);
    wait_stderr(
        &p,
        "the failing action's log line",
        Duration::from_secs(5),
        |l| l.contains("action 'testkit.fail' failed: this action always fails"),
    );

    // An HTTP service reading the body and answering with its own head.
    let r = request(
        http,
        "PUT",
        "/svc/a?b=c",
        &[("user-agent", "tester")],
        "hi there",
    )
    .await?;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-agent").as_deref(), Some("tester"));
    assert_eq!(r.body, "PUT /svc/a?b=c body=hi there id=true\n");
    // A streamed one, with waits between chunks.
    let r = get(http, "/stream").await?;
    assert_eq!(r.body, "chunk 0\nchunk 1\nchunk 2\n");

    // A TCP service behind a tcp-request action.
    let s = tokio::net::TcpStream::connect(p.addrs[1]).await?;
    let (rd, mut wr) = s.into_split();
    let mut lines = BufReader::new(rd).lines();
    wr.write_all(b"one\n").await?;
    assert_eq!(lines.next_line().await?.as_deref(), Some("echo: one"));
    wr.write_all(b"quit\n").await?;
    assert_eq!(lines.next_line().await?.as_deref(), Some("bye"));

    // The task ticks on its own.
    wait_stderr(&p, "two ticks of the task", Duration::from_secs(5), |l| {
        l.contains("tick 2") && l.contains("testkit")
    });
    Ok(())
}

/// Asserts the fault line of the sandbox: extension, point, reason, fuel.
fn assert_fault_logged(p: &ProxyProcess, point: &str, name: &str, reason: &str) {
    wait_stderr(
        p,
        &format!("the fault line of {name}"),
        Duration::from_secs(10),
        |l| {
            l.contains("extension failed")
                && l.contains("extension=\"testkit\"")
                && l.contains(&format!("point=\"{point}\""))
                && l.contains(&format!("name=testkit.{name}"))
                && l.contains(reason)
                && l.contains("fuel=")
        },
    );
}

#[tokio::test]
async fn every_fault_costs_one_invocation_and_the_next_request_is_served() -> Result<()> {
    let cfg = format!(
        "global\n    ext-load TESTKIT fuel 20000000 timeout 2s memory 16m instances 1 task-loop\n\n{DEFAULTS}\
frontend fe\n    bind 127.0.0.1:0\n\
    http-request set-header x-f %[testkit.loop] if {{ path /fetch-loop }}\n\
    http-request set-header x-f %[str(a),testkit.loop] if {{ path /conv-loop }}\n\
    http-request testkit.loop if {{ path /action-loop }}\n\
    http-request use-service testkit.loop if {{ path /service-loop }}\n\
    http-request testkit.bomb if {{ path /bomb }}\n\
    http-request set-header x-f %[testkit.bomb] if {{ path /fetch-bomb }}\n\
    http-request testkit.panic if {{ path /panic }}\n\
    http-request testkit.overflow if {{ path /overflow }}\n\
    http-request set-header x-f %[testkit.sleep] if {{ path /fetch-sleep }}\n\
    http-request set-header x-f %[testkit.connect(127.0.0.1:9)] if {{ path /fetch-connect }}\n\
    http-request return status 200 content-type text/plain lf-string \"ok %[testkit.counter] %[req.hdr(x-f)]\\n\"\n"
    );
    let (_dir, p) = start(&cfg, 1);
    let a = p.addrs[0];
    let served = async |what: &str| {
        let r = get(a, "/").await.expect("request after a fault");
        assert_eq!(r.status, 200, "after {what}");
        assert!(r.body.starts_with("ok "), "after {what}: {}", r.body);
    };

    // A task that loops forever: its call is stopped, the proxy goes on.
    assert_fault_logged(&p, "task", "loop", "reason=fuel exhausted");
    served("the task loop").await;

    let cases = [
        ("/fetch-loop", "fetch", "loop", "reason=fuel exhausted", 200),
        (
            "/conv-loop",
            "converter",
            "loop",
            "reason=fuel exhausted",
            200,
        ),
        (
            "/action-loop",
            "action",
            "loop",
            "reason=fuel exhausted",
            200,
        ),
        (
            "/service-loop",
            "service",
            "loop",
            "reason=fuel exhausted",
            500,
        ),
        (
            "/bomb",
            "action",
            "bomb",
            "reason=memory limit of 16777216 bytes exceeded",
            200,
        ),
        ("/fetch-bomb", "fetch", "bomb", "reason=memory limit", 200),
        (
            "/panic",
            "action",
            "panic",
            "reason=trapped: wasm trap: wasm `unreachable`",
            200,
        ),
        (
            "/overflow",
            "action",
            "overflow",
            "reason=trapped: wasm trap:",
            200,
        ),
        (
            "/fetch-sleep",
            "fetch",
            "sleep",
            "reason=blocked in a WASI call",
            200,
        ),
    ];
    for (path, point, name, reason, status) in cases {
        let r = get(a, path).await?;
        assert_eq!(r.status, status, "{path}: {}", r.body);
        if status == 200 {
            // The failed sample is absent; the rules went on.
            assert!(
                r.body.starts_with("ok ") && r.body.ends_with(" \n"),
                "{path}: {:?}",
                r.body
            );
        }
        assert_fault_logged(&p, point, name, reason);
        served(path).await;
    }

    // WASI sockets are closed to guests: the fetch gets an error value (no
    // fault), so its sample is absent and the instance lives on.
    let r = get(a, "/fetch-connect").await?;
    assert_eq!(r.status, 200);
    assert!(r.body.ends_with(" \n"), "{:?}", r.body);
    wait_stderr(&p, "the refused connect", Duration::from_secs(5), |l| {
        l.contains("testkit.connect") && l.contains("connect refused")
    });
    Ok(())
}

#[tokio::test]
async fn concurrent_waits_on_one_instance_interleave() -> Result<()> {
    let cfg = format!(
        "global\n    ext-load TESTKIT instances 1\n\n{DEFAULTS}\
frontend fe\n    bind 127.0.0.1:0\n    maxconn 1000\n\
    http-request testkit.sleep 100\n\
    http-request return status 200 content-type text/plain lf-string \"%[req.hdr(x-slept)]\"\n"
    );
    let (_dir, p) = start(&cfg, 1);
    let a = p.addrs[0];
    get(a, "/warm").await?;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        set.spawn(async move { get(a, "/").await });
    }
    while let Some(r) = set.join_next().await {
        let r = r??;
        assert_eq!(r.status, 200);
        let slept: u64 = r.body.parse()?;
        assert!(slept >= 100, "slept {slept} ms");
    }
    // One after another would take 10 s.
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "100 waits of 100 ms took {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn sockets_reach_only_what_allow_connect_grants() -> Result<()> {
    // A line echo server the guest may reach.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let allowed = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut lines = BufReader::new(rd).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = wr.write_all(format!("pong {l}\r\n").as_bytes()).await;
                }
            });
        }
    });
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let cfg = format!(
        "global\n    ext-load TESTKIT allow-connect {allowed}\n\n{DEFAULTS}\
frontend fe\n    bind 127.0.0.1:0\n\
    http-request testkit.connect {allowed} if {{ path /allowed }}\n\
    http-request testkit.connect {} if {{ path /other }}\n\
    http-request return status 200 content-type text/plain lf-string \"%[req.hdr(x-connect)]\"\n",
        other.local_addr()?
    );
    let (_dir, p) = start(&cfg, 1);
    let r = get(p.addrs[0], "/allowed").await?;
    assert_eq!(r.body, "ok pong ping");
    let r = get(p.addrs[0], "/other").await?;
    assert!(
        r.body.starts_with("error ") && r.body.contains("NotAllowed"),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("not allowed (see allow-connect)"),
        "{}",
        r.body
    );
    Ok(())
}

#[tokio::test]
async fn isolation_pooled_keeps_state_and_per_request_starts_fresh() -> Result<()> {
    let cfg = format!(
        "global\n    ext-load TESTKIT as pooled instances 1\n    ext-load TESTKIT as fresh isolation per-request\n\n{DEFAULTS}\
frontend fe\n    bind 127.0.0.1:0\n\
    http-request set-var(txn.first) fresh.counter\n\
    http-request return status 200 content-type text/plain lf-string \"%[pooled.counter] %[var(txn.first)] %[fresh.counter]\"\n"
    );
    let (_dir, p) = start(&cfg, 1);
    // The pooled instance counts across requests; the per-request one
    // starts at 1 in each transaction and keeps counting within it.
    assert_eq!(get(p.addrs[0], "/").await?.body, "1 1 2");
    assert_eq!(get(p.addrs[0], "/").await?.body, "2 1 2");
    assert_eq!(get(p.addrs[0], "/").await?.body, "3 1 2");
    Ok(())
}

#[tokio::test]
async fn on_error_turns_a_failing_action_into_deny_or_500() -> Result<()> {
    let cfg = format!(
        "global\n    ext-load TESTKIT as d on-error deny\n    ext-load TESTKIT as e on-error 500\n    ext-load TESTKIT as c\n\n{DEFAULTS}\
frontend fe\n    bind 127.0.0.1:0\n\
    http-request d.fail if {{ path /d }}\n\
    http-request e.fail if {{ path /e }}\n\
    http-request c.fail if {{ path /c }}\n\
    http-request e.loop if {{ path /loop }}\n\
    http-request return status 200 content-type text/plain string ok\n"
    );
    let (_dir, p) = start(&cfg, 1);
    assert_eq!(get(p.addrs[0], "/d").await?.status, 403);
    assert_eq!(get(p.addrs[0], "/e").await?.status, 500);
    assert_eq!(get(p.addrs[0], "/c").await?.status, 200);
    assert_eq!(get(p.addrs[0], "/loop").await?.status, 500);
    assert_eq!(get(p.addrs[0], "/").await?.status, 200);
    Ok(())
}

#[test]
fn a_bad_extension_is_refused_at_load_with_the_reason() {
    let dir = TempDir::new();
    let not_wasm = dir.write("junk.wasm", "this is not wasm");
    let cases = [
        (
            format!("global\n    ext-load {}\n", not_wasm.display()),
            "moonbox.cfg:2: cannot load extension",
            "not a valid Wasm component",
        ),
        (
            format!("global\n    ext-load {}/missing.wasm\n", dir.0.display()),
            "moonbox.cfg:2: cannot load extension",
            "cannot read",
        ),
        (
            "global\n    ext-load TESTKIT refuse\n".to_string(),
            "moonbox.cfg:2: cannot load extension",
            "init refused: refused to start, as asked",
        ),
        (
            "global\n    ext-load TESTKIT fuel 1000000 init-loop\n".to_string(),
            "moonbox.cfg:2: cannot load extension",
            "init failed: fuel exhausted",
        ),
        (
            "global\n    ext-load TESTKIT memory 2g\n".to_string(),
            "moonbox.cfg:2: cannot load extension",
            "more than the largest allowed",
        ),
        (
            "global\n    ext-load TESTKIT allow-connect nowhere\n".to_string(),
            "moonbox.cfg:2:",
            "'allow-connect' expects one or more ADDR:PORT",
        ),
        (
            format!(
                "global\n    ext-load TESTKIT\n{DEFAULTS}frontend fe\n    bind 127.0.0.1:0\n    http-request testkit.nope\n"
            ),
            "moonbox.cfg:11:",
            "extension 'testkit' has no action 'nope'",
        ),
        (
            format!(
                "global\n    ext-load TESTKIT\n{DEFAULTS}frontend fe\n    bind 127.0.0.1:0\n    http-request testkit.sleep\n"
            ),
            "moonbox.cfg:11:",
            "expects 1 argument(s), got 0",
        ),
        (
            format!(
                "global\n    ext-load TESTKIT\n{DEFAULTS}frontend fe\n    bind 127.0.0.1:0\n    http-response testkit.rewrite\n"
            ),
            "moonbox.cfg:11:",
            "action 'testkit.rewrite' is not registered for http-res",
        ),
    ];
    for (cfg, at, why) in cases {
        let path = dir.write("moonbox.cfg", &cfg.replace("TESTKIT", &guest("testkit")));
        let (code, _out, err) = run(&["-c", "-f", &path.display().to_string()]);
        assert_eq!(code, 1, "{cfg}\n{err}");
        let line = err
            .lines()
            .find(|l| l.contains(at))
            .unwrap_or_else(|| panic!("no line with {at:?} in {err}"));
        assert!(line.contains(why), "{line:?} should say {why:?}");
    }
}

#[test]
fn quick_mode_runs_actions_services_and_tasks_of_each_ext() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let up = rt.block_on(Upstream::start("app", Behavior::Echo));
    let headers = guest("headers");
    let magic = guest("magic8ball");
    let work = guest("log_work");

    // With a backend: actions on every request and response.
    let backend = format!("http://{}", up.addr);
    let p = ProxyProcess::spawn(
        &[
            "--ext",
            &headers,
            "--listen",
            "127.0.0.1:0",
            "--backend",
            &backend,
        ],
        1,
    )?;
    let r = rt.block_on(get(p.addrs[0], "/x"))?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-tagged").as_deref(), Some("yes"));
    assert_eq!(r.header("x-served-by").as_deref(), Some("moonbox"));
    drop(p);

    // Without one: the service answers; the task runs.
    let p = ProxyProcess::spawn(
        &["--ext", &magic, "--ext", &work, "--listen", "127.0.0.1:0"],
        1,
    )?;
    let r = rt.block_on(get(p.addrs[0], "/anything"))?;
    assert_eq!(r.status, 200);
    assert!(r.body.ends_with('\n') && r.body.len() > 3, "{:?}", r.body);
    wait_stderr(&p, "the task's line", Duration::from_secs(5), |l| {
        l.contains("Doing some task work!")
    });

    // --print-config shows the equivalent configuration.
    let (code, out, _) = run(&["--ext", &headers, "--ext", &magic, "--print-config"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("ext-load {headers} as headers")),
        "{out}"
    );
    assert!(out.contains("http-request headers.tag_request"), "{out}");
    assert!(out.contains("http-response headers.tag_response"), "{out}");
    assert!(
        out.contains("http-request use-service magic8ball.magic8ball"),
        "{out}"
    );
    Ok(())
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let cache = TempDir::new();
    let dir = TempDir::new();
    let cfg = dir.write(
        "moonbox.cfg",
        &format!("global\n    ext-load {}\n", guest("hello")),
    );
    let env = [("MOONBOX_CACHE_DIR", cache.0.to_str().unwrap_or_default())];
    let args = ["-c", "-f", cfg.to_str().unwrap_or_default()];
    let (code, _, err) = run_env(&args, &env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("compiled "), "first start compiles: {err}");
    let cached: Vec<_> = std::fs::read_dir(&cache.0)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].extension().is_some_and(|e| e == "cwasm"));
    // A restart loads the compiled code instead of compiling again.
    let (code, _, err) = run_env(&args, &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("compiled "),
        "second start must not compile: {err}"
    );
    assert!(err.contains("Hello HAProxy!"), "{err}");
}

#[tokio::test]
async fn a_waiting_action_whose_client_leaves_is_cancelled() -> Result<()> {
    let cfg = format!(
        "global\n    ext-load TESTKIT instances 1\n\n{DEFAULTS}\
frontend fe\n    bind 127.0.0.1:0\n\
    http-request testkit.sleep 300 if {{ path /slow }}\n\
    http-request return status 200 content-type text/plain lf-string \"%[testkit.counter]\"\n"
    );
    let (_dir, p) = start(&cfg, 1);
    let a = p.addrs[0];
    // Start a slow request and hang up while its action waits.
    let mut s = tokio::net::TcpStream::connect(a).await?;
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The instance is fine and serves the next requests.
    assert_eq!(get(a, "/").await?.status, 200);
    let mut s = tokio::net::TcpStream::connect(a).await?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn lines_logged_while_serving_a_request_carry_its_span() -> Result<()> {
    let dir = TempDir::new();
    let cfg = dir.write(
        "moonbox.cfg",
        &format!(
            "global\n    ext-load {}\n\n{DEFAULTS}frontend fe\n    bind 127.0.0.1:0\n    http-request testkit.fail\n    http-request return status 200 content-type text/plain string ok\n",
            guest("testkit")
        ),
    );
    let p = ProxyProcess::spawn_env(
        &["-f", cfg.to_str().unwrap_or_default()],
        &[("RUST_LOG", "info,moonbox=debug")],
        1,
    )?;
    assert_eq!(get(p.addrs[0], "/some/path").await?.status, 200);
    wait_stderr(
        &p,
        "the action's line inside its request span",
        Duration::from_secs(5),
        |l| {
            l.contains("request{frontend=fe client=127.0.0.1:")
                && l.contains("method=GET path=/some/path txn=")
                && l.contains("action 'testkit.fail' failed")
        },
    );
    Ok(())
}
