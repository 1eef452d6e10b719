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
fn anchor_config_is_accepted_as_it_is() {
    let f = repo("bench/haproxy-anchor/haproxy.cfg");
    // As run.sh starts it.
    let dir = repo("bench/haproxy-anchor");
    let (code, out, err) = run_env(
        &["-c", "-f", &f],
        &[("ANCHOR_DIR", &dir), ("HAP_THREADS", "1")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Configuration file is valid"), "{out}");
}
