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

/// Writes `script` as `t.lua` next to a config whose global section loads
/// it (with `global_extra` lines) and whose frontend has `rules`.
fn lua_setup(script: &str, global_extra: &str, rules: &str) -> (TempDir, String) {
    let dir = TempDir::new();
    let lua = dir.write("t.lua", script);
    let cfg = format!(
        "global\n    lua-load {}\n{global_extra}\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\nfrontend fe\n    bind 127.0.0.1:0\n{rules}",
        lua.display()
    );
    let path = dir.write("t.cfg", &cfg).display().to_string();
    (dir, path)
}

#[test]
fn errors_in_a_script_body_stop_start_up_with_file_and_line() {
    let cases = [
        (
            "core.register_fetches(\"x\", function(txn)\n  return 1 +\nend)\n",
            "t.lua:3:",
        ),
        (
            "local a = 1\nerror(\"boom at load\")\n",
            "t.lua:2: boom at load",
        ),
        (
            "local t = nil\nlocal x = t.field\n",
            "t.lua:2: attempt to index a nil value",
        ),
        (
            "core.register_action(\"a\", {\"nowhere\"}, function() end)\n",
            "unknown action type 'nowhere'",
        ),
    ];
    for (script, want) in cases {
        let (_d, cfg) = lua_setup(script, "", "");
        let (code, _out, err) = run(&["-c", "-f", &cfg]);
        assert_eq!(code, 1, "{script}");
        let line = err
            .lines()
            .find(|l| l.contains("lua-load"))
            .unwrap_or_default();
        assert!(line.contains("t.cfg:2: lua-load:"), "{err}");
        assert!(line.contains(want), "{line:?} should contain {want:?}");
    }
}

#[tokio::test]
async fn runtime_errors_cost_only_their_invocation() -> Result<()> {
    let script = r#"
core.register_fetches("bad_fetch", function(txn) error("fetch broke") end)
core.register_converters("bad_conv", function(s) error("converter broke") end)
core.register_action("bad_action", { "http-req" }, function(txn) error("action broke") end, 0)
core.register_service("bad_service", "http", function(applet) error("service broke") end)
core.register_task(function() error("task broke") end)
core.register_fetches("ok", function(txn) return "fine" end)
"#;
    let rules = "    http-request set-header x-f %[lua.bad_fetch] if { path /fetch }\n\
    http-request set-header x-f %[str(a),lua.bad_conv] if { path /conv }\n\
    http-request lua.bad_action if { path /action }\n\
    http-request use-service lua.bad_service if { path /service }\n\
    http-request return status 200 content-type text/plain lf-string \"%[lua.ok] [%[req.hdr(x-f)]]\"\n";
    let (_d, cfg) = lua_setup(script, "", rules);
    let p = ProxyProcess::spawn(&["-f", &cfg], 1)?;
    let a = p.addrs[0];
    wait_stderr(&p, "the task's error", Duration::from_secs(5), |l| {
        l.contains("task 'lua.task1' failed") && l.contains("t.lua:6: task broke")
    });
    for (path, status, want) in [
        ("/fetch", 200, "t.lua:2: fetch broke"),
        ("/conv", 200, "t.lua:3: converter broke"),
        ("/action", 200, "t.lua:4: action broke"),
        ("/service", 500, "t.lua:5: service broke"),
    ] {
        let r = get(a, path).await?;
        assert_eq!(r.status, status, "{path}");
        if status == 200 {
            assert_eq!(r.body, "fine []", "{path}");
        }
        wait_stderr(&p, want, Duration::from_secs(5), |l| l.contains(want));
        assert_eq!(get(a, "/").await?.body, "fine []");
    }
    Ok(())
}

