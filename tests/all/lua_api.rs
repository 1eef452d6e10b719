//! HAProxy's Lua API classes beyond the basics: channels in TCP mode, TCP
//! applet timeouts, TLS sockets and https, servers and proxies, threads,
//! tasks sharing the state, and the object layout scripts enumerate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

use crate::common::*;

/// A TCP server that sends back what it reads until the client closes.
async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Writes a config of `body` with `script` loaded, starts the proxy.
fn start(script: &str, global_extra: &str, body: &str) -> Result<(TempDir, ProxyProcess)> {
    let dir = TempDir::new();
    let lua = dir.write("t.lua", script);
    let cfg = format!(
        "global\n    lua-load {}\n{global_extra}\ndefaults\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n{body}",
        lua.display()
    );
    let path = dir.write("t.cfg", &cfg);
    let p = ProxyProcess::spawn(&["-f", &path.display().to_string()], 1)?;
    Ok((dir, p))
}

#[tokio::test]
async fn channels_inspect_rewrite_and_answer_in_tcp_mode() -> Result<()> {
    let echo = tcp_echo().await;
    let script = r#"
core.register_action("peek", { "tcp-req" }, function(txn)
    local d = txn.req:data()
    if d == nil then return end
    if d:find("^QUIT") then
        txn.res:send("bye\n")
        txn:done()
    end
    local info = "in=" .. txn.req:input() .. " resp=" .. tostring(txn.req:is_resp())
        .. " line=" .. txn.req:line():gsub("\n", "\\n") .. " part=" .. txn.req:data(6, 5)
    txn.req:set("HELLO", 0, 5)
    txn.req:append("+tail")
    txn.req:insert("<", 0)
    txn.req:remove(1, 0)
    txn.res:send("[" .. info .. "]\n")
end, 0)

core.register_action("shout", { "tcp-res" }, function(txn)
    local d = txn.res:data()
    txn.res:set(d:upper())
    txn.res:prepend(txn.res:is_resp() and "res:" or "req:")
end, 0)
"#;
    let body = format!(
        "frontend fe\n    mode tcp\n    bind 127.0.0.1:0\n    tcp-request inspect-delay 2s\n    tcp-request content lua.peek\n    default_backend be\n\n\
         backend be\n    mode tcp\n    tcp-response content lua.shout\n    server s1 {echo}\n"
    );
    let (_d, p) = start(script, "", &body)?;
    let a = p.addrs[0];

    let mut s = TcpStream::connect(a).await?;
    s.write_all(b"hello world\n").await?;
    let mut got = Vec::new();
    let want = "[in=12 resp=false line=hello world\\n part=world]\nres:<HELLO WORLD\n+TAIL";
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 1024];
        while got.len() < want.len() {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&got), want);

    // An answer sent from a request rule, then the end of the connection.
    let out = raw(a, b"QUIT\n").await?;
    assert_eq!(out, "bye\n");
    Ok(())
}

#[tokio::test]
async fn channels_refuse_data_in_http_mode() -> Result<()> {
    let app = Upstream::start("app", Behavior::Echo).await;
    let script = r#"
core.register_action("chan", { "http-req" }, function(txn)
    txn.http:req_set_header("x-input", txn.req:input())
    txn.http:req_set_header("x-is-resp", tostring(txn.res:is_resp()))
    local ok, err = pcall(txn.req.data, txn.req)
    txn.http:req_set_header("x-data", tostring(ok) .. ":" .. tostring(err):match("not allowed in HTTP mode") )
end, 0)
"#;
    let body = format!(
        "frontend fe\n    mode http\n    bind 127.0.0.1:0\n    http-request lua.chan\n    default_backend app\n\nbackend app\n    mode http\n    server s1 {}\n",
        app.addr
    );
    let (_d, p) = start(script, "", &body)?;
    let r = get(p.addrs[0], "/").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-input").as_deref(), Some("0"));
    assert_eq!(r.header("x-echo-x-is-resp").as_deref(), Some("true"));
    assert_eq!(
        r.header("x-echo-x-data").as_deref(),
        Some("false:not allowed in HTTP mode")
    );
    Ok(())
}

