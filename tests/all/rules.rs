//! http-request / http-response actions, sample expressions and ACLs, seen
//! through real requests.

use anyhow::Result;
use moonbox::ext::Registry;

use crate::common::*;

async fn proxy_with(up: &Upstream, fe_rules: &str) -> Result<InProc> {
    let c = format!(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout server 5s\n\
         frontend fe\n  bind 127.0.0.1:0\n{fe_rules}\n  default_backend be\n\
         backend be\n  server s1 {}\n\
         backend other\n  server s2 {}\n",
        up.addr, up.addr
    );
    start(&c, Registry::new()).await
}

#[tokio::test]
async fn header_actions() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy_with(
        &up,
        "  http-request set-header X-Set one\n\
           http-request add-header X-Add a\n\
           http-request add-header X-Add b\n\
           http-request del-header X-Drop\n\
           http-request replace-header X-Rep ^(.*)-old$ \\1-new\n\
           http-request set-header X-Host %[req.hdr(host),upper]\n\
           http-response set-header X-Resp yes\n\
           http-response del-header x-echo-x-set\n\
           http-response add-header X-Status %[status]",
    )
    .await?;
    let r = request(
        p.addr("fe"),
        "GET",
        "/",
        &[("x-drop", "1"), ("x-rep", "v-old")],
        "",
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-set"), None, "deleted by http-response");
    assert_eq!(r.header("x-echo-x-add").as_deref(), Some("a"));
    assert_eq!(r.headers.get_all("x-echo-x-add").iter().count(), 2);
    assert_eq!(r.header("x-echo-x-drop"), None);
    assert_eq!(r.header("x-echo-x-rep").as_deref(), Some("v-new"));
    assert_eq!(r.header("x-echo-x-host").as_deref(), Some("TEST.LOCAL"));
    assert_eq!(r.header("x-resp").as_deref(), Some("yes"));
    assert_eq!(r.header("x-status").as_deref(), Some("200"));
    Ok(())
}

#[tokio::test]
async fn request_line_actions() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy_with(
        &up,
        "  http-request set-path /new%[path] if { path_beg /p }\n\
           http-request set-query a=1 if { path_beg /q }\n\
           http-request set-uri /u?z=9 if { path /uri }\n\
           http-request set-method PUT if { path /m }",
    )
    .await?;
    let a = p.addr("fe");
    assert_eq!(
        get(a, "/p/x?k=v").await?.header("x-echo-path").as_deref(),
        Some("/new/p/x")
    );
    assert_eq!(
        get(a, "/p/x?k=v").await?.header("x-echo-query").as_deref(),
        Some("k=v")
    );
    assert_eq!(
        get(a, "/q").await?.header("x-echo-query").as_deref(),
        Some("a=1")
    );
    let r = get(a, "/uri").await?;
    assert_eq!(
        (
            r.header("x-echo-path").as_deref(),
            r.header("x-echo-query").as_deref()
        ),
        (Some("/u"), Some("z=9"))
    );
    assert_eq!(
        get(a, "/m").await?.header("x-echo-method").as_deref(),
        Some("PUT")
    );
    Ok(())
}

#[tokio::test]
async fn variables_and_scopes() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy_with(
        &up,
        "  http-request set-var(txn.who) req.hdr(x-user),lower\n\
           http-request set-var(req.n) int(40),add(2)\n\
           http-request set-var(sess.seen) str(yes)\n\
           http-request set-header X-Who %[var(txn.who)]\n\
           http-request set-header X-N %[var(req.n)]\n\
           http-request unset-var(txn.who) if { path /unset }\n\
           http-request set-header X-After %[var(txn.who)] if { path /unset }\n\
           http-response set-header X-Resp-Who %[var(txn.who)]",
    )
    .await?;
    let r = request(p.addr("fe"), "GET", "/", &[("x-user", "ALICE")], "").await?;
    assert_eq!(r.header("x-echo-x-who").as_deref(), Some("alice"));
    assert_eq!(r.header("x-echo-x-n").as_deref(), Some("42"));
    assert_eq!(r.header("x-resp-who").as_deref(), Some("alice"));
    let r = request(p.addr("fe"), "GET", "/unset", &[("x-user", "BOB")], "").await?;
    assert_eq!(r.header("x-echo-x-after").as_deref(), Some(""));
    Ok(())
}

