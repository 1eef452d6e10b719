//! The extension seam, driven by a native in-process extension: fetches,
//! converters, actions, services and tasks resolve by name and reach back
//! into the transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use moonbox::ext::native::NativeExtension;
use moonbox::ext::{
    BoxFuture, ExtError, Facility, HttpApplet, Registry, TaskCtx, TcpApplet, Verdict,
};
use moonbox::proxy::txn::{Reply as TxnReply, Txn};
use moonbox::sample::{Sample, VarName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

static TASK_RUNS: AtomicUsize = AtomicUsize::new(0);

fn tag<'a>(txn: &'a mut Txn, args: &'a [String]) -> BoxFuture<'a, Result<Verdict, ExtError>> {
    Box::pin(async move {
        // Waiting is allowed in actions.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let var: VarName = "txn.tenant".parse().map_err(ExtError::Failed)?;
        let v = txn
            .get_var(&var)
            .map(|s| s.to_str().to_string())
            .unwrap_or_default();
        let h = http::HeaderValue::from_str(&format!("{v}/{}", args.join(",")))
            .map_err(|e| ExtError::Failed(e.to_string()))?;
        if let Some(req) = txn.req.as_mut() {
            req.headers.insert("x-tag", h);
        }
        Ok(Verdict::Continue)
    })
}

fn fail<'a>(_: &'a mut Txn, _: &'a [String]) -> BoxFuture<'a, Result<Verdict, ExtError>> {
    Box::pin(async { Err(ExtError::Failed("boom".into())) })
}

fn reply<'a>(txn: &'a mut Txn, _: &'a [String]) -> BoxFuture<'a, Result<Verdict, ExtError>> {
    Box::pin(async move {
        txn.reply = Some(TxnReply {
            status: 418,
            reason: None,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from_static(b"teapot\n"),
            local: true,
        });
        Ok(Verdict::Done)
    })
}

fn deny<'a>(_: &'a mut Txn, _: &'a [String]) -> BoxFuture<'a, Result<Verdict, ExtError>> {
    Box::pin(async { Ok(Verdict::Deny) })
}

fn res_stats<'a>(txn: &'a mut Txn, _: &'a [String]) -> BoxFuture<'a, Result<Verdict, ExtError>> {
    Box::pin(async move {
        // Proxies and servers with their stats are readable from extensions.
        let world = txn.world.clone();
        let be = world
            .backend("be")
            .ok_or_else(|| ExtError::Failed("no be".into()))?;
        let srv = be
            .server("s1")
            .ok_or_else(|| ExtError::Failed("no s1".into()))?;
        let stats = srv.stats(be);
        let get = |k: &str| {
            stats
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let be_stats = be.stats();
        let be_get = |k: &str| {
            be_stats
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let v = format!(
            "{} scur={} stot={} be={}/{} {}",
            get("status"),
            get("scur"),
            get("stot"),
            be_get("svname"),
            be_get("act"),
            get("addr")
        );
        if let Some(res) = txn.res.as_mut() {
            res.headers.insert(
                "x-stats",
                http::HeaderValue::from_str(&v).map_err(|e| ExtError::Failed(e.to_string()))?,
            );
        }
        Ok(Verdict::Continue)
    })
}

fn hello_service<'a>(
    txn: &'a mut Txn,
    applet: &'a mut HttpApplet,
) -> BoxFuture<'a, Result<(), ExtError>> {
    Box::pin(async move {
        let body = applet
            .receive(None)
            .await
            .map_err(|e| ExtError::Failed(e.to_string()))?;
        let msg = format!(
            "hello {} {} from {} ({} bytes)\n",
            applet.method,
            applet.path,
            txn.frontend.name,
            body.len()
        );
        applet.set_status(200, None);
        applet.add_header("content-type", "text/plain");
        applet
            .start_response()
            .map_err(|e| ExtError::Failed(e.to_string()))?;
        applet
            .send(Bytes::from(msg))
            .await
            .map_err(|e| ExtError::Failed(e.to_string()))?;
        Ok(())
    })
}

fn broken_service<'a>(
    _: &'a mut Txn,
    _: &'a mut HttpApplet,
) -> BoxFuture<'a, Result<(), ExtError>> {
    Box::pin(async { Err(ExtError::Failed("service crashed".into())) })
}

fn tcp_upper<'a>(_: &'a mut Txn, applet: &'a mut TcpApplet) -> BoxFuture<'a, Result<(), ExtError>> {
    Box::pin(async move {
        let line = applet
            .getline()
            .await
            .map_err(|e| ExtError::Failed(e.to_string()))?;
        let up = String::from_utf8_lossy(&line).to_uppercase();
        applet
            .send(up.as_bytes())
            .await
            .map_err(|e| ExtError::Failed(e.to_string()))?;
        Ok(())
    })
}

