//! Test helpers: a small world (frontend `fe`, backend `be` with servers
//! `s1` and `s2`), transactions with a request, and a parse context with a
//! native extension `t` (fetches `t.answer`, `t.broken`, converter `t.rev`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::acl::AclTable;
use crate::config::model::{Loc, Mode, Options, ProxyConfig, Section, ServerConfig, Timeouts};
use crate::ext::native::NativeExtension;
use crate::ext::{ExtError, Registry};
use crate::proxy::state::{ProxyRt, World};
use crate::proxy::txn::{Phase, Session, Txn};
use crate::sample::map::MapStore;
use crate::sample::{ParseCtx, Sample};

fn loc() -> Loc {
    Loc {
        file: Arc::from("test.cfg"),
        line: 1,
    }
}

fn proxy(name: &str, section: Section, servers: &[&str]) -> ProxyConfig {
    ProxyConfig {
        name: name.into(),
        section,
        mode: Mode::Http,
        loc: loc(),
        binds: vec![],
        timeouts: Timeouts::default(),
        options: Options::default(),
        maxconn: None,
        acls: AclTable::default(),
        tcp_request_connection: vec![],
        tcp_request_content: vec![],
        tcp_response_content: vec![],
        inspect_delay: None,
        http_request: vec![],
        http_response: vec![],
        http_after_response: vec![],
        use_backends: vec![],
        default_backend: None,
        balance: Default::default(),
        servers: servers
            .iter()
            .enumerate()
            .map(|(i, s)| ServerConfig {
                name: s.to_string(),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                check: false,
                inter: Duration::from_secs(2),
                rise: 2,
                fall: 3,
                weight: 1,
                maxconn: None,
                backup: false,
                disabled: false,
                loc: loc(),
            })
            .collect(),
    }
}

/// A registry with the native test extension `t`.
pub fn registry() -> Registry {
    let ext = NativeExtension::new("t")
        .fetch("answer", |_, args: &[Sample]| {
            let add = args.first().and_then(|a| a.to_int()).unwrap_or(0);
            Ok(Some(Sample::Int(42 + add)))
        })
        .fetch("broken", |_, _| Err(ExtError::Failed("boom".into())))
        .converter("rev", |_, input: Sample, _| {
            Ok(Some(Sample::Str(input.to_str().chars().rev().collect())))
        });
    let mut r = Registry::new();
    r.add(Arc::new(ext));
    r
}

/// What a `ParseCtx` borrows.
pub struct CtxParts {
    pub ext: Registry,
    pub maps: Arc<MapStore>,
    pub dir: PathBuf,
}

impl CtxParts {
    pub fn ctx(&self) -> ParseCtx<'_> {
        ParseCtx {
            ext: &self.ext,
            maps: &self.maps,
            base_dir: &self.dir,
        }
    }
}

/// A parse context in a fresh temporary folder.
pub fn ctx_parts() -> CtxParts {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "moonbox-sample-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    CtxParts {
        ext: registry(),
        maps: Arc::new(MapStore::new()),
        dir,
    }
}

/// A world with `fe` and `be` (servers `s1`, `s2`).
pub fn world() -> Arc<World> {
    let fe = Arc::new(ProxyRt::new(
        Arc::new(proxy("fe", Section::Frontend, &[])),
        1,
    ));
    let be = Arc::new(ProxyRt::new(
        Arc::new(proxy("be", Section::Backend, &["s1", "s2"])),
        2,
    ));
    Arc::new(World::new(
        vec![fe, be],
        Arc::new(MapStore::new()),
        Arc::new(registry()),
    ))
}

/// A transaction with a request `METHOD uri` and headers, from 10.0.0.1:40000
/// to 127.0.0.1:8080, in the request phase.
pub fn txn_req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Txn {
    let w = world();
    let sess = Arc::new(Session::new(
        "10.0.0.1:40000".parse().expect("addr"),
        "127.0.0.1:8080".parse().expect("addr"),
    ));
    let fe = Arc::clone(w.proxy("fe").expect("fe"));
    let mut t = Txn::new(w, sess, fe, 7);
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    t.req = Some(b.body(()).expect("request").into_parts().0);
    t.phase = Phase::Request;
    t
}

/// `txn_req` with GET.
pub fn txn_get(uri: &str, headers: &[(&str, &str)]) -> Txn {
    txn_req("GET", uri, headers)
}

/// Sets a response head (the phase is left as is).
pub fn set_response(t: &mut Txn, status: u16, headers: &[(&str, &str)]) {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    t.res = Some(b.body(()).expect("response").into_parts().0);
}