#[tokio::test]
async fn deny_return_redirect() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy_with(
        &up,
        "  acl is_admin path_beg /admin\n\
           http-request deny if is_admin\n\
           http-request deny deny_status 429 if { path /slow }\n\
           http-request return status 201 content-type text/plain lf-string \"hi %[req.hdr(x-n)]\" if { path /ret }\n\
           http-request redirect location https://example.com/x code 301 if { path /loc }\n\
           http-request redirect prefix https://new.example if { path_beg /pre }\n\
           http-request redirect scheme https if { path /sch }",
    )
    .await?;
    let a = p.addr("fe");
    assert_eq!(get(a, "/admin/x").await?.status, 403);
    assert_eq!(get(a, "/slow").await?.status, 429);
    let r = request(a, "GET", "/ret", &[("x-n", "there")], "").await?;
    assert_eq!((r.status, r.body.as_str()), (201, "hi there"));
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    let r = get(a, "/loc").await?;
    assert_eq!(
        (r.status, r.header("location").as_deref()),
        (301, Some("https://example.com/x"))
    );
    let r = get(a, "/pre/a?b=c").await?;
    assert_eq!(
        (r.status, r.header("location").as_deref()),
        (302, Some("https://new.example/pre/a?b=c"))
    );
    let r = get(a, "/sch").await?;
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://test.local/sch")
    );
    assert_eq!(up.hits(), 0, "nothing reached the server");
    Ok(())
}

#[tokio::test]
async fn acl_matching_methods() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy_with(
        &up,
        "  acl a_str hdr(x-a) -i foo\n\
           acl a_beg path -m beg /b\n\
           acl a_end path_end .png\n\
           acl a_sub hdr_sub(user-agent) bot\n\
           acl a_reg path_reg ^/r[0-9]+$\n\
           acl a_found req.hdr(x-f) -m found\n\
           acl a_int req.hdr(x-i) -m int gt 10\n\
           acl a_len path -m len 2\n\
           acl a_ip src 127.0.0.0/8\n\
           acl a_dom hdr(host) -m dom local\n\
           acl a_dir path -m dir sub\n\
           acl a_meth method POST\n\
           http-request set-header X-M %[str(str)] if a_str\n\
           http-request set-header X-M beg if a_beg\n\
           http-request set-header X-M end if a_end\n\
           http-request set-header X-M sub if a_sub\n\
           http-request set-header X-M reg if a_reg\n\
           http-request set-header X-M found if a_found\n\
           http-request set-header X-M int if a_int\n\
           http-request set-header X-M len if a_len !a_beg\n\
           http-request set-header X-M dir if a_dir a_ip\n\
           http-request set-header X-M meth if a_meth\n\
           http-request set-header X-Dom yes if a_dom\n\
           http-request set-header X-Or yes if a_end || a_reg\n\
           http-request set-header X-Not yes unless a_ip",
    )
    .await?;
    let a = p.addr("fe");
    let m = |r: &Reply| r.header("x-echo-x-m");
    assert_eq!(
        m(&request(a, "GET", "/zzz", &[("x-a", "FOO")], "").await?).as_deref(),
        Some("str")
    );
    assert_eq!(m(&get(a, "/bzz").await?).as_deref(), Some("beg"));
    let r = get(a, "/img.png").await?;
    assert_eq!(m(&r).as_deref(), Some("end"));
    assert_eq!(r.header("x-echo-x-or").as_deref(), Some("yes"));
    assert_eq!(
        m(&request(a, "GET", "/zz1", &[("user-agent", "googlebot/2")], "").await?).as_deref(),
        Some("sub")
    );
    assert_eq!(m(&get(a, "/r12").await?).as_deref(), Some("reg"));
    assert_eq!(
        m(&request(a, "GET", "/zzz", &[("x-f", "")], "").await?).as_deref(),
        Some("found")
    );
    assert_eq!(
        m(&request(a, "GET", "/zzz", &[("x-i", "11")], "").await?).as_deref(),
        Some("int")
    );
    assert_eq!(
        m(&request(a, "GET", "/zzz", &[("x-i", "9")], "").await?),
        None
    );
    assert_eq!(m(&get(a, "/z").await?).as_deref(), Some("len"));
    assert_eq!(m(&get(a, "/a/sub/c").await?).as_deref(), Some("dir"));
    assert_eq!(
        m(&request(a, "POST", "/zzz", &[], "x").await?).as_deref(),
        Some("meth")
    );
    let r = get(a, "/zzz").await?;
    assert_eq!(r.header("x-echo-x-dom").as_deref(), Some("yes"));
    assert_eq!(r.header("x-echo-x-not"), None);
    Ok(())
}