#[tokio::test]
async fn tcp_applets_receive_with_timeouts() -> Result<()> {
    let script = r#"
core.register_service("talk", "tcp", function(applet)
    local a = applet:receive(5, 100)
    applet:send("timeout:" .. tostring(a) .. "\n")
    applet:send("try:" .. tostring(applet:try_receive()) .. "\n")
    applet:send("line:" .. applet:getline())
    local rest = applet:receive()
    applet:send("rest:" .. rest .. "\n")
    applet:send("closed:[" .. applet:receive() .. "]\n")
end)
"#;
    let body = "frontend fe\n    mode tcp\n    bind 127.0.0.1:0\n    tcp-request content use-service lua.talk\n";
    let (_d, p) = start(script, "", body)?;
    let mut s = TcpStream::connect(p.addrs[0]).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    // Nothing sent: the timed receive and try_receive come back empty.
    while !String::from_utf8_lossy(&got).contains("try:") {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await??;
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"abc\nxyz").await?;
    s.shutdown().await?;
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got)).await??;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "timeout:nil\ntry:nil\nline:abc\nrest:xyz\nclosed:[]\n"
    );
    Ok(())
}

#[tokio::test]
async fn http_applet_output_streams_before_a_wait_and_in_bulk() -> Result<()> {
    // What a service sends is queued without waiting, but reaches the client
    // before the service waits (here a sleep), and a large output goes out
    // whole: 100 sends of 3000 bytes, then one of 100 000.
    let script = r#"
core.register_service("stream", "http", function(applet)
    local x, y = string.rep("x", 3000), string.rep("y", 100000)
    applet:set_status(200)
    applet:add_header("content-length", 6 + 100 * #x + #y + 4)
    applet:start_response()
    applet:send("part1\n")
    core.msleep(1500)
    for _ = 1, 100 do applet:send(x) end
    applet:send(y)
    applet:send("end\n")
end)
"#;
    let body = "frontend fe\n    mode http\n    bind 127.0.0.1:0\n    http-request use-service lua.stream\n";
    let (_d, p) = start(script, "", body)?;
    let mut s = TcpStream::connect(p.addrs[0]).await?;
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("part1") {
        let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
            .await
            .map_err(|_| anyhow::anyhow!("nothing sent before the service's sleep"))??;
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await??;
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body.len(), 400_010);
    assert!(body.starts_with("part1\nxxx"));
    assert_eq!(body.matches('x').count(), 300_000);
    assert_eq!(body.matches('y').count(), 100_000);
    assert!(body.ends_with("yyyend\n"));
    Ok(())
}

/// A self-signed certificate for 127.0.0.1 and `localhost`, and a TLS
/// acceptor serving it.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    let cert = key.cert.der().clone();
    let pkey = rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der())
        .expect("private key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(vec![cert], pkey)
    .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A TLS server: a line protocol ("ping" -> "pong <sni>") and, for a
/// request starting with "GET ", a small HTTP answer.
async fn tls_server() -> SocketAddr {
    let acceptor = tls_acceptor();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = s.get_ref().1.server_name().unwrap_or("-").to_string();
                let mut buf = vec![0u8; 4096];
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if req.starts_with("GET ") {
                    let body = format!("secure {sni}");
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    format!("pong {sni}\n")
                };
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn sockets_speak_tls_and_httpclient_speaks_https() -> Result<()> {
    let tls = tls_server().await;
    let app = Upstream::start("app", Behavior::Echo).await;
    let script = format!(
        r#"
core.register_action("tls", {{ "http-req" }}, function(txn)
    local s = core.tcp()
    s:settimeout(2)
    -- Looked up as a field, as scripts do.
    local connect = s.connect_ssl
    local ok, err = connect(s, "127.0.0.1", {port})
    txn.http:req_set_header("x-connect", tostring(ok) .. ":" .. tostring(err))
    local ip, port = s:getsockname()
    txn.http:req_set_header("x-sockname", tostring(ip) .. ":" .. tostring(type(port)))
    s:send("ping\n")
    txn.http:req_set_header("x-line", tostring(s:receive("*l")))
    s:close()

    local hc = core.httpclient()
    local res = hc:get{{ url = "https://127.0.0.1:{port}/x" }}
    txn.http:req_set_header("x-https", res.status .. ":" .. (res.status == 0 and res.reason or res.body))
    local named = hc:get{{ url = "https://localhost:{port}/x" }}
    txn.http:req_set_header("x-https-sni", named.status .. ":" .. named.body)
end, 0)
"#,
        port = tls.port()
    );
    let body = format!(
        "frontend fe\n    mode http\n    bind 127.0.0.1:0\n    http-request lua.tls\n    default_backend app\n\nbackend app\n    mode http\n    server s1 {}\n",
        app.addr
    );
    // The test server's certificate is self-signed: httpclient verifies
    // unless told not to, and then fails with status 0.
    let (_d, p) = start(&script, "    httpclient.ssl.verify none\n", &body)?;
    let r = get(p.addrs[0], "/").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-connect").as_deref(), Some("1:nil"));
    assert_eq!(
        r.header("x-echo-x-sockname").as_deref(),
        Some("127.0.0.1:number")
    );
    assert_eq!(r.header("x-echo-x-line").as_deref(), Some("pong -"));
    assert_eq!(r.header("x-echo-x-https").as_deref(), Some("200:secure -"));
    assert_eq!(
        r.header("x-echo-x-https-sni").as_deref(),
        Some("200:secure localhost")
    );

    let (_d2, p2) = start(&script, "", &body)?;
    let r = get(p2.addrs[0], "/").await?;
    assert_eq!(r.status, 200);
    // connect_ssl does not verify (as in HAProxy); httpclient does.
    assert_eq!(r.header("x-echo-x-line").as_deref(), Some("pong -"));
    let https = r.header("x-echo-x-https").unwrap_or_default();
    assert!(https.starts_with("0:TLS handshake"), "{https}");
    Ok(())
}

#[tokio::test]
async fn servers_proxies_threads_and_tasks() -> Result<()> {
    let app = Upstream::start("app", Behavior::Echo).await;
    let spare = Upstream::start("spare", Behavior::Echo).await;
    let script = r#"
shared = "unset"
core.register_task(function()
    shared = "from task"
end)

core.register_action("inspect", { "http-req" }, function(txn)
    local out = {}
    local function put(k, v) out[#out + 1] = k .. "=" .. tostring(v) end
    put("thread", core.thread)
    put("shared", shared)
    local be = core.backends["app"]
    local s1 = be.servers["s1"]
    put("act", be:get_srv_act())
    put("bck", be:get_srv_bck())
    put("maxconn", s1:get_maxconn())
    s1:set_maxconn(5)
    put("maxconn2", s1:get_maxconn())
    s1:set_maxconn(10)
    put("cur", s1:get_cur_sess())
    put("pend", s1:get_pend_conn())
    put("proxy", s1:get_proxy():get_name())
    put("backup", be.servers["s2"]:is_backup())
    s1:check_force_down()
    put("down", s1:get_stats().status)
    s1:set_ready()
    put("ready", s1:get_stats().status)
    local names = {}
    for k in pairs(getmetatable(txn.f).__index) do names[k] = true end
    put("enum", names.req_hdr and names.src and names.req_fhdr and true)
    txn.http:req_set_header("x-inspect", table.concat(out, ";"))
end, 0)
"#;
    let body = format!(
        "frontend fe\n    mode http\n    bind 127.0.0.1:0\n    http-request lua.inspect\n    default_backend app\n\n\
         backend app\n    mode http\n    server s1 {} maxconn 10\n    server s2 {} backup\n",
        app.addr, spare.addr
    );
    let (_d, p) = start(script, "", &body)?;
    let a = p.addrs[0];
    let mut seen = String::new();
    eventually(
        "the task's global reaches actions",
        Duration::from_secs(5),
        async || {
            seen = get(a, "/")
                .await
                .ok()
                .and_then(|r| r.header("x-echo-x-inspect"))
                .unwrap_or_default();
            seen.contains("shared=from task")
        },
    )
    .await;
    for want in [
        "thread=0",
        "act=1",
        "bck=1",
        "maxconn=10",
        "maxconn2=5",
        "cur=0",
        "pend=0",
        "proxy=app",
        "backup=true",
        "down=DOWN",
        "ready=no check",
        "enum=true",
    ] {
        assert!(
            seen.split(';').any(|kv| kv == want),
            "{want} missing in {seen}"
        );
    }

    // lua-load-per-thread: one state per worker, numbered from 1.
    let dir = TempDir::new();
    let lua = dir.write(
        "t.lua",
        "core.register_action('th', { 'http-req' }, function(txn) txn.http:req_set_header('x-thread', core.thread) end, 0)\n",
    );
    let cfg = dir.write(
        "t.cfg",
        &format!(
            "global\n    nbthread 2\n    lua-load-per-thread {}\n\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
             frontend fe\n    bind 127.0.0.1:0\n    http-request lua.th\n    default_backend app\n\nbackend app\n    server s1 {}\n",
            lua.display(),
            app.addr
        ),
    );
    let p = ProxyProcess::spawn(&["-f", &cfg.display().to_string()], 1)?;
    let mut threads = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let r = get(p.addrs[0], "/").await?;
        threads.insert(r.header("x-echo-x-thread").unwrap_or_default());
    }
    assert_eq!(
        threads.into_iter().collect::<Vec<_>>(),
        vec!["1".to_string(), "2".to_string()]
    );
    Ok(())
}

#[tokio::test]
async fn maps_sockets_logs_variables_and_http_rewrites() -> Result<()> {
    let app = Upstream::start("app", Behavior::Echo).await;
    let dir = TempDir::new();
    let map = dir.write("paths.map", "/old /new\n10.0.0.0/8 internal\n");
    let data = dir.write("data.txt", "from disk\n");
    let script = format!(
        r#"
core.register_init(function()
    local f = io.open("{data}")
    core.log(core.info, "init ran, frontend fe: " .. tostring(core.frontends["fe"] ~= nil)
        .. ", file: " .. f:read("*l"))
    f:close()
end)

core.register_service("body", "http", function(applet)
    local first = applet:getline()
    local rest = applet:receive()
    local body = "first=" .. first:gsub("\n", "") .. " rest=" .. rest .. " len=" .. tostring(applet.length)
    applet:set_status(200)
    applet:add_header("content-length", #body)
    applet:start_response()
    applet:send(body)
end)

local paths = Map.new("{map}", Map._str)
local nets = Map.new("{map}", Map._ip)

core.register_action("more", {{ "http-req" }}, function(txn)
    local out = {{}}
    local function put(k, v) out[#out + 1] = k .. "=" .. tostring(v) end
    put("map", paths:lookup("/old"))
    put("smap", "[" .. paths:slookup("/none") .. "]")
    put("nomap", paths:lookup("/none"))
    put("ip", nets:lookup("10.2.3.4"))
    core.set_map("{map}", "/added", "yes")
    put("added", paths:lookup("/added"))
    core.del_map("{map}", "/added")
    put("deleted", paths:lookup("/added"))
    put("procvar", core.get_var("proc.limit"))
    txn:set_var("txn.tmp", "x")
    txn:unset_var("txn.tmp")
    put("unset", txn:get_var("txn.tmp"))
    local info = core.get_info()
    put("info", info.Name .. ":" .. type(info.Uptime_sec) .. ":" .. tostring(info.CumReq >= 1))
    core.yield()
    core.msleep(5)
    core.sleep(0)
    put("fe", core.frontends["fe"]:get_name())
    core.backends["app"].servers["s1"]:set_weight(3)
    put("weight", core.backends["app"].servers["s1"]:get_stats().weight)
    txn:Info("txn info line")
    core.log(core.warning, "core warning line")
    txn.http:req_set_path("/rewritten")
    txn.http:req_set_query("a=1")
    txn.http:req_rep_header("x-rep", "^(\\w+)-old$", "\\1-new")

    local s = core.tcp()
    s:settimeout(2)
    s:connect("{ip}", {port})
    local host, port = s:getpeername()
    put("peer", host .. ":" .. port)
    s:send("GET /sock HTTP/1.0\r\n\r\n")
    put("status", s:receive("*l"):match(" (%d+)"))
    put("two", #s:receive(2, "pre"))
    put("all", s:receive("*a"):find("x-echo-path: /sock", 1, true) ~= nil)
    local none, err = s:receive("*l")
    put("after", tostring(none) .. ":" .. err)
    s:close()
    txn.http:req_set_header("x-more", table.concat(out, ";"))
end, 0)

core.register_action("resp", {{ "http-res" }}, function(txn)
    txn.http:res_set_status(203)
    txn.http:res_add_header("x-res-added", "1")
    txn.http:res_set_header("x-server", "replaced")
end, 0)
"#,
        map = map.display(),
        data = data.display(),
        ip = app.addr.ip(),
        port = app.addr.port()
    );
    let lua = dir.write("t.lua", &script);
    let cfg = dir.write(
        "t.cfg",
        &format!(
            "global\n    lua-load {}\n\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
             frontend fe\n    bind 127.0.0.1:0\n    http-request set-var(proc.limit) int(7)\n    http-request use-service lua.body if {{ path /body }}\n    http-request lua.more\n    http-response lua.resp\n    default_backend app\n\n\
             backend app\n    server s1 {}\n",
            lua.display(),
            app.addr
        ),
    );
    let p = ProxyProcess::spawn(&["-f", &cfg.display().to_string()], 1)?;
    let a = p.addrs[0];
    wait_stderr(&p, "the init function", Duration::from_secs(5), |l| {
        l.contains("init ran, frontend fe: true, file: from disk")
    });

    let r = request(a, "GET", "/x?q=0", &[("x-rep", "value-old")], "").await?;
    assert_eq!(r.status, 203);
    assert_eq!(r.header("x-res-added").as_deref(), Some("1"));
    assert_eq!(r.header("x-server").as_deref(), Some("replaced"));
    assert_eq!(
        r.header("x-echo-path").as_deref(),
        Some("/rewritten"),
        "{:#?}",
        p.stderr_lines()
    );
    assert_eq!(r.header("x-echo-query").as_deref(), Some("a=1"));
    assert_eq!(r.header("x-echo-x-rep").as_deref(), Some("value-new"));
    let more = r.header("x-echo-x-more").unwrap_or_default();
    for want in [
        "map=/new",
        "smap=[]",
        "nomap=nil",
        "ip=internal",
        "added=yes",
        "deleted=nil",
        "procvar=7",
        "unset=nil",
        "info=moonbox:number:true",
        "fe=fe",
        "weight=3",
        &format!("peer={}", app.addr),
        "status=200",
        "two=5",
        "all=true",
        "after=nil:closed",
    ] {
        assert!(
            more.split(';').any(|kv| kv == want),
            "{want} missing in {more}"
        );
    }
    wait_stderr(&p, "the log lines", Duration::from_secs(5), |l| {
        l.contains("txn info line")
    });
    wait_stderr(&p, "the log lines", Duration::from_secs(5), |l| {
        l.contains("core warning line")
    });

    // Response rules apply to a service's response too, as in HAProxy.
    let r = request(a, "POST", "/body", &[], "line one\nand the rest").await?;
    assert_eq!(r.status, 203);
    assert_eq!(r.body, "first=line one rest=and the rest len=21");
    Ok(())
}

#[test]
fn a_failing_init_function_stops_start_up() {
    let dir = TempDir::new();
    let lua = dir.write(
        "t.lua",
        "core.register_init(function()\n    error(\"no license key\")\nend)\n",
    );
    let cfg = dir.write(
        "t.cfg",
        &format!(
            "global\n    lua-load {}\n\ndefaults\n    mode http\n\nfrontend fe\n    bind 127.0.0.1:0\n    http-request return status 200\n",
            lua.display()
        ),
    );
    let (code, _out, err) = run(&["-f", &cfg.display().to_string()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("init 'lua.register_init' failed") && err.contains("t.lua:2: no license key"),
        "{err}"
    );
}