#[tokio::test]
async fn runaway_code_is_stopped_in_every_context() -> Result<()> {
    let script = r#"
core.register_fetches("spin", function(txn) while true do end end)
core.register_converters("spin", function(s) while true do end end)
core.register_action("spin", { "http-req" }, function(txn) while true do end end, 0)
core.register_service("spin", "http", function(applet) while true do end end)
core.register_task(function() while true do end end)
core.register_fetches("ok", function(txn) return "fine" end)
"#;
    let global = "    tune.lua.session-timeout 300\n    tune.lua.service-timeout 300\n    tune.lua.task-timeout 300\n    tune.lua.burst-timeout 300\n";
    let rules = "    http-request set-header x-f %[lua.spin] if { path /fetch }\n\
    http-request set-header x-f %[str(a),lua.spin] if { path /conv }\n\
    http-request lua.spin if { path /action }\n\
    http-request use-service lua.spin if { path /service }\n\
    http-request return status 200 content-type text/plain lf-string \"%[lua.ok]\"\n";
    let (_d, cfg) = lua_setup(script, global, rules);
    let p = ProxyProcess::spawn(&["-f", &cfg], 1)?;
    let a = p.addrs[0];
    wait_stderr(&p, "the task's timeout", Duration::from_secs(5), |l| {
        l.contains("task 'lua.task1' failed") && l.contains("execution timeout")
    });
    // No guest runs now: the epoch thread pauses, and must wake for the
    // next call for its deadline to hold.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (path, status) in [
        ("/fetch", 200),
        ("/conv", 200),
        ("/action", 200),
        ("/service", 500),
    ] {
        let r = get(a, path).await?;
        assert_eq!(r.status, status, "{path}");
        assert_eq!(get(a, "/").await?.body, "fine", "after {path}");
    }
    let timeouts = p
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("execution timeout: Lua code ran for more than 300 ms"))
        .count();
    assert!(timeouts >= 5, "{:#?}", p.stderr_lines());
    Ok(())
}

#[tokio::test]
async fn memory_exhaustion_fails_the_invocation_only() -> Result<()> {
    let script = r#"
core.register_action("hog", { "http-req" }, function(txn)
    local t = {}
    for i = 1, 100000000 do t[i] = string.rep("x", 64) .. i end
end, 0)
core.register_fetches("ok", function(txn) return "fine" end)
"#;
    let (_d, cfg) = lua_setup(
        script,
        "    tune.lua.maxmem 16\n    tune.lua.session-timeout 30000\n",
        "    http-request lua.hog if { path /hog }\n    http-request return status 200 content-type text/plain lf-string \"%[lua.ok]\"\n",
    );
    let p = ProxyProcess::spawn(&["-f", &cfg], 1)?;
    let a = p.addrs[0];
    assert_eq!(get(a, "/hog").await?.status, 200);
    wait_stderr(&p, "the memory error", Duration::from_secs(10), |l| {
        l.contains("action 'lua.hog' failed") && l.contains("not enough memory")
    });
    assert_eq!(get(a, "/").await?.body, "fine");
    Ok(())
}

#[tokio::test]
async fn files_are_readable_at_load_under_the_script_folder_only() -> Result<()> {
    let dir = TempDir::new();
    dir.write("data.txt", "line one\nline two\n");
    std::fs::create_dir_all(dir.0.join("lib"))?;
    dir.write(
        "lib/helper.lua",
        "return { greet = function() return 'hi from helper' end }\n",
    );
    let script = format!(
        r#"
package.path = "{d}/lib/?.lua;" .. package.path
local helper = require("helper")
local f = assert(io.open("{d}/data.txt"))
local first = f:read("*l")
f:close()
local outside, err_outside = io.open("/etc/hostname")
local p_ok, p_err = io.popen("ls")
core.register_fetches("loaded", function(txn)
    return first .. "|" .. helper.greet() .. "|" .. tostring(outside) .. "|" .. tostring(p_ok)
end)
core.register_fetches("late", function(txn)
    local f, err = io.open("{d}/data.txt")
    return tostring(f) .. "|" .. tostring(err)
end)
"#,
        d = dir.0.display()
    );
    let lua = dir.write("t.lua", &script);
    let cfg = dir.write(
        "t.cfg",
        &format!(
            "global\n    lua-load {}\ndefaults\n    mode http\nfrontend fe\n    bind 127.0.0.1:0\n    http-request return status 200 content-type text/plain lf-string \"%[lua.loaded]\\n%[lua.late]\"\n",
            lua.display()
        ),
    );
    let p = ProxyProcess::spawn(&["-f", cfg.to_str().unwrap_or_default()], 1)?;
    let r = get(p.addrs[0], "/").await?;
    let mut lines = r.body.lines();
    assert_eq!(lines.next(), Some("line one|hi from helper|nil|nil"));
    let late = lines.next().unwrap_or_default();
    assert!(
        late.starts_with("nil|") && late.contains("only be read while the extension loads"),
        "{late}"
    );
    Ok(())
}