#[tokio::test]
async fn acl_patterns_from_file() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let dir = TempDir::new();
    dir.write("blocked.lst", "# blocked paths\n/one\n/two\n");
    let cfg = dir.write(
        "t.cfg",
        &format!(
            "defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:0\n  acl blocked path -f blocked.lst\n  http-request deny if blocked\n  default_backend be\nbackend be\n  server s1 {}\n",
            up.addr
        ),
    );
    let loaded = moonbox::config::load(&[cfg], Registry::new(), &mut |_, _, _| Ok(()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = moonbox::proxy::Proxy::start(&loaded).await?;
    let a = proxy.local_addrs()[0].1;
    assert_eq!(get(a, "/two").await?.status, 403);
    assert_eq!(get(a, "/three").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn converters_in_headers() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy_with(
        &up,
        "  http-request set-header X-B64 %[str(hello),base64]\n\
           http-request set-header X-Dec %[str(aGVsbG8=),b64dec]\n\
           http-request set-header X-Hex %[str(AB),hex]\n\
           http-request set-header X-Len %[str(hello),length]\n\
           http-request set-header X-Field %[str(a:b:c),field(2,:)]\n\
           http-request set-header X-Word %[str(a/b/c),word(3,/)]\n\
           http-request set-header X-Sub %[str(a.b.c),regsub(\\.,_,g)]\n\
           http-request set-header X-Url %[str(a%20b),url_dec]\n\
           http-request set-header X-Math %[int(7),mul(6),sub(2),div(4)]\n\
           http-request set-header X-Crc %[str(abc),crc32]\n\
           http-request set-header X-Sha %[str(abc),sha1,hex]\n\
           http-request set-header X-Mask %[src,ipmask(24)]\n\
           http-request set-header X-Json %[str(a\\\"b),json]",
    )
    .await?;
    let r = get(p.addr("fe"), "/").await?;
    let h = |n: &str| r.header(&format!("x-echo-{n}"));
    assert_eq!(h("x-b64").as_deref(), Some("aGVsbG8="));
    assert_eq!(h("x-dec").as_deref(), Some("hello"));
    assert_eq!(h("x-hex").as_deref(), Some("4142"));
    assert_eq!(h("x-len").as_deref(), Some("5"));
    assert_eq!(h("x-field").as_deref(), Some("b"));
    assert_eq!(h("x-word").as_deref(), Some("c"));
    assert_eq!(h("x-sub").as_deref(), Some("a_b_c"));
    assert_eq!(h("x-url").as_deref(), Some("a b"));
    assert_eq!(h("x-math").as_deref(), Some("10"));
    assert_eq!(h("x-crc").as_deref(), Some("891568578"));
    assert_eq!(
        h("x-sha").as_deref(),
        Some("A9993E364706816ABA3E25717850C26C9CD0D89D")
    );
    assert_eq!(h("x-mask").as_deref(), Some("127.0.0.0"));
    assert_eq!(h("x-json").as_deref(), Some("a\\\"b"));
    Ok(())
}

#[tokio::test]
async fn maps_route_and_convert() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let dir = TempDir::new();
    dir.write("hosts.map", "# host -> backend\ntest.local other\n");
    dir.write("nets.map", "127.0.0.0/8 loopback\n10.0.0.0/8 lan\n");
    let cfg = dir.write(
        "t.cfg",
        &format!(
            "defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:0\n  http-request set-header X-Net %[src,map_ip(nets.map,unknown)]\n  use_backend %[req.hdr(host),lower,map(hosts.map,be)]\n  default_backend be\nbackend be\n  http-response set-header X-Be be\n  server s1 {0}\nbackend other\n  http-response set-header X-Be other\n  server s2 {0}\n",
            up.addr
        ),
    );
    let loaded = moonbox::config::load(&[cfg], Registry::new(), &mut |_, _, _| Ok(()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let proxy = moonbox::proxy::Proxy::start(&loaded).await?;
    let a = proxy.local_addrs()[0].1;
    let r = get(a, "/").await?;
    assert_eq!(r.header("x-be").as_deref(), Some("other"));
    assert_eq!(r.header("x-echo-x-net").as_deref(), Some("loopback"));
    let r = request(a, "GET", "/", &[("host", "elsewhere")], "").await?;
    assert_eq!(r.header("x-be").as_deref(), Some("be"));
    Ok(())
}

#[tokio::test]
async fn fetches_are_typed() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let p = proxy_with(
        &up,
        "  http-request set-header X-Src %[src]\n\
           http-request set-header X-Fe %[fe_name]\n\
           http-request set-header X-Meth %[method]\n\
           http-request set-header X-Url %[url]\n\
           http-request set-header X-Base %[base]\n\
           http-request set-header X-Ver %[req.ver]\n\
           http-request set-header X-Cook %[req.cook(sid)]\n\
           http-request set-header X-Cnt %[req.hdr_cnt(x-r)]\n\
           http-request set-header X-Occ %[req.hdr(x-r,1)]\n\
           http-request set-header X-Nbsrv %[nbsrv(be)]\n\
           http-request set-header X-Ssl %[ssl_fc]\n\
           http-request set-header X-Uuid %[uuid]\n\
           http-request set-header X-Dstp %[dst_port]",
    )
    .await?;
    let r = request(
        p.addr("fe"),
        "GET",
        "/x/y?q=1",
        &[("cookie", "a=1; sid=abc"), ("x-r", "first, second")],
        "",
    )
    .await?;
    let h = |n: &str| r.header(&format!("x-echo-{n}"));
    assert_eq!(h("x-src").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-fe").as_deref(), Some("fe"));
    assert_eq!(h("x-meth").as_deref(), Some("GET"));
    assert_eq!(h("x-url").as_deref(), Some("/x/y?q=1"));
    assert_eq!(h("x-base").as_deref(), Some("test.local/x/y"));
    assert_eq!(h("x-ver").as_deref(), Some("1.1"));
    assert_eq!(h("x-cook").as_deref(), Some("abc"));
    assert_eq!(h("x-cnt").as_deref(), Some("2"));
    assert_eq!(h("x-occ").as_deref(), Some("first"));
    assert_eq!(h("x-nbsrv").as_deref(), Some("1"));
    assert_eq!(h("x-ssl").as_deref(), Some("0"));
    assert_eq!(h("x-uuid").map(|u| u.len()), Some(36));
    assert_eq!(h("x-dstp"), Some(p.addr("fe").port().to_string()));
    Ok(())
}

#[tokio::test]
async fn use_backend_with_conditions() -> Result<()> {
    let up1 = Upstream::start("one", Behavior::Echo).await;
    let up2 = Upstream::start("two", Behavior::Echo).await;
    let c = format!(
        "defaults\n  mode http\nfrontend fe\n  bind 127.0.0.1:0\n  acl api path_beg /api\n\
         use_backend b2 if api\n  use_backend %[req.hdr(x-be)] if {{ req.hdr(x-be) -m found }}\n  default_backend b1\n\
         backend b1\n  server s {}\nbackend b2\n  server s {}\n",
        up1.addr, up2.addr
    );
    let p = start(&c, Registry::new()).await?;
    let a = p.addr("fe");
    assert_eq!(get(a, "/x").await?.body, "one\n");
    assert_eq!(get(a, "/api/v1").await?.body, "two\n");
    assert_eq!(
        request(a, "GET", "/x", &[("x-be", "b2")], "").await?.body,
        "two\n"
    );
    assert_eq!(
        request(a, "GET", "/x", &[("x-be", "nope")], "").await?.body,
        "one\n"
    );
    Ok(())
}

#[tokio::test]
async fn access_log_line_has_httplog_shape() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let dir = TempDir::new();
    let cfg = dir.write(
        "t.cfg",
        &format!(
            "defaults\n  mode http\n  option httplog\n  log global\nfrontend web\n  bind 127.0.0.1:0\n  default_backend app\nbackend app\n  server srv1 {}\n",
            up.addr
        ),
    );
    let cfg = cfg.to_string_lossy().to_string();
    let p = ProxyProcess::spawn(&["-f", &cfg], 1)?;
    get(p.addrs[0], "/logged?a=1").await?;
    let lines = p.stdout.clone();
    eventually(
        "an access log line",
        std::time::Duration::from_secs(5),
        async || lines.lock().map(|v| !v.is_empty()).unwrap_or(false),
    )
    .await;
    let line = p.stdout_lines()[0].clone();
    // 127.0.0.1:PORT [DATE] web app/srv1 TR/Tw/Tc/Tr/Ta 200 BYTES - - ---- ... "GET /logged?a=1 HTTP/1.1"
    let re = regex::Regex::new(
        r#"^127\.0\.0\.1:\d+ \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3}\] web app/srv1 \d+/\d+/\d+/\d+/\d+ 200 \d+ - - ---- \d+/\d+/\d+/\d+/\d+ \d+/\d+ "GET /logged\?a=1 HTTP/1\.1"$"#,
    )?;
    assert!(re.is_match(&line), "{line}");
    Ok(())
}

/// `%B` counts what the client received, head included, as HAProxy's does;
/// replies the proxy makes on purpose end `LR`, denials `PR`.
#[tokio::test]
async fn access_log_counts_bytes_on_the_wire_and_names_who_answered() -> Result<()> {
    let up = Upstream::start("up", Behavior::Echo).await;
    let dir = TempDir::new();
    let lua = dir.write(
        "svc.lua",
        "core.register_service('chunky', 'http', function(applet)\n\
           applet:set_status(200)\n\
           applet:start_response()\n\
           applet:send('hello ')\n\
           applet:send(string.rep('x', 300))\n\
         end)\n",
    );
    let cfg = dir.write(
        "t.cfg",
        &format!(
            "global\n  lua-load {}\n\
             defaults\n  mode http\n  option httplog\n  timeout connect 1s\n  timeout server 5s\n\
             frontend web\n  bind 127.0.0.1:0\n\
               http-request return status 200 content-type text/plain string hi if {{ path /r }}\n\
               http-request deny if {{ path /d }}\n\
               http-request redirect location /elsewhere if {{ path /re }}\n\
               http-request use-service lua.chunky if {{ path /svc }}\n\
               default_backend app\n\
             backend app\n  server srv1 {}\n",
            lua.display(),
            up.addr
        ),
    );
    let cfg = cfg.to_string_lossy().to_string();
    let p = ProxyProcess::spawn(&["-f", &cfg], 1)?;
    let asks = [
        ("/r", "HTTP/1.1", "Connection: close", "LR--"),
        ("/d", "HTTP/1.0", "X-A: b", "PR--"),
        ("/re", "HTTP/1.1", "Connection: close", "LR--"),
        ("/svc", "HTTP/1.1", "Connection: close", "----"),
        ("/svc", "HTTP/1.0", "X-A: b", "----"),
        ("/up", "HTTP/1.1", "Connection: close", "----"),
        ("/up", "HTTP/1.0", "Connection: keep-alive", "----"),
    ];
    let mut received = Vec::new();
    for (path, version, header, _) in asks {
        let keep_alive = header.ends_with("keep-alive");
        let out = if keep_alive {
            // The connection stays open: read the one response it carries.
            raw_until(p.addrs[0], path, version, header).await?
        } else {
            raw(
                p.addrs[0],
                format!("GET {path} {version}\r\nHost: x\r\n{header}\r\n\r\n").as_bytes(),
            )
            .await?
        };
        assert!(out.starts_with("HTTP/1."), "{path}: {out}");
        received.push(out.len());
    }
    let lines = p.stdout.clone();
    eventually(
        "an access log line per request",
        std::time::Duration::from_secs(5),
        async || lines.lock().map(|v| v.len() >= asks.len()).unwrap_or(false),
    )
    .await;
    let lines = p.stdout_lines();
    // Each (path, version) is asked once.
    for (i, (path, version, header, term)) in asks.iter().enumerate() {
        let line = lines
            .iter()
            .find(|l| l.ends_with(&format!("\"GET {path} {version}\"")))
            .unwrap_or_else(|| panic!("no log line for {path} {version}: {lines:?}"));
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            fields[6],
            received[i].to_string(),
            "{path} {header}: {line}"
        );
        assert_eq!(fields[9], *term, "{path}: {line}");
    }
    Ok(())
}

/// Sends one keep-alive request and reads its response by its
/// content-length.
async fn raw_until(
    addr: std::net::SocketAddr,
    path: &str,
    version: &str,
    header: &str,
) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} {version}\r\nHost: x\r\n{header}\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return Ok(text);
            }
        }
    }
}
