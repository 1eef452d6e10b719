//! A guest that exercises every extension point and every way a guest can
//! fail, for the proxy's tests and benchmarks. Each name says what it does.
use moonbox_sdk::prelude::*;
use moonbox_sdk::{Receive, proxies};

thread_local! {
    static COUNTER: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

fn spin() -> u64 {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
        if std::hint::black_box(n) == u64::MAX {
            return n;
        }
    }
}

fn bomb() -> usize {
    let mut keep: Vec<Vec<u8>> = Vec::new();
    loop {
        keep.push(vec![0u8; 1 << 20]);
        if std::hint::black_box(keep.len()) == usize::MAX {
            return keep.len();
        }
    }
}

/// Recurses until the stack is exhausted.
fn deep(n: u64) -> u64 {
    let mut frame = [n; 32];
    frame[(n % 32) as usize] = std::hint::black_box(n);
    if std::hint::black_box(true) {
        return deep(frame[3] + 1) + frame[(n % 7) as usize];
    }
    n
}

fn init(ext: &mut Registrar, args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "refuse") {
        return Err("refused to start, as asked".into());
    }
    if args.iter().any(|a| a == "init-loop") {
        spin();
    }
    // No-ops, for benchmarks and the happy path.
    ext.fetch("noop", |_txn, _args| Ok(Some(Sample::Boolean(true))));
    ext.converter("noop", |_txn, input, _args| Ok(Some(input)));
    ext.action(
        "noop",
        &[Facility::HttpReq, Facility::HttpRes],
        0,
        |_txn, _args| async { Ok(Verdict::Continue) },
    );

    // Instance state: a counter that lives as long as the instance.
    ext.fetch("counter", |_txn, _args| {
        COUNTER.with(|c| {
            c.set(c.get() + 1);
            Ok(Some(Sample::Sint(c.get())))
        })
    });

    // The transaction API.
    ext.fetch("echo_args", |_txn, args| {
        Ok(Some(Sample::from(
            args.iter()
                .map(Sample::to_str)
                .collect::<Vec<_>>()
                .join("|"),
        )))
    });
    ext.fetch("hdr", |txn, args| {
        let name = args.first().map(Sample::to_str).unwrap_or_default();
        Ok(txn.req_header(&name).map(Sample::from))
    });
    ext.fetch("builtin", |txn, _args| {
        let host = txn.f("req.hdr", &[Sample::from("host")])?;
        let lower = match host {
            Some(h) => txn.c("upper", h, &[])?,
            None => None,
        };
        Ok(lower)
    });
    ext.fetch("none", |_txn, _args| Ok(None));
    ext.fetch("error", |_txn, _args| Err("this fetch always fails".into()));
    ext.converter("reverse", |_txn, input, _args| {
        Ok(Some(Sample::from(
            input.to_str().chars().rev().collect::<String>(),
        )))
    });
    ext.converter("suffix", |_txn, input, args| {
        let s = args.first().map(Sample::to_str).unwrap_or_default();
        Ok(Some(Sample::from(format!("{}{s}", input.to_str()))))
    });
    ext.action(
        "tag",
        &[Facility::HttpReq, Facility::HttpRes],
        1,
        |txn, args| async move {
            if txn.status().is_some() {
                txn.set_res_header("x-tag", &args[0]);
            } else {
                txn.set_req_header("x-tag", &args[0]);
                txn.del_req_header("x-remove-me");
            }
            Ok(Verdict::Continue)
        },
    );
    ext.action(
        "rewrite",
        &[Facility::HttpReq],
        0,
        |txn, _args| async move {
            let path = txn.path();
            txn.set_path(&format!("/rewritten{path}"))?;
            txn.set_var("txn.seen_method", txn.method())?;
            txn.set_var("txn.counter", 41i64)?;
            let n = txn
                .get_var("txn.counter")
                .and_then(|v| v.to_int())
                .unwrap_or(0);
            txn.set_var("txn.counter", n + 1)?;
            txn.set_priv(Some(path.as_bytes()));
            Ok(Verdict::Continue)
        },
    );
    ext.fetch("priv", |txn, _args| {
        Ok(txn
            .get_priv()
            .map(|p| Sample::from(String::from_utf8_lossy(&p).into_owned())))
    });
    ext.action("status", &[Facility::HttpRes], 0, |txn, _args| async move {
        txn.set_status(299, Some("Fine"))?;
        Ok(Verdict::Continue)
    });
    ext.action("reply", &[Facility::HttpReq], 0, |txn, _args| async move {
        txn.done(Some(
            Reply::new(418, "short and stout\n").header("content-type", "text/plain"),
        ));
        Ok(Verdict::Done)
    });
    ext.action("deny", &[Facility::HttpReq], 0, |_txn, _args| async {
        Ok(Verdict::Deny)
    });
    ext.action("fail", &[Facility::HttpReq], 0, |_txn, _args| async {
        Err("this action always fails".to_string())
    });
    ext.action(
        "backends",
        &[Facility::HttpReq],
        0,
        |txn, _args| async move {
            let names: Vec<String> = proxies::list()
                .into_iter()
                .filter(|p| p.backend)
                .map(|p| format!("{}:{}", p.name, p.servers.len()))
                .collect();
            txn.set_req_header("x-backends", &names.join(","));
            Ok(Verdict::Continue)
        },
    );
    ext.action("tcp_tag", &[Facility::TcpReq], 0, |txn, _args| async move {
        txn.set_var("sess.tagged", true)?;
        Ok(Verdict::Continue)
    });

    // Waiting.
    ext.action("sleep", &[Facility::HttpReq], 1, |txn, args| async move {
        let ms: u64 = args[0].parse().map_err(|_| "not a number")?;
        let t0 = moonbox_sdk::monotonic_ms();
        sleep_ms(ms).await;
        yield_now().await;
        txn.set_req_header("x-slept", &(moonbox_sdk::monotonic_ms() - t0).to_string());
        Ok(Verdict::Continue)
    });
    ext.action("connect", &[Facility::HttpReq], 1, |txn, args| async move {
        let addr = args[0].clone();
        let result = async {
            let sock = TcpSocket::connect(&addr).await?;
            sock.send("ping\n").await?;
            let line = sock.receive_line().await?;
            sock.close().await?;
            Ok::<String, moonbox_sdk::IoError>(line)
        }
        .await;
        match result {
            Ok(line) => txn.set_req_header("x-connect", &format!("ok {line}")),
            Err(e) => {
                txn.set_req_header("x-connect", &format!("error {:?}: {}", e.kind, e.message))
            }
        }
        Ok(Verdict::Continue)
    });
    ext.http_service("hello", |txn, mut applet| async move {
        let body = applet.receive(Receive::All).await.map_err(|e| e.message)?;
        let text = format!(
            "{} {}{} body={} id={}\n",
            applet.method,
            applet.path,
            if applet.query.is_empty() {
                String::new()
            } else {
                format!("?{}", applet.query)
            },
            String::from_utf8_lossy(&body),
            txn.id() > 0,
        );
        applet.set_status(201, Some("Made"));
        applet.add_header("content-type", "text/plain");
        applet.add_header(
            "x-agent",
            applet
                .header("user-agent")
                .unwrap_or("-")
                .to_string()
                .as_str(),
        );
        applet.send(text).await.map_err(|e| e.message)?;
        Ok(())
    });
    ext.http_service("stream", |_txn, mut applet| async move {
        applet.set_status(200, None);
        applet.start_response().await.map_err(|e| e.message)?;
        for i in 0..3 {
            applet
                .send(format!("chunk {i}\n"))
                .await
                .map_err(|e| e.message)?;
            sleep_ms(5).await;
        }
        Ok(())
    });
    ext.tcp_service("echo", |_txn, mut applet| async move {
        loop {
            let line = applet.getline().await.map_err(|e| e.message)?;
            if line.is_empty() {
                return Ok(());
            }
            if line.trim() == "quit" {
                applet.send("bye\n").await.map_err(|e| e.message)?;
                return Ok(());
            }
            applet
                .send(format!("echo: {line}"))
                .await
                .map_err(|e| e.message)?;
        }
    });
    if let Some(every) = args.iter().find_map(|a| a.strip_prefix("tick=")) {
        let every: u64 = every.parse().map_err(|_| "tick=MS")?;
        ext.task("tick", move || async move {
            let mut n = 0u64;
            loop {
                n += 1;
                log::info(&format!("tick {n}"));
                sleep_ms(every).await;
            }
        });
    }

    // Faults.
    ext.fetch("loop", |_txn, _args| Ok(Some(Sample::Sint(spin() as i64))));
    ext.converter("loop", |_txn, _input, _args| {
        Ok(Some(Sample::Sint(spin() as i64)))
    });
    ext.action("loop", &[Facility::HttpReq], 0, |_txn, _args| async {
        spin();
        Ok(Verdict::Continue)
    });
    ext.http_service("loop", |_txn, _applet| async {
        spin();
        Ok(())
    });
    ext.action("bomb", &[Facility::HttpReq], 0, |_txn, _args| async {
        bomb();
        Ok(Verdict::Continue)
    });
    ext.fetch("bomb", |_txn, _args| Ok(Some(Sample::Sint(bomb() as i64))));
    ext.action("panic", &[Facility::HttpReq], 0, |_txn, _args| async {
        panic!("the guest panicked on purpose");
    });
    ext.action("overflow", &[Facility::HttpReq], 0, |_txn, _args| async {
        deep(0);
        Ok(Verdict::Continue)
    });
    ext.fetch("sleep", |_txn, _args| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        Ok(Some(Sample::from("slept")))
    });
    ext.fetch("connect", |_txn, args| {
        let addr = args.first().map(Sample::to_str).unwrap_or_default();
        match std::net::TcpStream::connect(addr.as_str()) {
            Ok(_) => Ok(Some(Sample::from("connected"))),
            Err(e) => Err(format!("connect refused: {e}")),
        }
    });
    if args.iter().any(|a| a == "task-loop") {
        ext.task("loop", || async {
            spin();
            Ok(())
        });
    }
    if args.iter().any(|a| a == "task-fail") {
        ext.task("fail", || async { Err("the task failed".to_string()) });
    }
    Ok(())
}

moonbox_sdk::export!(init);