#[tokio::test]
async fn the_api_classes_answer_as_haproxy_documents() -> Result<()> {
    let app = Upstream::start("app", Behavior::Echo).await;
    let script = r#"
local out = {}
local function put(k, v) out[#out + 1] = k .. "=" .. tostring(v) end

core.register_action("api", { "http-req" }, function(txn)
    out = {}
    -- Fetches and converters by name, `.` spelled `_`; sf gives "" for none.
    put("f.req_hdr", txn.f:req_hdr("x-a"))
    put("sf.missing", "[" .. txn.sf:req_hdr("x-missing") .. "]")
    put("f.method", txn.f:method())
    put("c.upper", txn.c:upper("abc"))
    put("sc.base64", txn.sc:base64("hi"))
    -- Headers, 0-based as HAProxy gives them.
    local h = txn.http:req_get_headers()
    put("hdr0", h["x-a"][0])
    txn.http:req_set_header("x-set", "1")
    txn.http:req_add_header("x-add", "2")
    txn.http:req_del_header("x-gone")
    -- Variables of every scope, and private data.
    txn:set_var("txn.n", 41)
    put("var", txn:get_var("txn.n") + 1)
    txn:set_var("req.flag", true)
    put("bool", txn:get_var("req.flag"))
    txn:set_priv({ k = "v" })
    put("priv", txn:get_priv().k)
    -- core helpers.
    put("tokenize", table.concat(core.tokenize("a,b,,c", ","), "|"))
    local c = core.concat(); c:add("x"); c:add(1); put("concat", c:dump())
    put("match", core.match_addr(core.parse_addr("10.1.2.3"), core.parse_addr("10.0.0.0/8")))
    put("nomatch", core.match_addr("192.168.1.1", "10.0.0.0/8"))
    put("v6", core.match_addr("2001:db8::1", "2001:db8::/32"))
    put("date", core.http_date("Sun, 06 Nov 1994 08:49:37 GMT"))
    put("rfc850", core.http_date("Sunday, 06-Nov-94 08:49:37 GMT"))
    put("asctime", core.http_date("Sun Nov  6 08:49:37 1994"))
    put("baddate", core.http_date("yesterday"))
    local be = core.backends["app"]
    put("backend", be:get_name() .. ":" .. be.servers["s1"]:get_addr())
    put("scur", type(be.servers["s1"]:get_stats()["scur"]))
    put("now", type(core.now().sec))
    put("act", act.DENY)
    local re = Regex.new("^/(api|www)/(\\d+)", true)
    local ok, caps = re:match("/api/42/x")
    put("regex", tostring(ok) .. ":" .. caps[1] .. ":" .. caps[2] .. ":" .. caps[3])
    put("regex_no", re:exec("/other"))
    put("regex_ci", Regex.new("^abc$", false):exec("ABC"))
    local q = core.queue()
    q:push("a"); q:push("b")
    put("queue", q:size() .. q:pop() .. q:pop() .. tostring(q:pop()))
    txn.http:req_set_header("x-api", table.concat(out, ";"))
end, 0)

core.register_action("early", { "http-req" }, function(txn)
    txn.http:req_set_header("x-early", "before")
    core.done()
    txn.http:req_set_header("x-early", "after")
end, 0)

core.register_fetches("early_fetch", function(txn)
    core.done()
    return "after"
end)

core.register_action("reply", { "http-req" }, function(txn)
    local r = txn:reply({ status = 201, body = "made\n" })
    r:add_header("x-made", "yes")
    txn:done(r)
    error("not reached")
end, 0)
"#;
    let rules = format!(
        "    http-request lua.reply if {{ path /reply }}\n    http-request lua.early if {{ path /early }}\n    http-request set-header x-early-fetch %[lua.early_fetch] if {{ path /early }}\n    http-request lua.api\n    default_backend app\n\nbackend app\n    server s1 {}\n",
        app.addr
    );
    let (_d, cfg) = lua_setup(script, "", &rules);
    let p = ProxyProcess::spawn(&["-f", &cfg], 1)?;
    let a = p.addrs[0];
    let r = request(a, "GET", "/", &[("x-a", "A1"), ("x-gone", "bye")], "").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-set").as_deref(), Some("1"));
    assert_eq!(r.header("x-echo-x-add").as_deref(), Some("2"));
    assert_eq!(r.header("x-echo-x-gone"), None);
    let api = r.header("x-echo-x-api").unwrap_or_default();
    for want in [
        "f.req_hdr=A1",
        "sf.missing=[]",
        "f.method=GET",
        "c.upper=ABC",
        "sc.base64=aGk=",
        "hdr0=A1",
        "var=42",
        "bool=1",
        "priv=v",
        "tokenize=a|b||c",
        "concat=x1",
        "match=true",
        "nomatch=false",
        "v6=true",
        "date=784111777",
        "rfc850=784111777",
        "asctime=784111777",
        "baddate=nil",
        &format!("backend=app:{}", app.addr),
        "scur=number",
        "now=number",
        "act=5",
        "queue=2abnil",
        "regex=true:/api/42:api:42",
        "regex_no=false",
        "regex_ci=true",
    ] {
        assert!(
            api.split(';').any(|kv| kv == want),
            "{want} missing in {api}"
        );
    }
    let r = get(a, "/reply").await?;
    assert_eq!((r.status, r.body.as_str()), (201, "made\n"));
    assert_eq!(r.header("x-made").as_deref(), Some("yes"));
    // core.done() returns at once, without an error: the action's rules go
    // on, the fetch has no sample.
    let r = get(a, "/early").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-early").as_deref(), Some("before"));
    assert_eq!(r.header("x-echo-x-early-fetch").as_deref(), Some(""));
    assert!(
        !p.stderr_lines().iter().any(|l| l.contains("lua.early")),
        "{:#?}",
        p.stderr_lines()
    );
    Ok(())
}

#[tokio::test]
async fn httpclient_talks_to_a_real_server() -> Result<()> {
    let side = Upstream::start("side", Behavior::Echo).await;
    let script = format!(
        r#"
core.register_action("ask", {{ "http-req" }}, function(txn)
    local hc = core.httpclient()
    local res = hc:post{{ url = "http://{addr}/check?x=1", headers = {{ ["x-who"] = "lua" }}, body = "ping" }}
    txn.http:req_set_header("x-side-status", res.status)
    txn.http:req_set_header("x-side-body", res.body)
    txn.http:req_set_header("x-side-path", res.headers["x-echo-path"][0])
    txn.http:req_set_header("x-side-who", res.headers["x-echo-x-who"][0])
    txn.http:req_set_header("x-side-len", res.headers["x-echo-body-len"][0])
end, 0)
"#,
        addr = side.addr
    );
    let app = Upstream::start("app", Behavior::Echo).await;
    let rules = format!(
        "    http-request lua.ask\n    default_backend app\n\nbackend app\n    server s1 {}\n",
        app.addr
    );
    let (_d, cfg) = lua_setup(&script, "", &rules);
    let p = ProxyProcess::spawn(&["-f", &cfg], 1)?;
    let r = get(p.addrs[0], "/").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-x-side-status").as_deref(), Some("200"));
    assert_eq!(r.header("x-echo-x-side-body").as_deref(), Some("side"));
    assert_eq!(r.header("x-echo-x-side-path").as_deref(), Some("/check"));
    assert_eq!(r.header("x-echo-x-side-who").as_deref(), Some("lua"));
    assert_eq!(r.header("x-echo-x-side-len").as_deref(), Some("4"));
    Ok(())
}

#[tokio::test]
async fn lua_allow_read_grants_more_folders() -> Result<()> {
    let data = TempDir::new();
    let file = data.write("keys.txt", "secret-key\n");
    let script = format!(
        r#"
local f = io.open("{f}")
local key = f and f:read("*l") or "refused"
if f then f:close() end
core.register_fetches("key", function(txn) return key end)
"#,
        f = file.display()
    );
    let rules =
        "    http-request return status 200 content-type text/plain lf-string \"%[lua.key]\"\n";
    // Outside the script's folder: refused.
    let (_d, cfg) = lua_setup(&script, "", rules);
    let p = ProxyProcess::spawn(&["-f", &cfg], 1)?;
    assert_eq!(get(p.addrs[0], "/").await?.body, "refused");
    // Granted by the configuration.
    let grant = format!("    lua-allow-read {}\n", data.0.display());
    let (_d2, cfg2) = lua_setup(&script, &grant, rules);
    let p2 = ProxyProcess::spawn(&["-f", &cfg2], 1)?;
    assert_eq!(get(p2.addrs[0], "/").await?.body, "secret-key");
    Ok(())
}