fn ticker(_: TaskCtx) -> BoxFuture<'static, Result<(), ExtError>> {
    Box::pin(async {
        loop {
            TASK_RUNS.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

fn registry() -> Registry {
    let ext = NativeExtension::new("t")
        .fetch("answer", |_, args| {
            let add = args.first().and_then(|a| a.to_int()).unwrap_or(0);
            Ok(Some(Sample::Int(42 + add)))
        })
        .fetch("broken", |_, _| {
            Err(ExtError::Failed("fetch failed".into()))
        })
        .fetch("path_len", |txn, _| {
            Ok(txn
                .req
                .as_ref()
                .map(|r| Sample::Int(r.uri.path().len() as i64)))
        })
        .converter("rev", |_, input, _| {
            Ok(Some(Sample::Str(input.to_str().chars().rev().collect())))
        })
        .action("tag", &[Facility::HttpReq], 2, tag)
        .action("fail", &[Facility::HttpReq], 0, fail)
        .action("reply", &[Facility::HttpReq], 0, reply)
        .action("deny", &[Facility::HttpReq, Facility::TcpReq], 0, deny)
        .action("stats", &[Facility::HttpRes], 0, res_stats)
        .http_service("hello", hello_service)
        .http_service("broken", broken_service)
        .tcp_service("upper", tcp_upper)
        .task("ticker", ticker);
    let mut r = Registry::new();
    r.add(Arc::new(ext));
    r
}

async fn proxy(up: &Upstream) -> Result<InProc> {
    let c = format!(
        "defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:0\n\
         http-request set-var(txn.tenant) str(acme)\n\
         http-request t.tag a b if {{ path /tag }}\n\
         http-request t.fail if {{ path /fail }}\n\
         http-request set-header X-After-Fail yes if {{ path /fail }}\n\
         http-request t.reply if {{ path /reply }}\n\
         http-request t.deny if {{ path /deny }}\n\
         http-request set-header X-Answer %[t.answer] if {{ path /fetch }}\n\
         http-request set-header X-Answer2 %[t.answer(8)] if {{ path /fetch }}\n\
         http-request set-header X-Rev %[path,t.rev] if {{ path /fetch }}\n\
         http-request set-header X-Broken %[t.broken] if {{ path /fetch }}\n\
         http-request use-service t.hello if {{ path_beg /svc }}\n\
         http-request use-service t.broken if {{ path /broken-svc }}\n\
         http-request deny if {{ t.path_len gt 20 }}\n\
         http-response t.stats\n\
         default_backend be\n\
         backend be\n  server s1 {}\n\
         frontend ft\n  mode tcp\n  bind 127.0.0.1:0\n  tcp-request content use-service t.upper\n",
        up.addr
    );
    start(&c, registry()).await
}

#[tokio::test]
async fn actions_run_through_the_seam() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy(&up).await?;
    let a = p.addr("fe");
    let r = get(a, "/tag").await?;
    assert_eq!(r.header("x-echo-x-tag").as_deref(), Some("acme/a,b"));
    // A failing action is logged and the rules go on.
    let r = get(a, "/fail").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-after-fail").as_deref(), Some("yes"));
    // An action can answer by itself or deny.
    let r = get(a, "/reply").await?;
    assert_eq!((r.status, r.body.as_str()), (418, "teapot\n"));
    assert_eq!(get(a, "/deny").await?.status, 403);
    // Response actions read proxies and servers with their stats.
    let r = get(a, "/").await?;
    let stats = r.header("x-stats").unwrap_or_default();
    assert_eq!(
        stats,
        format!("no check scur=1 stot=3 be=BACKEND/1 {}", up.addr)
    );
    Ok(())
}

#[tokio::test]
async fn fetches_and_converters_resolve_by_name() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy(&up).await?;
    let r = get(p.addr("fe"), "/fetch").await?;
    assert_eq!(r.header("x-echo-x-answer").as_deref(), Some("42"));
    assert_eq!(r.header("x-echo-x-answer2").as_deref(), Some("50"));
    assert_eq!(r.header("x-echo-x-rev").as_deref(), Some("hctef/"));
    // A failing fetch yields no sample: the header is empty.
    assert_eq!(r.header("x-echo-x-broken").as_deref(), Some(""));
    // Extension fetches work in ACLs.
    assert_eq!(
        get(p.addr("fe"), "/a/very/long/path/over/twenty")
            .await?
            .status,
        403
    );
    Ok(())
}

#[tokio::test]
async fn services_answer_without_backend() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy(&up).await?;
    let r = request(p.addr("fe"), "POST", "/svc/x", &[], "12345").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello POST /svc/x from fe (5 bytes)\n");
    // A failing service answers 500.
    assert_eq!(get(p.addr("fe"), "/broken-svc").await?.status, 500);
    assert_eq!(up.hits(), 0);
    // TCP service.
    let mut s = tokio::net::TcpStream::connect(p.addr("ft")).await?;
    s.write_all(b"shout\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await??;
    assert_eq!(out, "SHOUT\n");
    Ok(())
}

#[tokio::test]
async fn tasks_run_in_background() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let _p = proxy(&up).await?;
    let before = TASK_RUNS.load(Ordering::SeqCst);
    eventually(
        "task ran several times",
        Duration::from_secs(5),
        async || TASK_RUNS.load(Ordering::SeqCst) >= before + 3,
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn bad_extension_names_are_config_errors() {
    let cases = [
        ("http-request t.nope", "extension 't' has no action 'nope'"),
        (
            "http-request t.tag onlyone",
            "action 't.tag' expects 2 argument(s), got 1",
        ),
        (
            "http-response t.tag a b",
            "action 't.tag' is not registered for http-res",
        ),
        (
            "http-request set-header X %[t.nofetch]",
            "extension 't' has no fetch 'nofetch'",
        ),
        (
            "http-request set-header X %[path,t.noconv]",
            "extension 't' has no converter 'noconv'",
        ),
        (
            "http-request use-service t.upper",
            "service 't.upper' is a tcp service, http was expected here",
        ),
        ("http-request lua.x", "unknown extension 'lua.x'"),
    ];
    for (line, want) in cases {
        let cfg = format!("defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:0\n  {line}\n");
        let err = load(&cfg, registry())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(err, format!("test.cfg:5: {want}"), "for {line}");
    }
}
