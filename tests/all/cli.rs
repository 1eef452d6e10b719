//! The `proxy` command line: check mode, errors with file:line, quick mode.

use anyhow::Result;

use crate::common::*;

fn check(cfg: &str) -> (i32, String) {
    let dir = TempDir::new();
    let f = dir.write("bad.cfg", cfg);
    let (code, _, err) = run(&["-c", "-f", &f.to_string_lossy()]);
    (code, err.replace(&*f.to_string_lossy(), "bad.cfg"))
}

#[test]
fn version_and_help() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("moonbox proxy "), "{out}");
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("-f, --config <FILE>"), "{out}");
}

#[test]
fn check_mode_accepts_a_valid_file() {
    let (code, err) = check(
        "defaults\n  mode http\nfrontend fe\n  bind :8080\n  default_backend be\nbackend be\n  server s 127.0.0.1:80\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn every_bad_input_names_file_and_line() {
    let fe = "defaults\n  mode http\nfrontend fe\n  bind :8080\n";
    let cases = [
        (
            format!("{fe}  frobnicate\n"),
            "bad.cfg:5: unknown keyword 'frobnicate' in 'frontend' section, expected one of",
        ),
        (
            format!("{fe}  http-request frobnicate\n"),
            "bad.cfg:5: unknown action 'frobnicate' for 'http-request', expected",
        ),
        (
            format!("{fe}  option nonsense\n"),
            "bad.cfg:5: unknown option 'nonsense', expected",
        ),
        (
            format!("{fe}  timeout client 5x\n"),
            "bad.cfg:5: invalid time unit 'x' in '5x', expected us, ms, s, m, h or d",
        ),
        (
            format!("{fe}  http-request deny if nosuchacl\n"),
            "bad.cfg:5: ",
        ),
        (format!("{fe}  acl bad path_reg (unclosed\n"), "bad.cfg:5: "),
        (format!("{fe}  acl bad path -m nonsense x\n"), "bad.cfg:5: "),
        (
            format!("{fe}  http-request set-header X %[nosuchfetch]\n"),
            "bad.cfg:5: unknown fetch method 'nosuchfetch'",
        ),
        (
            format!("{fe}  http-request set-header X %[path,nosuchconv]\n"),
            "bad.cfg:5: unknown converter 'nosuchconv'",
        ),
        (
            format!("{fe}  use_backend nope\n"),
            "bad.cfg:5: unknown backend 'nope', expected the name of a backend or listen section",
        ),
        (
            format!("{fe}  default_backend nope\n"),
            "bad.cfg:3: unknown backend 'nope'",
        ),
        (
            "global\n  stats socket /run/haproxy.sock\n".to_string(),
            "bad.cfg:2: 'stats socket' is not supported",
        ),
        (
            "frontend\n".to_string(),
            "bad.cfg:1: 'frontend' needs a name",
        ),
        (
            format!("{fe}  bind 1.2.3.4\n"),
            "bad.cfg:5: invalid bind address '1.2.3.4', expected ADDR:PORT or :PORT",
        ),
        (
            "backend b\n  server s1\n".to_string(),
            "bad.cfg:2: server 's1' has no address, expected 'server NAME ADDR:PORT [options]'",
        ),
        (
            "  mode http\n".to_string(),
            "bad.cfg:1: 'mode' is outside any section",
        ),
        (
            format!("{fe}  http-request set-header X \"unterminated\n"),
            "bad.cfg:5: unterminated double quote",
        ),
    ];
    for (cfg, want) in cases {
        let (code, err) = check(&cfg);
        assert_eq!(code, 1, "accepted:\n{cfg}");
        assert!(
            err.starts_with(want),
            "for:\n{cfg}\ngot: {err}\nwant: {want}"
        );
    }
}

#[test]
fn env_expansion_in_double_quotes() {
    let dir = TempDir::new();
    let f = dir.write(
        "env.cfg",
        "global\n  nbthread \"${MOONBOX_TEST_THREADS}\"\ndefaults\n  mode http\nfrontend fe\n  bind \"127.0.0.1:${MOONBOX_TEST_PORT}\"\n",
    );
    let out = std::process::Command::new(bin())
        .args(["-c", "-f", &f.to_string_lossy()])
        .env("MOONBOX_TEST_THREADS", "2")
        .env("MOONBOX_TEST_PORT", "9999")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(bin())
        .args(["-c", "-f", &f.to_string_lossy()])
        .env("MOONBOX_TEST_THREADS", "lots")
        .env("MOONBOX_TEST_PORT", "9999")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "env.cfg:2: 'nbthread' expects a number of threads from 1 to 1024, got 'lots'"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn port_in_use_is_reported() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let dir = TempDir::new();
    let f = dir.write(
        "t.cfg",
        &format!("defaults\n  mode http\nfrontend fe\n  bind {addr}\n"),
    );
    let (code, _, err) = run(&["-f", &f.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "t.cfg:4: cannot bind {addr}: Address already in use"
        )),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn quick_mode_forwards() -> Result<()> {
    let up = Upstream::start("quick", Behavior::Echo).await;
    let backend = format!("http://{}", up.addr);
    let p = ProxyProcess::spawn(&["--listen", "127.0.0.1:0", "--backend", &backend], 1)?;
    let r = get(p.addrs[0], "/q").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "quick\n"));
    let (code, out, _) = run(&["--listen", ":8080", "--backend", &backend, "--print-config"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("bind :8080") && out.contains(&format!("server app1 {}", up.addr)),
        "{out}"
    );
    Ok(())
}
