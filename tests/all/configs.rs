//! Real-world configurations: the seed's examples and the benchmark anchor.

use std::path::PathBuf;

use crate::common::*;

fn repo(p: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .to_string_lossy()
        .to_string()
}

#[test]
fn seed_example_configs_are_accepted() {
    for name in [
        "hello",
        "greater_than",
        "least_sessions",
        "urlencode",
        "ipchecker",
        "magic8ball",
        "log_work",
    ] {
        let f = repo(&format!("tests/data/seed/{name}.cfg"));
        let (code, out, err) = run(&["-c", "-f", &f]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains("Configuration file is valid"), "{name}: {out}");
    }
}

#[test]
fn anchor_config_fails_only_on_its_lua_names() {
    let f = repo("bench/haproxy-anchor/haproxy.cfg");
    // As run.sh starts it.
    let dir = repo("bench/haproxy-anchor");
    let (code, _out, err) = run_env(
        &["-c", "-f", &f],
        &[("ANCHOR_DIR", &dir), ("HAP_THREADS", "1")],
    );
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    let expected = [
        ("40", "lua.tag_tenant"),
        ("46", "lua.myfetch"),
        ("52", "lua.urlenc"),
        ("58", "lua.magic8"),
        ("68", "lua.ipcheck"),
        ("75", "lua.spin"),
    ];
    assert_eq!(lines.len(), expected.len(), "{err}");
    for (line, (no, name)) in lines.iter().zip(expected) {
        assert_eq!(*line, format!("{f}:{no}: unknown extension '{name}'"));
    }
}
