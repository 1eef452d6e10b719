//! Differential tests: the same Lua script and configuration under Debian's
//! HAProxy and under moonbox, the same requests to both; status, chosen
//! headers and body must match.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::common::*;

/// A free port on 127.0.0.1 (HAProxy cannot report a port it chose).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_haproxy(cfg: &str, port: u16) -> Result<Haproxy> {
    // Debian puts it in /usr/sbin, which a user's PATH may lack.
    let bin = if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    };
    let child = Command::new(bin)
        .args(["-db", "-f", cfg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start haproxy (apt-get install haproxy)")?;
    let h = Haproxy(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("haproxy did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(h)
}

/// Runs `script` with `rules` in a frontend under both proxies and sends
/// each request to both; returns the pairs of answers.
async fn both(
    script: &str,
    rules: &str,
    requests: &[(&str, &[(&str, &str)])],
) -> Result<Vec<(Reply, Reply)>> {
    let app = Upstream::start("app", Behavior::Echo).await;
    let dir = TempDir::new();
    let lua = dir.write("script.lua", script);
    let port = free_port();
    let cfg = |bind: &str| {
        format!(
            "global\n    lua-load {}\n\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
             frontend fe\n    bind {bind}\n{rules}    default_backend app\n\nbackend app\n    server s1 {}\n",
            lua.display(),
            app.addr
        )
    };
    let hap_cfg = dir.write("haproxy.cfg", &cfg(&format!("127.0.0.1:{port}")));
    let mb_cfg = dir.write("moonbox.cfg", &cfg("127.0.0.1:0"));
    let _hap = start_haproxy(hap_cfg.to_str().unwrap_or_default(), port)?;
    let mb = ProxyProcess::spawn(&["-f", mb_cfg.to_str().unwrap_or_default()], 1)?;
    let hap_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut out = Vec::new();
    for (path, headers) in requests {
        let h = request(hap_addr, "GET", path, headers, "").await?;
        let m = request(mb.addrs[0], "GET", path, headers, "").await?;
        out.push((h, m));
    }
    Ok(out)
}

fn assert_same(pairs: &[(Reply, Reply)], headers: &[&str]) {
    for (i, (h, m)) in pairs.iter().enumerate() {
        assert_eq!(h.status, m.status, "request {i}: status");
        assert_eq!(h.body, m.body, "request {i}: body");
        for name in headers {
            assert_eq!(h.header(name), m.header(name), "request {i}: header {name}");
        }
    }
}

#[tokio::test]
async fn actions_fetches_and_converters_behave_as_in_haproxy() -> Result<()> {
    let script = r#"
core.register_action("tag", { "http-req" }, function(txn)
    local v = txn:get_var("txn.tenant")
    txn.http:req_set_header("X-Tenant", v or "none")
    local h = txn.http:req_get_headers()
    txn.http:req_set_header("X-First", h["x-multi"] and h["x-multi"][0] or "absent")
    txn.http:req_set_header("X-Missing", "[" .. txn.sf:req_hdr("x-nope") .. "]")
    txn.http:req_set_header("X-Method", txn.f:method())
    txn.http:req_set_header("X-Upper", txn.c:upper("mixed Case"))
    txn:set_var("req.seen", "yes")
end, 0)

core.register_fetches("bucket", function(txn)
    local path = txn.sf:path() or "/"
    local h = 0
    for i = 1, #path do h = (h * 31 + path:byte(i)) % 65536 end
    return "bucket-" .. (h % 16)
end)

core.register_fetches("greater", function(txn, a, b)
    return tonumber(txn:get_var(a)) > tonumber(txn:get_var(b))
end)

core.register_converters("enc", function(s)
    return (string.gsub(s, "[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end)
"#;
    let rules = "    http-request set-var(txn.tenant) str(acme-corp)\n\
    http-request lua.tag\n\
    http-request set-header X-Bucket %[lua.bucket]\n\
    http-request set-header X-Enc %[req.hdr(x-raw),lua.enc]\n\
    http-request set-var(txn.a) req.hdr(x-a)\n\
    http-request set-var(txn.b) req.hdr(x-b)\n\
    http-request set-header X-Greater %[lua.greater(txn.a,txn.b)]\n\
    http-request set-header X-Seen %[var(req.seen)]\n";
    let pairs = both(
        script,
        rules,
        &[
            ("/", &[("x-raw", "a b&c/é~"), ("x-a", "5"), ("x-b", "3")]),
            (
                "/some/deeper/path?q=1",
                &[("x-multi", "one, two"), ("x-a", "1"), ("x-b", "30")],
            ),
        ],
    )
    .await?;
    assert_same(
        &pairs,
        &[
            "x-echo-x-tenant",
            "x-echo-x-first",
            "x-echo-x-missing",
            "x-echo-x-method",
            "x-echo-x-upper",
            "x-echo-x-bucket",
            "x-echo-x-enc",
            "x-echo-x-greater",
            "x-echo-x-seen",
            "x-echo-path",
        ],
    );
    // And they are what the script means.
    let (_, m) = &pairs[0];
    assert_eq!(m.header("x-echo-x-tenant").as_deref(), Some("acme-corp"));
    assert_eq!(
        m.header("x-echo-x-enc").as_deref(),
        Some("a%20b%26c%2F%C3%A9~")
    );
    assert_eq!(m.header("x-echo-x-greater").as_deref(), Some("1"));
    Ok(())
}

#[tokio::test]
async fn services_and_replies_behave_as_in_haproxy() -> Result<()> {
    let script = r#"
core.register_service("hello", "http", function(applet)
    -- The request's fields, enumerated, then read after a wait.
    local fields = {}
    for k in pairs(applet) do
        if k == "method" or k == "path" or k == "qs" or k == "version" or k == "headers" then
            fields[#fields + 1] = k
        end
    end
    table.sort(fields)
    core.msleep(1)
    local body = "method=" .. applet.method .. " path=" .. applet.path .. " qs=" .. applet.qs
        .. " agent=" .. (applet.headers["user-agent"] and applet.headers["user-agent"][0] or "-")
        .. " version=" .. applet.version .. " fields=" .. table.concat(fields, ",") .. "\n"
    applet:set_status(202)
    applet:add_header("content-type", "text/plain")
    applet:add_header("content-length", #body)
    applet:start_response()
    applet:send(body)
end)

core.register_action("teapot", { "http-req" }, function(txn)
    local r = txn:reply({ status = 418, body = "short and stout\n" })
    r:add_header("content-type", "text/plain")
    txn:done(r)
end, 0)
"#;
    let rules = "    http-request use-service lua.hello if { path_beg /svc }\n\
    http-request lua.teapot if { path /tea }\n\
    http-response set-header X-Resp yes\n\
    http-after-response set-header X-After yes\n";
    let pairs = both(
        script,
        rules,
        &[
            ("/svc/x?a=1&b=2", &[("user-agent", "tester/1")]),
            ("/tea", &[]),
        ],
    )
    .await?;
    assert_same(
        &pairs,
        &["content-type", "content-length", "x-resp", "x-after"],
    );
    let (_, m) = &pairs[0];
    assert_eq!(m.status, 202);
    assert_eq!(m.header("x-resp").as_deref(), Some("yes"));
    assert_eq!(
        m.body,
        "method=GET path=/svc/x qs=a=1&b=2 agent=tester/1 version=HTTP/1.1 fields=headers,method,path,qs,version\n"
    );
    Ok(())
}

#[tokio::test]
async fn sample_conversions_behave_as_in_haproxy() -> Result<()> {
    // The conversion rules scripts depend on: what a Lua value becomes as a
    // sample, what a boolean sample becomes in Lua, and what `txn.sf` and
    // `txn.f` give for a sample that is missing.
    let script = r#"
core.register_fetches("gives_nil", function(txn) return nil end)
core.register_fetches("gives_nothing", function(txn) return end)
core.register_fetches("gives_table", function(txn) return {} end)
core.register_fetches("gives_true", function(txn) return true end)
core.register_fetches("gives_float", function(txn) return 2.0 end)

core.register_action("types", { "http-req" }, function(txn)
    local b = txn.f:bool("1")
    txn.http:req_set_header("X-Bool-Type", type(b) .. ":" .. tostring(b))
    txn.http:req_set_header("X-Sf-Bool", txn.sf:bool("0"))
    txn.http:req_set_header("X-Var-Type", type(txn:get_var("txn.flag")))
    txn.http:req_set_header("X-Missing-F", tostring(txn.f:req_hdr("x-nope")))
    txn.http:req_set_header("X-Int-Type", math.type(txn.f:int(7)))
    txn:set_var("txn.from_nil", nil)
    -- `ifexist` on a name the configuration never uses.
    txn:set_var("txn.unknown", "u", true)
    txn.http:req_set_header("X-Ifexist", tostring(txn:get_var("txn.unknown")))
    txn.http:req_set_header("X-Headers-Base", tostring(txn.http:req_get_headers()["x-two"][1]))
end, 0)
"#;
    let rules = "    http-request set-var(txn.flag) bool(1)\n\
    http-request lua.types\n\
    http-request set-header X-Nil %[lua.gives_nil]\n\
    http-request set-header X-Nothing %[lua.gives_nothing]\n\
    http-request set-header X-Table %[lua.gives_table]\n\
    http-request set-header X-True %[lua.gives_true]\n\
    http-request set-header X-Float %[lua.gives_float]\n\
    http-request set-header X-From-Nil %[var(txn.from_nil)]\n";
    let pairs = both(
        script,
        rules,
        &[("/", &[("x-two", "first"), ("x-two", "second")])],
    )
    .await?;
    let names = [
        "x-echo-x-bool-type",
        "x-echo-x-sf-bool",
        "x-echo-x-var-type",
        "x-echo-x-missing-f",
        "x-echo-x-int-type",
        "x-echo-x-headers-base",
        "x-echo-x-nil",
        "x-echo-x-nothing",
        "x-echo-x-table",
        "x-echo-x-true",
        "x-echo-x-float",
        "x-echo-x-from-nil",
        "x-echo-x-ifexist",
    ];
    for (h, m) in &pairs {
        for n in names {
            assert_eq!(h.header(n), m.header(n), "header {n}");
        }
    }
    let (_, m) = &pairs[0];
    assert_eq!(m.header("x-echo-x-bool-type").as_deref(), Some("number:1"));
    assert_eq!(m.header("x-echo-x-nil").as_deref(), Some("0"));
    assert_eq!(m.header("x-echo-x-nothing").as_deref(), Some(""));
    Ok(())
}

#[tokio::test]
async fn action_verdicts_behave_as_in_haproxy() -> Result<()> {
    let script = r#"
core.register_action("verdict", { "http-req" }, function(txn)
    local v = txn.sf:req_hdr("x-verdict")
    if v == "deny" then return act.DENY end
    if v == "error" then return act.ERROR end
    if v == "invalid" then return act.INVALID end
    if v == "stop" then return act.STOP end
    if v == "done" then return act.DONE end
    if v == "abort" then return act.ABORT end
    return act.CONTINUE
end, 0)
"#;
    // A rule after the action tells whether the rules went on.
    let rules = "    http-request lua.verdict\n    http-request set-header X-After yes\n";
    let verdicts = [
        "continue", "deny", "error", "invalid", "stop", "done", "abort",
    ];
    let requests: Vec<(&str, Vec<(&str, &str)>)> = verdicts
        .iter()
        .map(|v| ("/", vec![("x-verdict", *v)]))
        .collect();
    let requests: Vec<(&str, &[(&str, &str)])> =
        requests.iter().map(|(p, h)| (*p, h.as_slice())).collect();
    let pairs = both(script, rules, &requests).await?;
    assert_same(&pairs, &["x-echo-x-after"]);
    let statuses: Vec<u16> = pairs.iter().map(|(_, m)| m.status).collect();
    assert_eq!(statuses, [200, 403, 500, 400, 200, 200, 503]);
    Ok(())
}
